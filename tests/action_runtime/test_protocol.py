"""The invoker <-> runtime contract (faas_llm.runtime_protocol): what the senders build is what the
receivers validate, the wire stays OpenWhisk's, and replies and stream events are read strictly."""

from __future__ import annotations

import json
from typing import Any

import pytest

from faas_llm import errors
from faas_llm.errors import ActivationStatus
from faas_llm.genparams import GenerationParams, GenerationState, SamplingParams
from faas_llm.runtime_protocol import (
    ErrorBody,
    ErrorEvent,
    ExportReply,
    ExportRequest,
    ExportSnapshot,
    InitReply,
    InitRequest,
    PrefillRequest,
    ResultEvent,
    RunRequest,
    TextEvent,
    TokenEvent,
    classify,
    error_body,
    error_event,
    export_body,
    init_body,
    migrated_state,
    prefill_body,
    read_event,
    read_reply,
    result_event,
    resume_value,
    run_body,
    text_event,
    token_event,
    with_value,
)
from faas_llm.types import LoadTier

STATE = GenerationState(model="m", prompt_ids=[3, 4], generated_ids=[5, 6], sampling=SamplingParams(max_tokens=9),
                        seed=7, emitted_chars=2)


def test_run_body_is_openwhisks_envelope_and_the_runtime_reads_it() -> None:
    body = run_body({"prompt": "hi"}, namespace="guest", action_name="qa", action_version="0.0.1",
                    activation_id="a" * 32, transaction_id="t1", deadline_ms=1_700_000_000_123)
    assert list(body) == ["value", "namespace", "action_name", "action_version", "activation_id", "transaction_id",
                          "deadline"]
    assert body["deadline"] == "1700000000123"  # OpenWhisk sends epoch ms as a string
    request = RunRequest.model_validate(json.loads(json.dumps(body)))
    assert request.deadline == 1_700_000_000_123 and request.value == {"prompt": "hi"}
    assert request.activation_env()["__OW_ACTIVATION_ID"] == "a" * 32
    moved = with_value(body, {"prompt": "other"})
    assert moved["value"] == {"prompt": "other"} and body["value"] == {"prompt": "hi"}
    assert {k: v for k, v in moved.items() if k != "value"} == {k: v for k, v in body.items() if k != "value"}


def test_init_export_and_prefill_bodies_validate_as_their_requests() -> None:
    init = InitRequest.model_validate(init_body(model="demo/tiny", name="qa", code="def main(a): return a"))
    assert init.value.model == "demo/tiny" and init.value.main == "main" and init.value.env == {}
    assert init_body(checkpoint="/c")["value"]["checkpoint"] == "/c"
    assert "checkpoint" not in init_body(model="demo/tiny")["value"]  # OpenWhisk's fields plus the model only
    assert ExportRequest.model_validate(export_body("x")) == ExportRequest(activation_id="x")
    snapshot = export_body("x", stop=False)
    assert snapshot == {"activation_id": "x", "stop": False}
    assert ExportRequest.model_validate(export_body("x", at_tokens=5)).at_tokens == 5
    assert PrefillRequest.model_validate(prefill_body("s", [1, 2])).token_ids == [1, 2]


@pytest.mark.parametrize("bad", [{"activation_id": "x", "stop": "yes"}, {"activation_id": "x", "extra": 1},
                                 {"activation_id": ""}, {"activation_id": "x", "wait_s": 0}])
def test_export_request_is_strict(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ExportRequest.model_validate(bad)


def test_stream_events_round_trip_and_reject_anything_else() -> None:
    lines = [json.dumps(e).encode() for e in (
        token_event(0, 42, "He"), text_event("llo"), result_event({"text": "Hello"}),
        error_event(errors.DeveloperError("boom")))]
    token, text, result, error = (read_event(line) for line in lines)
    assert isinstance(token, TokenEvent) and (token.index, token.token_id, token.text) == (0, 42, "He")
    assert isinstance(text, TextEvent) and text.text == "llo"
    assert isinstance(result, ResultEvent) and result.result == {"text": "Hello"}
    assert isinstance(error, ErrorEvent) and ErrorBody.model_validate(error.error).activation_status == 2
    for bad in (b"not json", b'{"type": "token", "text": "x"}', b'{"type": "bye"}', b"[]"):
        with pytest.raises(ValueError):
            read_event(bad)


def test_error_body_marks_bad_input_as_the_applications() -> None:
    bad = ErrorBody.model_validate(error_body(errors.RequestError("no prompt", field="prompt")))
    assert (bad.http_status, bad.activation_status, bad.type) == (400, 1, "invalid_request_error")
    assert bad.details == {"field": "prompt"}
    crash = ErrorBody.model_validate(error_body(errors.DeveloperError()))
    assert (crash.http_status, crash.activation_status) == (502, 2)


def test_migrated_state_and_the_resume_that_continues_it() -> None:
    assert migrated_state({"finish_reason": "length", "state": None}) is None
    assert migrated_state(["not", "a", "result"]) is None
    result = {"finish_reason": "migrated", "state": STATE.model_dump()}
    assert migrated_state(json.loads(json.dumps(result))) == STATE
    with pytest.raises(ValueError):
        migrated_state({"finish_reason": "migrated", "state": {"model": "m"}})
    value = resume_value(STATE, "sess")
    params = GenerationParams.model_validate(json.loads(json.dumps(value)))
    assert params.resume == STATE and params.prefill_session == "sess" and params.stream
    assert "prefill_session" not in resume_value(STATE)


def test_read_reply_maps_statuses_to_the_error_tree() -> None:
    reply = {"ok": True, "model": "m", "load_tier": "dram", "load_s": 0.1, "init_s": 0.2, "source": "faas-llm",
             "added_later": 1}
    assert read_reply(InitReply, "/init", 200, reply).load_tier is LoadTier.DRAM
    snap = read_reply(ExportSnapshot, "/export", 200, {"activation_id": "a", "prompt_ids": [1], "generated_ids": [],
                                                        "finished": False})
    assert snap.prompt_ids == [1]
    for status, cls in ((404, errors.NotFoundError), (409, errors.ConflictError), (403, errors.ForbiddenError),
                        (400, errors.RequestError), (502, errors.ActionError), (500, errors.ActionError)):
        with pytest.raises(cls) as caught:
            read_reply(ExportReply, "/export", status, {"error": "why"})
        assert "why" in caught.value.message and str(status) in caught.value.message
    with pytest.raises(errors.InternalError):
        read_reply(ExportReply, "/export", 200, {"activation_id": "a", "state": {"model": "m"}})
    with pytest.raises(errors.InternalError):
        read_reply(InitReply, "/init", 200, None)


def test_classify_reads_error_bodies_by_their_activation_status() -> None:
    assert classify(200, error_body(errors.RequestError("bad")))[0] is ActivationStatus.APPLICATION_ERROR
    assert classify(502, error_body(errors.DeveloperError()))[0] is ActivationStatus.DEVELOPER_ERROR
    assert classify(200, {"text": "ok"}) == (ActivationStatus.SUCCESS, {"text": "ok"})
