"""One real runtime process (its own HTTP/1.1 server) with the tiny model, driven over HTTP:
the OpenWhisk action protocol, the Knative entry points, generation, streaming, limits, sentinels."""

from __future__ import annotations

import http.client
import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import torch

from action_runtime.activation_env import SENTINEL
from faas_llm.runtime_protocol import ErrorBody, HealthReply, InitReply, ResultEvent, RunResult, read_event
from faas_llm.settings import Settings
from tests.action_runtime.conftest import RuntimeProcess, start_runtime

PROMPT = "The serverless platform"
RESULT_LIMIT = 3072


@dataclass
class Started:
    runtime: RuntimeProcess
    health_before: requests.Response
    ready_before: requests.Response
    init: requests.Response
    ready_after: requests.Response
    init_again: requests.Response


@pytest.fixture(scope="module")
def started(runtime_settings: Settings, tiny_model_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Any:
    settings = runtime_settings.model_copy(update={"max_result_bytes": RESULT_LIMIT})
    runtime = start_runtime(settings, tmp_path_factory, "runtime-http")
    try:
        health_before = runtime.get("/health")
        ready_before = runtime.get("/ready")
        init = runtime.init(name="tiny", checkpoint=str(tiny_model_dir))
        ready_after = runtime.get("/ready")
        init_again = runtime.init(name="tiny", checkpoint=str(tiny_model_dir))
        yield Started(runtime, health_before, ready_before, init, ready_after, init_again)
    finally:
        assert runtime.stop() == 0


@pytest.fixture(scope="module")
def runtime(started: Started) -> RuntimeProcess:
    return started.runtime


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)


