"""Token-based live migration between two real runtime processes.

A runs the request, B continues it: B is started the Knative way (the model named in its
settings, no /init). The client's output must be exactly that of a run that never moved.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from faas_llm.runtime_protocol import (
    EXPORT_PATH,
    PREFILL_PATH,
    ExportReply,
    ExportSnapshot,
    PrefillReply,
    export_body,
    migrated_state,
    prefill_body,
    resume_value,
)
from faas_llm.settings import Settings
from tests.action_runtime.conftest import RuntimeProcess

PROMPT = "Cold starts of large models"


@pytest.fixture(scope="module")
def pair(runtime_settings: Settings, tiny_model_dir: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RuntimeProcess, RuntimeProcess]]:
    a = RuntimeProcess(runtime_settings, tmp_path_factory.mktemp("runtime-a"))
    b = RuntimeProcess(runtime_settings.model_copy(update={"runtime_model": str(tiny_model_dir)}),
                       tmp_path_factory.mktemp("runtime-b"))
    try:
        a.launch()
        b.launch()
        a.wait_up()
        b.wait_up()
        assert a.init(name="llm", checkpoint=str(tiny_model_dir)).status_code == 200
        deadline = time.monotonic() + 60
        while b.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, b.get("/health").json()
            time.sleep(0.1)
        yield a, b
    finally:
        for runtime in (a, b):
            runtime.stop()


def test_knative_runtime_initialises_itself_once(pair: tuple[RuntimeProcess, RuntimeProcess],
                                                 tiny_model_dir: Path) -> None:
    _, b = pair
    assert b.get("/health").json()["model"] == tiny_model_dir.name
    assert b.init(checkpoint=str(tiny_model_dir)).status_code == 403


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_export_after_k_tokens_and_resume_elsewhere(pair: tuple[RuntimeProcess, RuntimeProcess],
                                                    temperature: float) -> None:
    a, b = pair
    value = {"prompt": PROMPT, "max_tokens": 40, "temperature": temperature, "seed": 2024}
    whole = a.run(value).json()
    assert whole["usage"]["completion_tokens"] == 40
    for k in (1, 9, 23, 39):
        first = a.run({**value, "export_after": k}).json()
        assert first["finish_reason"] == "migrated"
        state = first["state"]
        assert state["generated_ids"] == whole["token_ids"][:k]
        second = b.run({"resume": state}).json()
        assert state["generated_ids"] + second["token_ids"][k:] == whole["token_ids"]
        assert second["token_ids"] == whole["token_ids"], k
        assert second["text"] == whole["text"]
        assert second["usage"]["resumed_tokens"] == k and second["finish_reason"] == "length"


def test_live_migration_in_rounds(pair: tuple[RuntimeProcess, RuntimeProcess]) -> None:
    """A streams a long run; B prefills the tokens so far in rounds while A keeps decoding; then A
    stops at a boundary and B resumes from the prefilled cache. The client sees one seamless stream."""
    a, b = pair
    value = {"prompt": PROMPT, "max_tokens": 480, "temperature": 0}
    whole = a.run(value).json()
    activation = "b" * 32
    events: list[dict[str, Any]] = []
    got_some = threading.Event()

    def client() -> None:
        # export_after is the backstop: the run hands over there if the rounds below were slower.
        for event in a.stream({**value, "export_after": 470}, activation_id=activation):
            events.append(event)
            if len(events) >= 5:
                got_some.set()
        got_some.set()

    reader = threading.Thread(target=client)
    reader.start()
    assert got_some.wait(60)
    rounds = []
    for _ in range(2):  # as the coordinator drives it, with the contract's bodies and replies
        snapshot = a.post(EXPORT_PATH, export_body(activation, stop=False))
        if snapshot.status_code != 200:
            break  # already handed over at the backstop
        snap = ExportSnapshot.model_validate(snapshot.json())
        prefilled = b.post(PREFILL_PATH, prefill_body(activation, snap.prompt_ids + snap.generated_ids))
        rounds.append(PrefillReply.model_validate(prefilled.json()).cached_tokens)
    stop = a.post(EXPORT_PATH, export_body(activation))
    reader.join(60)
    assert events[-1]["type"] == "result" and events[-1]["result"]["finish_reason"] == "migrated"
    handed = migrated_state(events[-1]["result"])
    assert handed is not None
    state = handed.model_dump()
    if stop.status_code == 200:
        assert ExportReply.model_validate(stop.json()).state == handed
    else:
        assert stop.status_code == 404  # the backstop won the race: the run was gone already
    assert rounds == sorted(rounds)
    k = len(handed.generated_ids)
    print(f"handed over after {k} tokens, prefill rounds {rounds}")
    assert state["generated_ids"] == whole["token_ids"][:k]
    resume = resume_value(handed, activation)
    more = list(b.stream({k: v for k, v in resume.items() if k != "stream"}))
    result = more[-1]["result"]
    assert result["token_ids"] == whole["token_ids"]
    streamed = "".join(e["text"] for e in events[:-1] + more[:-1])
    assert streamed == whole["text"] == result["text"]


def test_resume_on_another_model_is_refused(pair: tuple[RuntimeProcess, RuntimeProcess]) -> None:
    _, b = pair
    state = {"model": "someone-else", "prompt_ids": [3, 4], "generated_ids": [5], "sampling": {}, "seed": 1}
    reply = b.run({"resume": state}).json()
    assert reply["http_status"] == 400 and "this runtime serves" in reply["error"]


def test_export_of_a_finished_run_is_a_conflict_or_gone(pair: tuple[RuntimeProcess, RuntimeProcess]) -> None:
    a, _ = pair
    a.run({"prompt": PROMPT, "max_tokens": 2}, activation_id="c" * 32)
    assert a.post("/export", {"activation_id": "c" * 32}).status_code == 404
