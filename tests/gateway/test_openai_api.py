"""The OpenAI-compatible face under real gunicorn: raw HTTP and the official OpenAI Python client."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator

import openai
import pytest
import requests

from tests.gateway.conftest import OW, Tenant
from tests.gateway.consumer import TOO_LONG, QueueConsumer, expected_words


@pytest.fixture
def client(gunicorn_gateway: str, guest: Tenant) -> Iterator[openai.OpenAI]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        api = openai.OpenAI(base_url=f"{gunicorn_gateway}/v1", api_key=guest.api_key, max_retries=0, timeout=30)
    try:
        yield api
    finally:
        api.close()


def sse_events(response: requests.Response) -> Iterator[str]:
    for line in response.iter_lines(decode_unicode=True):
        if line and line.startswith("data: "):
            yield line[len("data: "):]


def test_models_are_the_namespaces_actions(ow: OW, client: openai.OpenAI) -> None:
    ow.put_action("llama-chat")
    ow.put_action("gpt")
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["gpt", "llama-chat"]
    model = client.models.retrieve("gpt")
    assert model.id == "gpt" and model.owned_by == "guest"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("absent")


def test_chat_completion_with_the_official_client(ow: OW, client: openai.OpenAI, consumer: QueueConsumer) -> None:
    ow.put_action("chat")
    reply = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hello there"}],
                                           max_tokens=5, temperature=0)
    assert reply.object == "chat.completion" and reply.model == "chat"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == " ".join(expected_words("hello there", 5))
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 5 and reply.usage.prompt_tokens == 2
    sent = consumer.seen[-1].params
    assert sent["messages"] == [{"role": "user", "content": "hello there"}]
    assert sent["max_tokens"] == 5 and sent["temperature"] == 0 and sent["stream"] is False


def test_streamed_chat_with_the_official_client(ow: OW, client: openai.OpenAI, consumer: QueueConsumer) -> None:
    ow.put_action("chat")
    stream = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "stream me"}],
                                            max_tokens=6, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " ".join(expected_words("stream me", 6))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert consumer.seen[-1].stream is True


def test_first_token_reaches_the_client_before_generation_ends(
    ow: OW, guest: Tenant, consumer: QueueConsumer
) -> None:
    """The test consumer holds generation after its first token until the client has seen it."""
    ow.put_action("gated", parameters=[{"key": "_gate", "value": "g1"}])
    with requests.post(f"{ow.base}/v1/completions", json={"model": "gated", "prompt": "abc", "max_tokens": 4,
                                                          "stream": True},
                       headers={"Authorization": f"Bearer {guest.api_key}"}, stream=True, timeout=30) as r:
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        aid = r.headers["x-openwhisk-activation-id"]
        events = sse_events(r)
        first = json.loads(next(events))
        words = expected_words("abc", 4)
        assert first["choices"][0]["text"] == words[0]
        # generation has not ended: no record yet
        assert ow.session.get(ow.url(f"activations/{aid}")).status_code == 404
        consumer.open_gate("g1")
        rest = list(events)
    assert rest[-1] == "[DONE]"
    chunks = [json.loads(e) for e in rest[:-1]]
    assert words[0] + "".join(c["choices"][0]["text"] for c in chunks) == " ".join(words)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["id"] == f"cmpl-{aid}" and c["object"] == "text_completion" for c in chunks)


def test_completion_non_streaming(ow: OW, guest: Tenant, consumer: QueueConsumer) -> None:
    ow.put_action("gen")
    r = requests.post(f"{ow.base}/v1/completions", json={"model": "gen", "prompt": ["one"], "max_tokens": 3},
                      headers={"Authorization": f"Bearer {guest.api_key}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == " ".join(expected_words("one", 3))
    assert body["id"] == f"cmpl-{r.headers['x-openwhisk-activation-id']}"
    assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}


def test_openai_errors_have_the_openai_shape(
    ow: OW, guest: Tenant, client: openai.OpenAI, consumer: QueueConsumer, gunicorn_gateway: str
) -> None:
    url = f"{gunicorn_gateway}/v1/chat/completions"
    unauthorized = requests.post(url, json={"model": "x", "messages": [{"role": "user", "content": "hi"}]})
    assert unauthorized.status_code == 401
    assert unauthorized.json()["error"]["type"] == "authentication_error"
    assert unauthorized.headers["WWW-Authenticate"] == 'Basic realm="OpenWhisk secure realm"'
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="absent", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.body is not None and missing.value.code == "not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="absent", messages=[])
    assert "messages" in str(bad.value)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="absent", prompt="x", n=2)
    ow.put_action("refuses", parameters=[{"key": "_fail", "value": "application"}])
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="refuses", messages=[{"role": "user", "content": "hi"}])
    assert failed.value.status_code == 502 and "refused" in failed.value.message
    with pytest.raises(openai.APIError) as stream_failed:
        list(client.chat.completions.create(model="refuses", messages=[{"role": "user", "content": "hi"}],
                                            stream=True))
    assert "refused" in stream_failed.value.message
    auth = {"Authorization": f"Bearer {guest.api_key}"}
    not_json = requests.post(url, data=b"nope", headers=auth)
    assert not_json.status_code == 400 and not_json.json()["error"]["type"] == "invalid_request_error"
    assert requests.get(f"{gunicorn_gateway}/v1/nothing", headers=auth).json()["error"]["code"] == "not_found"


def test_prompt_longer_than_the_context_is_400_invalid_request(
    ow: OW, client: openai.OpenAI, consumer: QueueConsumer
) -> None:
    """Issue 12: the runtime's refusal of a too-long prompt is the client's error (400,
    invalid_request_error) on both OpenAI endpoints, streamed or not; the OpenWhisk record is an
    application error with the runtime's message."""
    ow.put_action("short", parameters=[{"key": "_fail", "value": "request"}])
    with pytest.raises(openai.BadRequestError) as completion:
        client.completions.create(model="short", prompt="x " * 600, max_tokens=1)
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(model="short", messages=[{"role": "user", "content": "x " * 600}])
    for failed in (completion.value, chat.value):
        assert failed.status_code == 400 and failed.code == "request"
        assert isinstance(failed.body, dict) and failed.body["type"] == "invalid_request_error"
        assert "model's context is 512 tokens" in failed.message
    with pytest.raises(openai.APIError) as streamed:
        list(client.completions.create(model="short", prompt="x " * 600, max_tokens=1, stream=True))
    assert "model's context is 512 tokens" in streamed.value.message
    assert isinstance(streamed.value.body, dict) and streamed.value.body["type"] == "invalid_request_error"
    record = ow.invoke("short", {"prompt": "x " * 600}, blocking=True)
    assert record.status_code == 502  # OpenWhisk: the activation ran and reported an application error
    response = record.json()["response"]
    assert response["statusCode"] == 1 and response["status"] == "application error"
    assert response["result"]["error"] == TOO_LONG