def hf_generate(hf_model: Any, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    model, _ = hf_model
    with torch.inference_mode():
        mask = torch.ones(1, len(prompt_ids), dtype=torch.long)
        out = model.generate(torch.tensor([prompt_ids]), attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False)
    return [int(t) for t in out[0, len(prompt_ids):]]


def test_ready_only_after_one_init(started: Started, tiny_model_dir: Path) -> None:
    assert started.health_before.status_code == 200
    health = started.health_before.json()
    assert health["state"] == "prewarmed" and health["prewarm_s"] > 0  # torch/transformers imported before /init
    assert started.ready_before.status_code == 503
    assert started.init.status_code == 200, started.init.text
    init = InitReply.model_validate(started.init.json())
    assert init.load_tier == "local" and init.model == tiny_model_dir.name and init.source == "hf"
    assert started.ready_after.status_code == 200
    assert started.init_again.status_code == 403
    assert ErrorBody.model_validate(started.init_again.json()).error == "Cannot initialize the action more than once."
    assert HealthReply.model_validate(health).model is None
    after = HealthReply.model_validate(started.runtime.get("/health").json())
    assert after.state == "ready" and after.model == init.model and after.load_tier == init.load_tier


def test_greedy_run_equals_transformers_generate(runtime: RuntimeProcess, hf_model: Any) -> None:
    reply = runtime.run({"prompt": PROMPT, "max_tokens": 24, "temperature": 0})
    assert reply.status_code == 200
    result = reply.json()
    prompt_ids = hf_model[1](PROMPT)["input_ids"]
    assert result["token_ids"] == hf_generate(hf_model, prompt_ids, 24)
    assert result["text"] == hf_model[1].decode(result["token_ids"], skip_special_tokens=True)
    assert result["finish_reason"] == "length" and result["model"] == Path(hf_model[0].name_or_path).name
    assert result["usage"] == {"prompt_tokens": len(prompt_ids), "completion_tokens": 24,
                               "total_tokens": len(prompt_ids) + 24, "resumed_tokens": 0}
    timings = result["timings"]
    assert set(timings) >= {"load_tier", "load_s", "init_s", "ttft_s", "tokens_per_s", "prefill_s", "total_s"}
    assert timings["tokens_per_s"] > 0 and 0 < timings["ttft_s"] <= timings["total_s"]
    again = runtime.run({"prompt": PROMPT, "max_tokens": 24, "temperature": 0}).json()
    assert again["token_ids"] == result["token_ids"]  # greedy is deterministic
    assert RunResult.model_validate(again).timings.load_tier == "warm"  # the contract's shape
    assert again["timings"]["load_tier"] == "warm" and again["timings"]["cold_start"] is False


def test_chat_run(runtime: RuntimeProcess, hf_model: Any) -> None:
    messages = [{"role": "user", "content": "hello there"}]
    result = runtime.run({"messages": messages, "max_tokens": 10, "temperature": 0}).json()
    ids = hf_model[1].apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert result["token_ids"] == hf_generate(hf_model, list(ids), 10)


def test_seeded_sampling_is_reproducible(runtime: RuntimeProcess) -> None:
    value = {"prompt": PROMPT, "max_tokens": 20, "temperature": 1.0, "top_p": 0.9, "seed": 42}
    first = runtime.run(value).json()
    second = runtime.run(value).json()
    other = runtime.run({**value, "seed": 43}).json()
    assert first["token_ids"] == second["token_ids"] and first["text"] == second["text"]
    assert first["token_ids"] != other["token_ids"]


def test_streaming_delivers_each_token_then_the_result(runtime: RuntimeProcess) -> None:
    plain = runtime.run({"prompt": PROMPT, "max_tokens": 30, "temperature": 0}).json()
    events = list(runtime.stream({"prompt": PROMPT, "max_tokens": 30, "temperature": 0}))
    tokens = [e for e in events if e["type"] == "token"]
    assert [e["token_id"] for e in tokens] == plain["token_ids"]
    assert [e["index"] for e in tokens] == list(range(30))
    assert events[-1]["type"] == "result"
    typed = [read_event(json.dumps(e).encode()) for e in events]  # each line is one of the contract's events
    assert isinstance(typed[-1], ResultEvent) and RunResult.model_validate(typed[-1].result).finish_reason == "length"
    result = events[-1]["result"]
    assert result["token_ids"] == plain["token_ids"]
    assert "".join(e["text"] for e in events[:-1]) == result["text"] == plain["text"]


def test_stop_strings_in_a_stream(runtime: RuntimeProcess) -> None:
    plain = runtime.run({"prompt": PROMPT, "max_tokens": 40, "temperature": 0}).json()
    stop = plain["text"][15:19]
    events = list(runtime.stream({"prompt": PROMPT, "max_tokens": 40, "temperature": 0, "stop": stop}))
    result = events[-1]["result"]
    assert result["finish_reason"] == "stop"
    assert result["text"] == plain["text"][: plain["text"].index(stop)]
    assert "".join(e["text"] for e in events[:-1]) == result["text"]


def test_deadline_exceeded(runtime: RuntimeProcess) -> None:
    past = str(int(time.time() * 1000) - 1)
    reply = runtime.run({"prompt": PROMPT, "max_tokens": 10}, deadline=past)
    assert reply.status_code == 502
    assert reply.json()["error"] == "The action exceeded its time limit."
    assert reply.json()["activation_status"] == 2
    # the deadline falls mid-run: the tiny model makes a token in ~0.35 ms, so 500 tokens (~4 kB of text, over
    # this module's 3 kB result limit) would take ~0.2 s; 60 ms in, the text is still well under the limit
    soon = str(int(time.time() * 1000) + 60)
    events = list(runtime.stream({"prompt": [5], "max_tokens": 500, "temperature": 0}, deadline=soon))
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["error"] == "The action exceeded its time limit."
    produced = [e for e in events if e["type"] == "token"]
    assert len(produced) < 500  # (none at all where the machine is slow enough for the deadline to pass first)
    assert events[-1]["error"]["details"]["completion_tokens"] == len(produced)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"prompt": PROMPT, "max_tokens": -1}, "max_tokens: Input should be greater than or equal to 0"),
        ({"prompt": PROMPT, "max_tokens": "5"}, "max_tokens: Input should be a valid integer"),
        ({"prompt": PROMPT, "temperature": [1]}, "temperature"),
        ({"prompt": "x " * 600}, "the prompt has 1200 tokens; the model's context is 512 tokens"),
        ({"prompt": [1, 2, 1 << 20]}, "outside the vocabulary"),
        ({"max_tokens": 3}, "give exactly one of prompt, messages or resume"),
        ({"messages": "hi"}, "messages"),
    ],
)
def test_bad_params_are_400_style_application_errors(runtime: RuntimeProcess, value: dict[str, Any],
                                                      message: str) -> None:
    reply = runtime.run(value)
    assert reply.status_code == 200  # an application error, as the action protocol says
    body = reply.json()
    assert message in body["error"]
    assert body["http_status"] == 400 and body["activation_status"] == 1
    assert runtime.get("/ready").status_code == 200  # nothing crashed


def test_malformed_envelope(runtime: RuntimeProcess) -> None:
    reply = requests.post(runtime.url + "/run", data=b"not json", timeout=10)
    assert reply.status_code == 200 and reply.json()["http_status"] == 400
    assert runtime.post("/run", {"value": {"prompt": "x"}, "deadline": "tomorrow"}).json()["http_status"] == 400


def test_result_over_the_size_limit_is_refused(runtime: RuntimeProcess) -> None:
    reply = runtime.run({"prompt": PROMPT, "max_tokens": 480, "temperature": 0})
    assert reply.status_code == 200
    body = reply.json()
    assert body["error"].startswith("The action produced a response that exceeded the allowed length")
    assert body["details"]["limit"] == RESULT_LIMIT and body["details"]["size"] > RESULT_LIMIT


