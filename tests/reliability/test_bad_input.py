"""Bad input against the real cluster: each is a clear 4xx error (or a clear error record) and
nothing else is affected: no 5xx, no queued work from a refused request, the gateway keeps its
process, and the canary action still answers. (The OpenAPI fuzz lives in tests/gateway.)

The tampered checkpoints go through the real path: pushed to the registry, then altered there,
then cold-started by the invoker, loaded by the runtime through the node's cache agent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import requests

from faas_llm.checkpoint import INDEX_FILE
from faas_llm.checkpoint.convert import convert
from faas_llm.registry import FileRegistry, open_registry
from faas_llm.settings import Settings
from tests.reliability.harness import Ledger, RelCluster

pytestmark = pytest.mark.slow
MiB = 1024 * 1024


def activation_total(rel: RelCluster) -> int:
    return int(rel.r.zcard(rel.store.keys.activations_index("guest"))) + sum(
        int(rel.r.xlen(q)) for q in rel.r.smembers(rel.store.keys.queues_index()))


def assert_clear(reply: requests.Response, status: int | tuple[int, ...], *words: str) -> None:
    statuses = (status,) if isinstance(status, int) else status
    assert reply.status_code in statuses, (reply.status_code, reply.text[:500])
    body = reply.json()
    message = body["error"] if isinstance(body.get("error"), str) else json.dumps(body["error"])
    for word in words:
        assert word.lower() in message.lower(), (word, message)


BAD_NAMES = ["a..b", "..", "a%2Fb", "..%2F..%2Fetc", "n%00ul", "tab%09name", "nl%0Aname", "%E5%90%8D%E5%89%8D",
             "emoji%F0%9F%98%80", "x" * 300, "%20lead"]
BAD_MODELS = ["../../etc/passwd", "/etc/passwd", "org/../x", "a/b/c", "..", "name\x00", "~root/x", "file:///etc"]


def test_bad_requests_are_clear_errors_and_affect_nothing(rel: RelCluster) -> None:
    gateway_pid = rel.service("gateway").pid
    before = activation_total(rel)
    h = rel.http
    # oversize bodies: invoke and action create, declared and chunked
    big = {"prompt": "x" * (2 * MiB)}
    assert_clear(h.post(rel.url("actions/canary"), json=big, timeout=60), 413)
    assert_clear(h.put(rel.url("actions/huge"), json={"exec": {"kind": "llm", "model": "tiny", "code": "#" * 2 * MiB}},
                       timeout=60), 413)
    # (its own connection: the gateway answers before reading the whole body, then closes the connection)
    chunked = requests.post(rel.url("actions/canary"), data=iter([b'{"prompt": "', b"y" * 2 * MiB, b'"}']),
                            headers={"Content-Type": "application/json"}, auth=h.auth, timeout=60)
    assert chunked.status_code == 413
    # malformed JSON, wrong types
    for raw in (b'{"prompt": ', b"[1, 2", b"\xff\xfe", b'{"a": NaN}', b"null"):
        reply = h.post(rel.url("actions/canary"), data=raw, headers={"Content-Type": "application/json"}, timeout=30)
        assert_clear(reply, 400)
    assert_clear(h.put(rel.url("actions/typed"), json={"exec": {"kind": "llm", "model": 5}}, timeout=30), 400)
    assert_clear(h.put(rel.url("actions/typed"), json={"exec": {"kind": "llm", "model": "tiny"},
                                                       "limits": {"timeout": "soon"}}, timeout=30), 400)
    for body in ({"model": "canary", "prompt": "x", "max_tokens": "many"}, {"model": "canary", "prompt": {"a": 1}},
                 {"model": "canary", "prompt": "x", "temperature": 9}, {"model": 1, "prompt": "x"},
                 {"model": "canary", "prompt": "x", "max_tokens": 10**12}, {"model": "canary", "prompt": "x",
                                                                           "stop": ["a"] * 50}):
        assert_clear(h.post(f"{rel.apihost}/v1/completions", json=body, timeout=30), 400)
    # huge limit / skip
    for query in ({"limit": 10**12}, {"limit": -1}, {"skip": 10**30}, {"limit": "lots"}, {"since": "yesterday"}):
        reply = h.get(rel.url("activations"), params=query, timeout=30)
        assert reply.status_code == 400 or (reply.status_code == 200 and isinstance(reply.json(), list)), reply.text
        if reply.status_code == 400:
            assert_clear(reply, 400)
    # unicode and control characters, "..", "/" in names
    for name in BAD_NAMES:
        reply = h.put(f"{rel.apihost}/api/v1/namespaces/_/actions/{name}", json={"exec": {"kind": "llm",
                                                                                        "model": "tiny"}}, timeout=30)
        assert reply.status_code in (400, 404), (name, reply.status_code, reply.text[:300])
        assert "error" in reply.json()
        invoked = h.post(f"{rel.apihost}/api/v1/namespaces/_/actions/{name}", json={}, timeout=30)
        assert invoked.status_code in (400, 404), (name, invoked.status_code)
    # model references that escape the registry
    for model in BAD_MODELS:
        assert_clear(h.put(rel.url("actions/escape"), json={"exec": {"kind": "llm", "model": model}}, timeout=30), 400)
    assert h.get(rel.url("actions/escape"), timeout=30).status_code == 404

    assert activation_total(rel) == before, "a refused request left an activation or a queued invocation"
    assert rel.service("gateway").pid == gateway_pid
    rel.serves()


def test_prompts_past_the_model_context_and_huge_max_tokens_end_in_clear_records(rel: RelCluster) -> None:
    ledger = Ledger()
    long_prompt = rel.invoke("canary", {"prompt": "word " * 3000, "max_tokens": 4}, ledger)
    ids_prompt = rel.invoke("canary", {"prompt": list(range(600)), "max_tokens": 4}, ledger)
    bad_ids = rel.invoke("canary", {"prompt": [10**9], "max_tokens": 4}, ledger)
    huge = rel.invoke("canary", {"prompt": "hi", "max_tokens": 10**9}, ledger)
    wrong = rel.invoke("canary", {"prompt": "hi", "max_tokens": "many"}, ledger)
    ok = rel.invoke("canary", {"prompt": "hi", "max_tokens": 2}, ledger)
    records = ledger.settle(rel.store)
    for aid, word in ((long_prompt, "context"), (ids_prompt, "context"), (bad_ids, "token"), (huge, "max_tokens"),
                      (wrong, "max_tokens")):
        record = records[str(aid)]
        assert record.response.status == "application error", record.response
        assert word in str((record.response.result or {})["error"]), record.response.result
    assert records[str(ok)].response.success
    # the OpenAI face answers with the runtime's message (502: an error of the action, as a blocking invoke)
    reply = rel.http.post(f"{rel.apihost}/v1/completions", timeout=120,
                          json={"model": "canary", "prompt": "word " * 3000, "max_tokens": 4})
    assert_clear(reply, (400, 502), "context")
    assert reply.json()["error"]["type"] == "invalid_request_error"


def tamper(kind: str, version_dir: Path, manifest: Path) -> None:
    index = json.loads((version_dir / INDEX_FILE).read_text())
    part = version_dir / index["partitions"][0]["file"]
    if kind == "checksum":  # one flipped byte in a tensor: same size, so only a checksum can tell
        data = bytearray(part.read_bytes())
        data[len(data) // 2] ^= 0xFF
        part.write_bytes(bytes(data))
        return
    if kind == "truncated":
        with part.open("r+b") as f:
            f.truncate(part.stat().st_size // 2)
    if kind == "index":  # a tensor pointing past the end of its partition
        name = next(iter(index["tensors"]))
        index["tensors"][name]["offset"] = index["partitions"][0]["nbytes"] + 4096 * 16
        (version_dir / INDEX_FILE).write_text(json.dumps(index))
    # the manifest agrees with the altered files, so the checkpoint's own checks must catch it
    meta = json.loads(manifest.read_text())
    for entry in meta["files"]:
        entry["size"] = (version_dir / entry["path"]).stat().st_size
    manifest.chmod(0o644)
    manifest.write_text(json.dumps(meta))


@pytest.mark.parametrize("kind", ["checksum", "truncated", "index"])
def test_tampered_checkpoint_is_a_clear_error_and_nothing_else(rel: RelCluster, tiny_model_dir: Path,
                                                               tmp_path_factory: pytest.TempPathFactory,
                                                               kind: str) -> None:
    ckpt = tmp_path_factory.getbasetemp() / "rel-tiny-ckpt"
    if not ckpt.exists():
        convert(tiny_model_dir, ckpt)
    registry = open_registry(Settings(data_dir=rel.data_dir, redis_url=rel.redis.url))
    name = f"tampered-{kind}"
    version = registry.push(ckpt, name)
    assert isinstance(registry, FileRegistry)
    version_dir = registry.local_dir(version)  # <root>/models/_/<name>/data/<uuid>
    manifest = version_dir.parents[1] / "versions" / f"{version.version:06d}.json"
    tamper(kind, version_dir, manifest)
    rel.put_action(name, model=name)
    ledger = Ledger()
    rel.invoke(name, {"prompt": "hi", "max_tokens": 2}, ledger)
    good = rel.invoke("canary", {"prompt": "still fine", "max_tokens": 2}, ledger)
    records = ledger.settle(rel.store)
    bad = records[ledger.accepted[0]]
    assert not bad.response.success, bad.response
    error: Any = (bad.response.result or {}).get("error", "")
    assert any(w in str(error).lower() for w in ("checksum", "corrupt", "size", "past the end", "truncat",
                                                 "bytes")), error
    assert records[str(good)].response.success
    shutil.rmtree(version_dir, ignore_errors=True)
