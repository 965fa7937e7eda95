import json

import pytest

from faas_llm.errors import ActivationStatus, RequestError
from faas_llm.types import (
    Action,
    ActivationRecord,
    ActivationResponse,
    Invocation,
    NodeReport,
    check_model_name,
    new_activation_id,
    parse,
)


def action_body(**over: object) -> dict:
    body: dict = {"namespace": "guest", "name": "hello", "exec": {"kind": "llm", "model": "demo/tiny"}}
    body.update(over)
    return body


def test_action_defaults_are_filled() -> None:
    action = parse(Action, action_body())
    assert action.limits.timeout == 60_000
    assert action.limits.concurrency == 1
    assert action.scaling.min_instances == 0
    assert action.exec.main == "main"
    assert action.default_params() == {}


def test_action_round_trips_through_json() -> None:
    action = parse(Action, action_body(parameters=[{"key": "max_tokens", "value": 5}]))
    again = Action.model_validate_json(action.model_dump_json())
    assert again == action
    assert again.default_params() == {"max_tokens": 5}


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"exec": {"kind": "nodejs:20", "model": "m"}}, "exec.kind"),
        ({"exec": {"kind": "llm", "model": "../etc"}}, "exec.model"),
        ({"exec": {"kind": "llm"}}, "exec.model"),
        ({"limits": {"timeout": 50}}, "limits.timeout"),
        ({"limits": {"timeout": "soon"}}, "limits.timeout"),
        ({"limits": {"concurrency": 0}}, "limits.concurrency"),
        ({"name": "a/b"}, "name"),
        ({"name": "a..b"}, "name"),
        ({"name": "bad\u0000name"}, "name"),
        ({"parameters": [{"value": 1}]}, "parameters.0.key"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_bad_actions_name_the_field(over: dict, field: str) -> None:
    with pytest.raises(RequestError) as info:
        parse(Action, action_body(**over))
    assert info.value.message.startswith(field + ":") or f"; {field}:" in info.value.message, info.value.message
    assert info.value.http_status == 400


@pytest.mark.parametrize("name", ["tiny", "org/tiny", "Org-1/model_v2.1"])
def test_good_model_names(name: str) -> None:
    assert check_model_name(name) == name


@pytest.mark.parametrize("name", ["", "a/b/c", "../x", "a/..", "/abs", "a//b", ".hidden", "a\\b", "x y"])
def test_bad_model_names(name: str) -> None:
    with pytest.raises(ValueError, match="not a valid model name"):
        check_model_name(name)


def test_activation_record_shape() -> None:
    aid = new_activation_id()
    record = ActivationRecord(
        namespace="guest", name="hello", subject="guest", activationId=aid, start=1, end=3, duration=2,
        response=ActivationResponse.of(ActivationStatus.APPLICATION_ERROR, {"error": "bad"}),
    )
    data = json.loads(record.model_dump_json())
    assert data["response"] == {
        "status": "application error", "statusCode": 1, "success": False, "result": {"error": "bad"}, "size": 0,
    }
    assert data["activationId"] == aid and len(aid) == 32


def test_invocation_rejects_bad_activation_id() -> None:
    with pytest.raises(RequestError, match="activation_id"):
        parse(Invocation, {"activation_id": "XYZ", "namespace": "g", "action": "a", "subject": "s",
                           "transaction_id": "t", "deadline_ms": 1})


def test_node_report_parses_containers() -> None:
    report = parse(NodeReport, {"node": "n1", "containers": [{"id": "c1", "state": "idle"}]})
    assert report.containers[0].state.value == "idle"
    with pytest.raises(RequestError, match=r"containers\.0\.state"):
        parse(NodeReport, {"node": "n1", "containers": [{"id": "c1", "state": "sleeping"}]})