def _sentinels(runtime: RuntimeProcess) -> tuple[int, int]:
    count = lambda text: sum(1 for line in text.splitlines() if line == SENTINEL)  # noqa: E731
    return count(runtime.stdout()), count(runtime.stderr())


def test_sentinel_on_stdout_and_stderr_after_each_activation(runtime: RuntimeProcess) -> None:
    before = _sentinels(runtime)
    runtime.run({"prompt": PROMPT, "max_tokens": 2})
    assert _sentinels(runtime) == (before[0] + 1, before[1] + 1)
    runtime.run({"prompt": PROMPT, "max_tokens": -2})  # an application error is an activation too
    assert _sentinels(runtime) == (before[0] + 2, before[1] + 2)
    list(runtime.stream({"prompt": PROMPT, "max_tokens": 2}))
    deadline = time.monotonic() + 10
    while _sentinels(runtime) != (before[0] + 3, before[1] + 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sentinels(runtime) == (before[0] + 3, before[1] + 3)


def test_knative_single_entrypoint(runtime: RuntimeProcess) -> None:
    plain = runtime.run({"prompt": PROMPT, "max_tokens": 5, "temperature": 0}).json()
    bare = runtime.post("/", {"prompt": PROMPT, "max_tokens": 5, "temperature": 0}).json()
    wrapped = runtime.post("/", {"value": {"prompt": PROMPT, "max_tokens": 5, "temperature": 0}}).json()
    assert bare["token_ids"] == wrapped["token_ids"] == plain["token_ids"]


def test_export_of_an_unknown_run_is_404(runtime: RuntimeProcess) -> None:
    reply = runtime.post("/export", {"activation_id": "nope"})
    assert reply.status_code == 404 and "no run 'nope'" in reply.json()["error"]
    assert runtime.post("/export", {"activation_id": "x", "at_tokens": -1}).status_code == 400


def test_http_keep_alive_chunked_bodies_and_errors(runtime: RuntimeProcess) -> None:
    """The runtime's own HTTP/1.1 server: several requests on one connection, a chunked request
    body, 413 for an oversize body, 404 and 405 as JSON."""
    port = int(runtime.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        tokens = []
        for _ in range(3):
            conn.request("POST", "/run", body=json.dumps({"value": {"prompt": PROMPT, "max_tokens": 2,
                                                                    "temperature": 0}}))
            reply = conn.getresponse()
            assert reply.status == 200 and not reply.will_close
            tokens.append(json.loads(reply.read())["token_ids"])
        assert tokens[0] == tokens[1] == tokens[2] and len(tokens[0]) == 2
        body = json.dumps({"value": {"prompt": PROMPT, "max_tokens": 2, "temperature": 0}}).encode()
        conn.request("POST", "/run", body=iter([body[:10], body[10:]]), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        reply = conn.getresponse()
        assert reply.status == 200 and json.loads(reply.read())["token_ids"] == tokens[0]
    finally:
        conn.close()
    limit = runtime.settings.max_payload_bytes
    too_large = requests.post(runtime.url + "/run", data=b"x" * (limit + 1), timeout=30)
    assert too_large.status_code == 413 and too_large.json()["http_status"] == 413
    missing = runtime.get("/nowhere")
    assert missing.status_code == 404 and "error" in missing.json()
    assert runtime.get("/run").status_code == 405
    assert runtime.get("/ready").status_code == 200


def test_sigterm_drains_the_in_flight_run_then_exits(runtime: RuntimeProcess) -> None:
    """Last in this module: it stops the runtime. A run in flight at SIGTERM completes; new
    connections are refused; the process exits 0 (Knative's drain, OpenWhisk's container removal)."""
    events = runtime.stream({"prompt": [5], "max_tokens": 250, "temperature": 0})
    first = next(events)
    assert first["type"] == "token"
    runtime.signal(signal.SIGTERM)
    refused = False
    deadline = time.monotonic() + 10
    while not refused and time.monotonic() < deadline:
        try:
            requests.get(runtime.url + "/health", timeout=1)
            time.sleep(0.05)
        except (requests.ConnectionError, requests.Timeout):
            refused = True
    rest = list(events)
    assert refused
    assert rest[-1]["type"] == "result", rest[-1]
    assert rest[-1]["result"]["finish_reason"] == "length"
    assert rest[-1]["result"]["usage"]["completion_tokens"] == 250
    assert len([e for e in [first, *rest] if e["type"] == "token"]) == rest[-1]["result"]["usage"]["completion_tokens"]
    assert runtime.proc is not None and runtime.proc.wait(30) == 0
    assert "Handling signal: term" in runtime.stderr()
