import pytest

from faas_llm import errors
from faas_llm.errors import ActivationStatus


def all_errors() -> list[type[errors.FaasLLMError]]:
    out = []
    todo: list[type[errors.FaasLLMError]] = [errors.FaasLLMError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


@pytest.mark.parametrize("cls", all_errors(), ids=lambda c: c.__name__)
def test_every_error_knows_its_mapping(cls: type[errors.FaasLLMError]) -> None:
    err = cls()
    assert 400 <= err.http_status <= 599
    assert isinstance(err.activation_status, ActivationStatus)
    assert err.message and err.to_dict()["error"] == err.message


def test_statuses() -> None:
    assert errors.PayloadTooLargeError.http_status == 413
    assert errors.ThrottledError.http_status == 429 and errors.ThrottledError.recoverable
    assert errors.ApplicationError.activation_status.label == "application error"
    assert errors.ActivationTimeoutError.activation_status is ActivationStatus.DEVELOPER_ERROR
    assert errors.NotFoundError().message == "The requested resource does not exist."
