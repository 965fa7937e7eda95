"""Pure parts of the runtime: sampling, text deltas, request models, run control, error mapping."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from action_runtime.control import RunControl, RunRegistry
from action_runtime.handler import call_handler, compile_handler
from action_runtime.loading import ModelSpec, load_model, resolve
from action_runtime.responses import encode_result, run_error_status
from action_runtime.sampling import choose_token, step_seed, top_p_filter
from action_runtime.server import server_options
from action_runtime.service import spec_from_setting
from action_runtime.textstream import visible_text
from faas_llm.errors import (
    ActivationTimeoutError,
    ApplicationError,
    ConflictError,
    DeveloperError,
    InitError,
    NotFoundError,
    RegistryError,
    RequestError,
)
from faas_llm.genparams import GenerationState, SamplingParams, parse_generation_params
from faas_llm.registry.local import FileRegistry
from faas_llm.runtime_protocol import RunRequest, error_body
from faas_llm.settings import Settings
from faas_llm.types import LoadTier, parse

# --- sampling ------------------------------------------------------------------------------


def test_greedy_takes_the_argmax() -> None:
    logits = torch.tensor([0.1, 3.0, -1.0, 2.9])
    assert choose_token(logits, SamplingParams(temperature=0.0), seed=1, step=0) == 1


def test_sampling_is_a_function_of_seed_and_step() -> None:
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=1.0)
    draws = [choose_token(logits, params, seed=5, step=i) for i in range(50)]
    assert draws == [choose_token(logits, params, seed=5, step=i) for i in range(50)]
    assert draws != [choose_token(logits, params, seed=6, step=i) for i in range(50)]
    assert len(set(draws)) > 10  # it does sample


def test_step_seeds_differ_and_fit_63_bits() -> None:
    seeds = {step_seed(s, i) for s in range(20) for i in range(50)}
    assert len(seeds) == 1000
    assert all(0 <= s < 2**63 for s in seeds)


def test_top_p_keeps_the_smallest_nucleus() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    assert top_p_filter(probs, 0.7).tolist() == pytest.approx([0.5, 0.3, 0.0, 0.0])
    assert top_p_filter(probs, 0.5).tolist() == pytest.approx([0.5, 0.0, 0.0, 0.0])
    assert top_p_filter(probs, 0.01).tolist() == pytest.approx([0.5, 0.0, 0.0, 0.0])
    assert torch.equal(top_p_filter(probs, 1.0), probs)


def test_top_p_sampling_never_leaves_the_nucleus() -> None:
    logits = torch.tensor([2.0, 1.9, 0.0, -1.0, -2.0])
    params = SamplingParams(temperature=1.0, top_p=0.6)
    assert {choose_token(logits, params, seed=3, step=i) for i in range(200)} == {0, 1}


# --- text deltas -----------------------------------------------------------------------------


def test_stop_string_cuts_the_text() -> None:
    assert visible_text("hello world. more", ["."]).text == "hello world"
    assert visible_text("hello world. more", ["."]).stopped
    assert visible_text("a END b STOP", ["STOP", "END"]).text == "a "


def test_possible_stop_prefix_is_held_back_until_settled() -> None:
    assert visible_text("the answer is EN", ["END"]) == visible_text("the answer is ", ["END"])
    assert visible_text("the answer is EN", ["END"]).text == "the answer is "
    assert visible_text("the answer is ENough", ["END"]).text == "the answer is ENough"
    assert visible_text("the answer is EN", ["END"], final=True).text == "the answer is EN"


def test_incomplete_character_is_held_back() -> None:
    assert visible_text("caf\ufffd", []).text == "caf"
    assert visible_text("caf\ufffd", [], final=True).text == "caf\ufffd"
    assert visible_text("a\ufffdb", []).text == "a\ufffdb"


# --- request models -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
        ({"prompt": "x", "temperature": "hot"}, "temperature"),
        ({"prompt": "x", "temperature": 2.5}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "stop": [""]}, "stop"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "x", "seed": -3}, "seed"),
        ({"prompt": 5}, "prompt"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages"),
        ({}, "exactly one of prompt, messages or resume"),
        ({"prompt": "x", "messages": [{"role": "user", "content": "hi"}]}, "exactly one"),
        ({"prompt": "x", "prefill_session": "s"}, "prefill_session needs resume"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
    ],
)
def test_bad_generation_params_name_the_field(value: dict[str, object], field: str) -> None:
    with pytest.raises(RequestError, match=field):
        parse_generation_params(value)


def test_generation_params_defaults_and_unknown_fields() -> None:
    params = parse_generation_params({"prompt": "hi", "user": "someone", "stop": "."})
    assert (params.max_tokens, params.temperature, params.top_p) == (16, 1.0, 1.0)
    assert params.sampling().stop_strings() == ["."]
    chat = parse_generation_params({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                               {"type": "text", "text": "b"}]}]})
    assert chat.messages is not None and chat.messages[0].text() == "ab"


def test_resume_carries_its_own_sampling() -> None:
    state = GenerationState(model="m", prompt_ids=[1, 2], generated_ids=[3], seed=9,
                            sampling=SamplingParams(max_tokens=7, temperature=0.5))
    params = parse_generation_params({"resume": state.model_dump(), "max_tokens": 99})
    assert params.sampling().max_tokens == 7


def test_run_request_deadline_and_activation_env() -> None:
    request = parse(RunRequest, {"value": {}, "activation_id": "a" * 32, "namespace": "guest",
                                 "action_name": "llm", "deadline": "1700000000000", "api_key": "k"})
    assert request.deadline == 1700000000000
    env = request.activation_env()
    assert env["__OW_ACTIVATION_ID"] == "a" * 32
    assert env["__OW_DEADLINE"] == "1700000000000"
    assert env["__OW_NAMESPACE"] == "guest" and env["__OW_API_KEY"] == "k"
    assert "__OW_TRANSACTION_ID" not in env
    for bad in ("soon", True, 1.5):
        with pytest.raises(RequestError, match="deadline"):
            parse(RunRequest, {"value": {}, "deadline": bad})


# --- run control --------------------------------------------------------------------------


def test_registry_tracks_refuses_duplicates_and_forgets() -> None:
    registry = RunRegistry()
    control = RunControl("run-1")
    with registry.track(control):
        assert registry.get("run-1") is control
        with pytest.raises(ConflictError), registry.track(RunControl("run-1")):
            pass
    with pytest.raises(NotFoundError):
        registry.get("run-1")
    assert control.snapshot().finished


def test_export_waits_for_the_decoder() -> None:
    control = RunControl("r")
    state = GenerationState(model="m", prompt_ids=[1], generated_ids=[2, 3], seed=1, sampling=SamplingParams())

    def decoder() -> None:
        for n, token in enumerate([2, 3, 4], start=1):
            control.publish(token)
            if control.should_stop(n):
                control.exported(state)
                return

    control.request_stop(at_tokens=2)
    thread = threading.Thread(target=decoder)
    thread.start()
    assert control.wait_exported(5) == state
    thread.join()
    assert control.snapshot().generated_ids == [2, 3]


def test_export_of_a_run_that_ended_gets_nothing() -> None:
    control = RunControl("r")
    control.finished()
    assert control.wait_exported(0.01) is None


def test_deadline() -> None:
    assert RunControl("r", deadline_ms=1).past_deadline()
    assert not RunControl("r", deadline_ms=None).past_deadline()
    assert not RunControl("r", deadline_ms=10**15).past_deadline()


# --- errors and limits ------------------------------------------------------------------------


def test_application_errors_are_200_developer_errors_are_not() -> None:
    assert run_error_status(RequestError("bad")) == 200
    assert error_body(RequestError("bad"))["activation_status"] == 1
    assert error_body(RequestError("bad"))["http_status"] == 400
    assert run_error_status(ApplicationError("x")) == 200
    assert run_error_status(ActivationTimeoutError()) == 502
    assert error_body(ActivationTimeoutError(text="ab"))["details"] == {"text": "ab"}
    assert error_body(ActivationTimeoutError())["activation_status"] == 2
    assert run_error_status(DeveloperError()) == 502


def test_result_size_limit() -> None:
    assert encode_result({"text": "a" * 10}, 1024) == b'{"text":"aaaaaaaaaa"}'
    with pytest.raises(ApplicationError, match=r"exceeded the allowed length: 2\d\d\d > 1024 bytes"):
        encode_result({"text": "a" * 2000}, 1024)


# --- loading, handler code, server options ----------------------------------------------------------


def test_model_spec_resolution(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    with pytest.raises(ValueError, match="name the model"):
        ModelSpec()
    with pytest.raises(InitError, match="not a directory"):
        resolve(ModelSpec(checkpoint=str(tmp_path / "missing")), settings)
    with pytest.raises(RegistryError, match="not in the registry"):
        resolve(ModelSpec(model="org/absent"), settings)
    (tmp_path / "registry" / "org" / "there").mkdir(parents=True)  # a directory is not a pushed version
    with pytest.raises(RegistryError, match="not in the registry"):
        resolve(ModelSpec(model="org/there"), settings)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text("{}")
    registry = FileRegistry(tmp_path / "registry")
    pushed = registry.push(tmp_path / "src", "org/pushed")
    assert resolve(ModelSpec(model="org/pushed"), settings) == (registry.local_dir(pushed), LoadTier.REGISTRY)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InitError, match="holds no model"):
        load_model(ModelSpec(checkpoint=str(tmp_path / "empty")), settings)


def test_runtime_model_setting_is_a_path_or_a_name() -> None:
    assert spec_from_setting("/models/tiny").checkpoint == "/models/tiny"
    assert spec_from_setting("org/tiny").model == "org/tiny"


class _NoLLM:
    def generate(self, **params: object) -> dict[str, object]:
        raise AssertionError("not called")


def test_handler_code() -> None:
    handler = compile_handler("def main(args):\n    return {'got': args['x']}\n", "main", _NoLLM())
    assert call_handler(handler, {"x": 1}) == {"got": 1}
    with pytest.raises(InitError, match="SyntaxError"):
        compile_handler("def main(:\n", "main", _NoLLM())
    with pytest.raises(InitError, match="no function 'handle'"):
        compile_handler("x = 1\n", "handle", _NoLLM())
    crashing = compile_handler("def main(args):\n    return 1 / 0\n", "main", _NoLLM())
    with pytest.raises(DeveloperError, match="ZeroDivisionError"):
        call_handler(crashing, {})
    with pytest.raises(DeveloperError, match="not a JSON object"):
        call_handler(compile_handler("def main(args):\n    return 'text'\n", "main", _NoLLM()), {})


def test_server_options_follow_settings() -> None:
    options = server_options(Settings(runtime_port=9123, runtime_threads=5, runtime_drain_s=7.5,
                                      max_payload_bytes=4096))
    assert (options.host, options.port) == ("127.0.0.1", 9123)
    assert (options.threads, options.drain_s, options.max_body) == (5, 7.5, 4096)


def test_export_env_sets_changed_values_and_restores_overwritten_ones() -> None:
    """Values equal to the environment's are skipped; the C environment (what getenv(3) reads, e.g.
    a subprocess) always agrees with os.environ, also after action code overwrote a variable."""
    import ctypes
    import os

    from action_runtime.activation_env import export_env

    getenv = ctypes.CDLL(None).getenv
    getenv.restype = ctypes.c_char_p

    def both(name: str) -> tuple[str | None, bytes | None]:
        return os.environ.get(name), getenv(name.encode())

    names = ("__OW_TEST_NS", "__OW_TEST_ID")
    try:
        export_env({names[0]: "ns", names[1]: "a1"})
        export_env({names[0]: "ns", names[1]: "a2-" + "x" * 300})  # the namespace unchanged, the id longer
        assert both(names[0]) == ("ns", b"ns") and both(names[1]) == ("a2-" + "x" * 300, b"a2-" + b"x" * 300)
        os.environ[names[0]] = "changed by the action"
        export_env({names[0]: "ns", names[1]: "a3"})
        assert both(names[0]) == ("ns", b"ns") and both(names[1]) == ("a3", b"a3")
    finally:
        for name in names:
            os.environ.pop(name, None)
