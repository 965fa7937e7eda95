"""The runtime's own server in-process (what the process runs, on a free port): action code, init
failures, the __OW_* environment, a registry model."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import requests

from faas_llm.registry.local import FileRegistry
from faas_llm.settings import Settings
from tests.action_runtime.conftest import in_process

HANDLER = """
import os

def main(args):
    out = llm.generate(prompt=args["question"], max_tokens=4, temperature=0)
    return {"answer": out["text"], "tokens": out["token_ids"],
            "activation": os.environ.get("__OW_ACTIVATION_ID"), "action": os.environ.get("__OW_ACTION_NAME"),
            "greeting": os.environ.get("GREETING")}
"""


def test_action_code_runs_with_the_activation_environment(tmp_path: Path, tiny_model_dir: Path) -> None:
    with in_process(Settings(data_dir=tmp_path)) as runtime:
        init = runtime.init(name="qa", main="main", code=HANDLER, checkpoint=str(tiny_model_dir),
                            env={"GREETING": "hi"})
        assert init.status_code == 200, init.text
        reply = runtime.run({"question": "what is serverless?"}, activation_id="a" * 32, action_name="/guest/qa",
                            namespace="guest")
        assert reply.status_code == 200
        body = reply.json()
        assert body["activation"] == "a" * 32 and body["action"] == "/guest/qa" and body["greeting"] == "hi"
        direct = runtime.run({"question": "what is serverless?"}).json()
        assert len(body["tokens"]) == 4 and direct["tokens"] == body["tokens"]
        crash = runtime.run({})  # KeyError inside the action's code
        assert crash.status_code == 502 and "KeyError" in crash.json()["error"]
        assert crash.json()["activation_status"] == 2


def test_failed_init_can_be_retried_and_run_needs_init(tmp_path: Path, tiny_model_dir: Path) -> None:
    with in_process(Settings(data_dir=tmp_path)) as runtime:
        early = runtime.run({"prompt": "x"})
        assert early.status_code == 502 and "not been initialized" in early.json()["error"]
        assert requests.post(runtime.url + "/init", data=b"[]", timeout=10).status_code == 400
        missing = runtime.init(name="x")
        assert missing.status_code == 400 and "name the model" in missing.json()["error"]
        assert runtime.init(checkpoint=str(tmp_path / "nothing")).status_code == 502
        bad_code = runtime.init(checkpoint=str(tiny_model_dir), code="def main(:")
        assert bad_code.status_code == 502 and "SyntaxError" in bad_code.json()["error"]
        binary = runtime.init(checkpoint=str(tiny_model_dir), binary=True, code="UEsD")
        assert binary.status_code == 502 and "binary" in binary.json()["error"]
        assert runtime.get("/ready").status_code == 503
        assert "binary" in runtime.get("/health").json()["init_error"]
        assert runtime.init(checkpoint=str(tiny_model_dir)).status_code == 200
        assert runtime.get("/ready").status_code == 200


def test_registry_model_loads_with_registry_tier(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = Settings(data_dir=tmp_path)  # no cache agent, no SSD copy: the registry is read in place
    FileRegistry(tmp_path / "registry").push(tiny_model_dir, "demo/tiny")
    with in_process(settings) as runtime:
        init = runtime.init(model="demo/tiny")
        assert init.status_code == 200 and init.json()["load_tier"] == "registry"
        assert init.json()["model"] == "demo/tiny"
        result = runtime.run({"prompt": "hello", "max_tokens": 3}).json()
        assert result["model"] == "demo/tiny" and result["timings"]["load_tier"] == "registry"


def test_stop_drains_the_run_in_flight_and_refuses_new_connections(tmp_path: Path, tiny_model_dir: Path) -> None:
    with in_process(Settings(data_dir=tmp_path)) as runtime:
        assert runtime.init(checkpoint=str(tiny_model_dir)).status_code == 200
        events = runtime.stream({"prompt": [5], "max_tokens": 200, "temperature": 0})
        assert next(events)["type"] == "token"
        drained: list[bool] = []
        stopper = threading.Thread(target=lambda: drained.append(runtime.server.stop(30.0)))
        stopper.start()
        rest = list(events)
        stopper.join(30)
        assert drained == [True]
        assert rest[-1]["type"] == "result" and rest[-1]["result"]["finish_reason"] == "length"
        with pytest.raises(requests.ConnectionError):
            runtime.get("/health")
