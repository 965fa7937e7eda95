"""The official OpenWhisk JavaScript client (npm ``openwhisk``), unmodified, against the gateway
under gunicorn. Skipped where node/npm are absent or the package cannot be installed (offline)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.gateway.conftest import Tenant
from tests.gateway.consumer import QueueConsumer, expected_words

JS_DIR = Path(__file__).resolve().parent / "js"


@pytest.fixture(scope="session")
def js_client_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/gateway/js copied to a temp dir with ``npm install`` done there (no node_modules in the repo)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are needed for the OpenWhisk JavaScript client")
    work = tmp_path_factory.mktemp("owjs")
    for name in ("package.json", "client.js"):
        shutil.copy(JS_DIR / name, work / name)
    try:
        done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=work,
                              capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.skip("npm install of openwhisk timed out (offline?)")
    if done.returncode != 0 or not (work / "node_modules" / "openwhisk").is_dir():
        pytest.skip(f"npm install of openwhisk failed (offline?): {done.stderr[-500:]}")
    return work


def test_official_openwhisk_js_client(
    js_client_dir: Path, gunicorn_gateway: str, guest: Tenant, consumer: QueueConsumer
) -> None:
    config = json.dumps({"apihost": gunicorn_gateway, "api_key": guest.api_key})
    run = subprocess.run(["node", "client.js", config], cwd=js_client_dir, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    failures = {k: v for k, v in out.items() if not v["ok"] and k not in ("createAgain", "getDeleted", "badKey")}
    assert not failures, failures
    assert out["create"]["value"]["name"] == "js-hello" and out["create"]["value"]["exec"]["kind"] == "llm"
    assert out["createAgain"]["statusCode"] == 409 and "resource already exists" in out["createAgain"]["message"]
    assert out["update"]["value"]["version"] == "0.0.2"
    assert [a["name"] for a in out["list"]["value"]] == ["js-hello"]
    assert out["get"]["value"]["parameters"] == [{"key": "max_tokens", "value": 3}]
    record = out["invokeBlocking"]["value"]
    words = " ".join(expected_words("from js", 3))
    assert record["response"]["success"] is True and record["response"]["result"]["text"] == words
    assert out["invokeResult"]["value"]["text"] == words
    assert len(out["invokeAsync"]["value"]["activationId"]) == 32
    assert out["activation"]["value"]["activationId"] == record["activationId"]
    assert out["result"]["value"]["result"]["text"] == words
    assert out["logs"]["value"]["logs"] == record["logs"]
    assert record["activationId"] in [a["activationId"] for a in out["activations"]["value"]]
    assert out["namespaces"]["value"] == ["guest"]
    assert out["delete"]["value"]["name"] == "js-hello"
    assert out["getDeleted"]["statusCode"] == 404
    assert out["badKey"]["statusCode"] == 401
