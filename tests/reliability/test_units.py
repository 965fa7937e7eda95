"""Pure parts the fault handling relies on: the replay filter of re-run streams, the restart budget."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import redis

from cli.supervisor import RestartBudget
from faas_llm.activations import ActivationStore
from faas_llm.keys import Keys
from invoker.replay import Delivered, ReplayFilter, delivered, replay_seed, stream_sink, with_replay_seed


def chunks(text: str, cuts: list[int]) -> list[dict[str, Any]]:
    """``text`` split at ``cuts``; one token id per character (the id is the position)."""
    bounds = [0, *cuts, len(text)]
    return [{"text": text[a:b], "token_ids": list(range(a, b))} for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("delivered_chars", [0, 1, 5, 11, 20])
def test_a_rerun_forwards_exactly_what_the_client_lacks(delivered_chars: int) -> None:
    text = "Hello, wide world!!!"
    before = Delivered(text[:delivered_chars], list(range(delivered_chars)))
    out: list[dict[str, Any]] = []
    sink = ReplayFilter(before, out.append)
    for chunk in chunks(text, [3, 9, 16]):  # the re-run splits its deltas differently from the first run
        sink(chunk)
    assert before.text + "".join(c["text"] for c in out) == text
    assert before.token_ids + [i for c in out for i in c["token_ids"]] == list(range(len(text)))
    assert all(c["text"] or c["token_ids"] for c in out)  # no empty chunks
    assert not sink.diverged


def test_a_diverging_rerun_never_repeats_the_clients_text() -> None:
    out: list[dict[str, Any]] = []
    sink = ReplayFilter(Delivered("abcdef", [1, 2]), out.append)
    sink({"text": "abXdefGHI", "token_ids": [1, 9, 3]})
    assert sink.diverged
    assert "".join(c["text"] for c in out) == "GHI"


def test_a_stream_the_client_finished_gets_nothing_more() -> None:
    out: list[dict[str, Any]] = []
    sink = ReplayFilter(Delivered("abc", [1], done=True), out.append)
    sink({"text": "abcdef", "token_ids": [1, 2]})
    assert out == []


def test_replay_seed_is_stable_and_keeps_a_given_seed() -> None:
    assert replay_seed("a" * 32) == replay_seed("a" * 32) != replay_seed("b" * 32)
    assert 0 <= replay_seed("x") < 2**63
    assert with_replay_seed({"seed": 7}, "x")["seed"] == 7
    assert with_replay_seed({"seed": None}, "x")["seed"] == replay_seed("x")


def test_delivered_reads_the_token_stream(redis_client: redis.Redis, keys: Keys) -> None:
    store = ActivationStore(redis_client, keys)
    key = keys.activation_tokens("a1")
    sink, before = stream_sink(redis_client, key, lambda c: None)
    assert not isinstance(sink, ReplayFilter) and before == Delivered()
    store.append_tokens("a1", {"text": "Hel", "token_ids": [1]})
    store.append_tokens("a1", {"text": "lo", "token_ids": [2]})
    got = delivered(redis_client, key)
    assert got == Delivered("Hello", [1, 2], False)
    store.append_tokens("a1", {"done": True, "finish_reason": "length"})
    assert delivered(redis_client, key).done
    assert isinstance(stream_sink(redis_client, key, lambda c: None)[0], ReplayFilter)


def test_restart_budget_stops_a_crash_loop() -> None:
    budget = RestartBudget(most=3, window_s=10)
    assert [budget.allow("invoker", t) for t in (0, 1, 2, 3)] == [True, True, True, False]
    assert budget.allow("gateway", 3)  # per service
    assert budget.allow("invoker", 10.5)  # the window moved on
