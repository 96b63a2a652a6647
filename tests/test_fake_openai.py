"""Checks that the fake server misbehaves exactly as the real `openai` client expects.

The crash/rerun tests trust that each injected fault surfaces as a specific client
exception; these tests pin that mapping down against the installed `openai` version.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import BaseModel, Field

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai import FakeOpenAIServer, request_key  # noqa: E402

MESSAGES = [
    {"role": "system", "content": "You are a writer."},
    {"role": "user", "content": "Write a short story about a lighthouse keeper."},
]

OUTLINE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 5, "maxLength": 40},
        "genre": {"type": "string", "enum": ["drama", "comedy", "mystery"]},
        "paragraphs": {
            "type": "array",
            "minItems": 2,
            "maxItems": 4,
            "items": {
                "type": "object",
                "properties": {
                    "main_point": {"type": "string"},
                    "word_count": {"type": "integer", "minimum": 200, "maximum": 800},
                },
                "required": ["main_point", "word_count"],
            },
        },
        "final": {"type": "boolean"},
    },
    "required": ["title", "genre", "paragraphs", "final"],
}


def client_for(srv: FakeOpenAIServer, *, timeout: float = 2.0, api_key: str = "x") -> openai.OpenAI:
    # No retries: each test wants to see the first fault, not the client papering over it.
    return openai.OpenAI(base_url=srv.base_url, api_key=api_key, max_retries=0, timeout=timeout)


def chat(client: openai.OpenAI, **kwargs: Any) -> Any:
    return client.chat.completions.create(model="fake-model", messages=MESSAGES, **kwargs)


@pytest.fixture
def srv() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(words=60) as s:
        yield s


def test_normal_completion_parses_and_reports_usage(srv: FakeOpenAIServer) -> None:
    r = chat(client_for(srv))
    content = r.choices[0].message.content
    assert r.object == "chat.completion"
    assert r.choices[0].finish_reason == "stop"
    assert len(content.split()) == 60
    assert content[0].isupper() and content.endswith(".")
    n_prompt_words = sum(len(m["content"].split()) for m in MESSAGES)
    assert r.usage.prompt_tokens == -(-n_prompt_words * 4 // 3)
    assert r.usage.completion_tokens == 80
    assert r.usage.total_tokens == r.usage.prompt_tokens + 80


def test_identical_requests_get_identical_answers_and_are_both_paid(srv: FakeOpenAIServer) -> None:
    client = client_for(srv)
    a = chat(client, temperature=0.7).choices[0].message.content
    b = chat(client, temperature=0.7).choices[0].message.content
    c = chat(client, temperature=0.1).choices[0].message.content
    assert a == b
    assert a != c  # a different body is a different key, hence different text

    first, second = srv.log[0], srv.log[1]
    assert first["outcome"] == second["outcome"] == "ok"
    assert first["key"] == second["key"]
    assert srv.paid_calls()[first["key"]] == 2
    assert srv.requests_count() == 3
    assert first["key"] == request_key({"model": "fake-model", "messages": MESSAGES, "temperature": 0.7})


def test_max_tokens_cut_gives_finish_reason_length(srv: FakeOpenAIServer) -> None:
    r = chat(client_for(srv), max_tokens=20)
    assert r.choices[0].finish_reason == "length"
    assert len(r.choices[0].message.content.split()) == 15
    # Enough room for all 60 words (80 tokens): not cut.
    assert chat(client_for(srv), max_tokens=80).choices[0].finish_reason == "stop"


def _check_outline(content: str) -> None:
    data = json.loads(content)
    assert set(OUTLINE_SCHEMA["required"]) <= data.keys()
    assert 5 <= len(data["title"]) <= 40
    assert data["genre"] in ("drama", "comedy", "mystery")
    assert isinstance(data["final"], bool)
    assert 2 <= len(data["paragraphs"]) <= 4
    for p in data["paragraphs"]:
        assert isinstance(p["main_point"], str) and p["main_point"]
        assert 200 <= p["word_count"] <= 800


@pytest.mark.parametrize(
    "response_format",
    [
        pytest.param({"type": "json_object", "schema": OUTLINE_SCHEMA}, id="llama.cpp"),
        pytest.param(
            {
                "type": "json_schema",
                "json_schema": {"name": "outline", "schema": OUTLINE_SCHEMA, "strict": True},
            },
            id="openai",
        ),
    ],
)
def test_schema_response_format_gives_valid_json(srv: FakeOpenAIServer, response_format: dict) -> None:
    client = client_for(srv)
    r = chat(client, response_format=response_format)
    assert r.choices[0].finish_reason == "stop"
    _check_outline(r.choices[0].message.content)
    assert chat(client, response_format=response_format).choices[0].message.content == (
        r.choices[0].message.content
    )


class Paragraph(BaseModel):
    main_point: str
    word_count: int = Field(ge=100, le=1000)
    note: str | None = None


class Plan(BaseModel):
    paragraphs: list[Paragraph] = Field(min_length=1, max_length=3)


def test_pydantic_schema_with_refs_validates(srv: FakeOpenAIServer) -> None:
    # Pydantic emits $defs/$ref and anyOf-with-null, which is what the pipeline will actually send.
    schema = Plan.model_json_schema()
    r = chat(
        client_for(srv),
        response_format={"type": "json_schema", "json_schema": {"name": "plan", "schema": schema}},
    )
    Plan.model_validate_json(r.choices[0].message.content)


def test_429_raises_rate_limit_error() -> None:
    with FakeOpenAIServer(script=["429"], retry_after_s=1.5) as srv:
        with pytest.raises(openai.RateLimitError) as exc_info:
            chat(client_for(srv))
        assert exc_info.value.response.headers["retry-after"] == "1.5"
        assert srv.log[0]["outcome"] == "429" and srv.log[0]["completion_tokens"] == 0
        assert srv.paid_calls() == {}
        # The script is spent: the next request succeeds.
        assert chat(client_for(srv)).choices[0].message.content


@pytest.mark.parametrize("fault", ["500", "503"])
def test_5xx_raises_internal_server_error(fault: str) -> None:
    with FakeOpenAIServer(script=[fault]) as srv:
        with pytest.raises(openai.InternalServerError) as exc_info:
            chat(client_for(srv))
        assert exc_info.value.status_code == int(fault)
        assert srv.log[0]["outcome"] == fault


def test_hang_raises_timeout_and_stop_is_prompt() -> None:
    srv = FakeOpenAIServer(script=["hang"], hang_s=5).start()
    try:
        with pytest.raises(openai.APITimeoutError):
            chat(client_for(srv, timeout=1.0))
    finally:
        t0 = time.monotonic()
        srv.stop()
    assert time.monotonic() - t0 < 2.0
    assert srv.log[0]["outcome"] == "hang"


def test_drop_raises_connection_error() -> None:
    with FakeOpenAIServer(script=["drop"]) as srv:
        with pytest.raises(openai.APIConnectionError):
            chat(client_for(srv))
        assert srv.log[0]["outcome"] == "drop"


def test_malformed_body_raises() -> None:
    # With openai 3.57 this is a bare json.JSONDecodeError (a ValueError), NOT an openai.APIError:
    # retry code that only catches openai.APIError will not retry it.
    with FakeOpenAIServer(script=["malformed"]) as srv:
        with pytest.raises(Exception):  # noqa: B017 - the exact type is client-version specific
            chat(client_for(srv))
        assert srv.log[0]["outcome"] == "malformed"
        assert srv.paid_calls() == {}


def test_truncated_body_raises() -> None:
    # With openai 3.57 this is openai.APIConnectionError, caused by the transport's
    # RemoteProtocolError ("peer closed connection without sending complete message body").
    with FakeOpenAIServer(script=["truncated"]) as srv:
        with pytest.raises(Exception):  # noqa: B017 - the exact type is client-version specific
            chat(client_for(srv))
        assert srv.log[0]["outcome"] == "truncated"


def test_wrong_api_key_raises_authentication_error() -> None:
    with FakeOpenAIServer(require_key="secret") as srv:
        with pytest.raises(openai.AuthenticationError):
            chat(client_for(srv, api_key="wrong"))
        assert chat(client_for(srv, api_key="secret")).choices[0].message.content
        assert [e["outcome"] for e in srv.log] == ["401", "ok"]


def test_streaming_is_refused(srv: FakeOpenAIServer) -> None:
    with pytest.raises(openai.BadRequestError):
        chat(client_for(srv), stream=True)


def test_random_faults_follow_the_seeded_mix() -> None:
    outcomes = []
    for _ in range(2):  # same seed, same sequence of outcomes: a rerun sees the same faults
        with FakeOpenAIServer(faults={"500": 0.5}, seed=7, words=5) as srv:
            client = client_for(srv)
            for i in range(20):
                with contextlib.suppress(openai.InternalServerError):
                    chat(client, seed=i)
            outcomes.append([e["outcome"] for e in srv.log])
    assert outcomes[0] == outcomes[1]
    assert 0 < outcomes[0].count("500") < 20


def test_capacity_queues_concurrent_requests() -> None:
    with FakeOpenAIServer(capacity=1, base_latency_s=0.3, words=5) as srv:
        errors: list[BaseException] = []

        def one(i: int) -> None:
            try:
                chat(client_for(srv), seed=i)
            except BaseException as e:  # surfaced by the assert below, not lost in the thread
                errors.append(e)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
    assert not errors
    assert elapsed >= 0.85
    assert srv.requests_count() == 3


def test_log_file_gets_one_json_line_per_request(tmp_path: Path) -> None:
    log_path = tmp_path / "requests.jsonl"
    with FakeOpenAIServer(script=["503", "ok"], words=5, log_path=log_path) as srv:
        client = client_for(srv)
        with pytest.raises(openai.InternalServerError):
            chat(client)
        chat(client)
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [e["outcome"] for e in lines] == ["503", "ok"]
    assert lines == srv.log


def test_script_mode_prints_url_and_serves() -> None:
    script = Path(__file__).parent / "fake_openai.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--fault-rate", "0.2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        with urllib.request.urlopen(f"{url}/models", timeout=5) as resp:
            assert json.load(resp)["data"][0]["id"] == "fake-model"
    finally:
        proc.terminate()
        rc = proc.wait(timeout=5)
    assert rc == 0
