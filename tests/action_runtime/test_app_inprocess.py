"""The Flask app in-process (no gunicorn): action code, init failures, the __OW_* environment."""

from __future__ import annotations

from pathlib import Path

from action_runtime.app import create_app
from faas_llm.registry.local import FileRegistry
from faas_llm.settings import Settings

HANDLER = """
import os

def main(args):
    out = llm.generate(prompt=args["question"], max_tokens=4, temperature=0)
    return {"answer": out["text"], "tokens": out["token_ids"],
            "activation": os.environ.get("__OW_ACTIVATION_ID"), "action": os.environ.get("__OW_ACTION_NAME"),
            "greeting": os.environ.get("GREETING")}
"""


def test_action_code_runs_with_the_activation_environment(tmp_path: Path, tiny_model_dir: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path), do_prewarm=False)
    client = app.test_client()
    init = client.post("/init", json={"value": {"name": "qa", "main": "main", "code": HANDLER,
                                                "checkpoint": str(tiny_model_dir), "env": {"GREETING": "hi"}}})
    assert init.status_code == 200, init.json
    reply = client.post("/run", json={"value": {"question": "what is serverless?"}, "activation_id": "a" * 32,
                                      "action_name": "/guest/qa", "namespace": "guest"})
    assert reply.status_code == 200
    body = reply.json
    assert body["activation"] == "a" * 32 and body["action"] == "/guest/qa" and body["greeting"] == "hi"
    direct = client.post("/run", json={"value": {"question": "what is serverless?"}}).json
    assert len(body["tokens"]) == 4 and direct["tokens"] == body["tokens"]
    crash = client.post("/run", json={"value": {}})  # KeyError inside the action's code
    assert crash.status_code == 502 and "KeyError" in crash.json["error"]
    assert crash.json["activation_status"] == 2


def test_failed_init_can_be_retried_and_run_needs_init(tmp_path: Path, tiny_model_dir: Path) -> None:
    client = create_app(Settings(data_dir=tmp_path), do_prewarm=False).test_client()
    early = client.post("/run", json={"value": {"prompt": "x"}})
    assert early.status_code == 502 and "not been initialized" in early.json["error"]
    assert client.post("/init", data=b"[]").status_code == 400
    missing = client.post("/init", json={"value": {"name": "x"}})
    assert missing.status_code == 400 and "name the model" in missing.json["error"]
    assert client.post("/init", json={"value": {"checkpoint": str(tmp_path / "nothing")}}).status_code == 502
    bad_code = client.post("/init", json={"value": {"checkpoint": str(tiny_model_dir), "code": "def main(:"}})
    assert bad_code.status_code == 502 and "SyntaxError" in bad_code.json["error"]
    binary = client.post("/init", json={"value": {"checkpoint": str(tiny_model_dir), "binary": True, "code": "UEsD"}})
    assert binary.status_code == 502 and "binary" in binary.json["error"]
    assert client.get("/ready").status_code == 503
    assert client.post("/init", json={"value": {"checkpoint": str(tiny_model_dir)}}).status_code == 200
    assert client.get("/ready").status_code == 200


def test_registry_model_loads_with_registry_tier(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = Settings(data_dir=tmp_path)  # no cache agent, no SSD copy: the registry is read in place
    FileRegistry(tmp_path / "registry").push(tiny_model_dir, "demo/tiny")
    client = create_app(settings, do_prewarm=False).test_client()
    init = client.post("/init", json={"value": {"model": "demo/tiny"}})
    assert init.status_code == 200 and init.json["load_tier"] == "registry" and init.json["model"] == "demo/tiny"
    result = client.post("/run", json={"value": {"prompt": "hello", "max_tokens": 3}}).json
    assert result["model"] == "demo/tiny" and result["timings"]["load_tier"] == "registry"
