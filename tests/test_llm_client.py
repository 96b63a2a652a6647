"""The LLM client against a fault-injecting server: retries, give-up, fatal errors, cache, concurrency."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from longwriter.llm import ClientSettings, Endpoint, LLMCallError, LLMClient, ResponseCache, Sampling

MESSAGES = [{"role": "user", "content": "Write something."}]
SAMPLING = Sampling(temperature=0.0, max_tokens=200)


def settings(tmp_path: Path, **kw) -> ClientSettings:
    base = {"cache_dir": str(tmp_path / "cache"), "max_retries": 6, "backoff_base_s": 0.01,
            "backoff_max_s": 0.05, "request_timeout_s": 2.0, "max_concurrency": 2}
    return ClientSettings(**(base | kw))


def endpoint(srv, key: str = "sk-test-key", mode: str = "json_schema") -> Endpoint:
    return Endpoint(srv.base_url, "fake-model", "openai:fake", mode, api_key=key)


def run(srv, tmp_path: Path, coro_fn, key: str = "sk-test-key", **kw):
    cfg = settings(tmp_path, **kw)
    with ResponseCache(Path(cfg.cache_dir) / "responses.sqlite") as cache:
        async def main():
            async with LLMClient(endpoint(srv, key=key), cache, cfg) as llm:
                return await coro_fn(llm), llm.stats
        return asyncio.run(main())


def test_retries_every_fault_kind_then_succeeds(fake_server, tmp_path):
    faults = ["429", "500", "503", "malformed", "truncated", "drop"]
    with fake_server(script=list(faults)) as srv:
        completion, stats = run(srv, tmp_path, lambda llm: llm.complete(MESSAGES, SAMPLING))
        outcomes = [e["outcome"] for e in srv.log]
    assert outcomes == [*faults, "ok"]
    assert completion.attempts == 7 and not completion.cached
    assert completion.text and completion.completion_tokens > 0
    assert stats.retries == 6 and stats.sent_calls == 1 and stats.failed_calls == 0


def test_timeout_is_retried(fake_server, tmp_path):
    with fake_server(script=["hang"], hang_s=5) as srv:
        started = time.perf_counter()
        completion, stats = run(srv, tmp_path, lambda llm: llm.complete(MESSAGES, SAMPLING), request_timeout_s=0.5)
    assert completion.attempts == 2 and stats.retries == 1
    assert time.perf_counter() - started < 4


def test_gives_up_after_max_retries_and_caches_nothing(fake_server, tmp_path):
    with fake_server(script=["500", "500", "500", "ok"]) as srv:
        with pytest.raises(LLMCallError) as info:
            run(srv, tmp_path, lambda llm: llm.complete(MESSAGES, SAMPLING), max_retries=2)
        assert info.value.attempts == 3
        assert "gave up after 3 attempts" in str(info.value) and "HTTP 500" in str(info.value)
        # the failure was not cached: the next run pays for the call again, and gets it
        completion, stats = run(srv, tmp_path, lambda llm: llm.complete(MESSAGES, SAMPLING), max_retries=2)
        assert not completion.cached and stats.sent_calls == 1
        assert [e["outcome"] for e in srv.log] == ["500", "500", "500", "ok"]


def test_auth_error_is_not_retried_and_key_is_not_leaked(fake_server, tmp_path):
    with fake_server(require_key="sk-right-key-123") as srv:
        with pytest.raises(LLMCallError) as info:
            run(srv, tmp_path, lambda llm: llm.complete(MESSAGES, SAMPLING), key="sk-wrong-key-456")
        assert srv.requests_count() == 1
    assert info.value.attempts == 1 and "HTTP 401" in str(info.value)
    assert "sk-wrong-key-456" not in str(info.value)


def test_retry_after_header_is_honoured(fake_server, tmp_path):
    with fake_server(script=["429"], retry_after_s=0.4) as srv:
        started = time.perf_counter()
        run(srv, tmp_path, lambda llm: llm.complete(MESSAGES, SAMPLING), backoff_base_s=0.001, backoff_max_s=5)
    assert time.perf_counter() - started >= 0.4


def test_cache_hits_and_sample_index(fake_server, tmp_path):
    async def three(llm):
        a = await llm.complete(MESSAGES, SAMPLING)
        b = await llm.complete(MESSAGES, SAMPLING)
        c = await llm.complete(MESSAGES, SAMPLING, sample=1)
        return a, b, c

    with fake_server() as srv:
        (a, b, c), stats = run(srv, tmp_path, three)
        assert srv.requests_count() == 2
        # a new process with the same cache file pays nothing
        (a2, b2, c2), stats2 = run(srv, tmp_path, three)
        assert srv.requests_count() == 2
    assert not a.cached and b.cached and not c.cached
    assert b.text == a.text and a2.text == a.text and c2.text == c.text
    assert stats.calls == 3 and stats.cache_hits == 1 and stats.sent_calls == 2
    assert stats2.cache_hits == 3 and stats2.sent_calls == 0 and stats2.as_metrics()["cache_hit_rate"] == 1.0
    assert stats2.completion_tokens == stats.completion_tokens  # token accounting covers cached answers too


def test_concurrency_is_bounded(fake_server, tmp_path):
    async def six(llm):
        return await asyncio.gather(*(llm.complete([{"role": "user", "content": f"n{i}"}], SAMPLING)
                                      for i in range(6)))

    with fake_server(base_latency_s=0.25) as srv:
        started = time.perf_counter()
        run(srv, tmp_path, six, max_concurrency=2)
        elapsed = time.perf_counter() - started
    assert elapsed >= 0.7  # 6 calls, 2 at a time: three waves of 0.25 s


@pytest.mark.parametrize("mode,expected_type", [("json_object", "json_object"), ("json_schema", "json_schema")])
def test_schema_request_forms(fake_server, tmp_path, mode, expected_type):
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"],
              "additionalProperties": False}
    cfg = settings(tmp_path)
    with fake_server() as srv, ResponseCache(tmp_path / "c.sqlite") as cache:
        llm = LLMClient(endpoint(srv, mode=mode), cache, cfg)
        form = llm._response_format(schema)

        async def main():
            async with llm:
                return await llm.complete(MESSAGES, SAMPLING, schema=schema)
        reply = asyncio.run(main())
    assert form["type"] == expected_type
    assert (form.get("schema") or form["json_schema"]["schema"]) == schema
    import json
    assert isinstance(json.loads(reply.text)["x"], int)


def test_a_relative_cache_dir_is_the_workspace_s_even_in_a_dvc_experiment_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ClientSettings(cache_dir=".llm-cache").cache_path == tmp_path / ".llm-cache"
    assert ClientSettings(cache_dir=str(tmp_path / "elsewhere")).cache_path == tmp_path / "elsewhere"
    # queued and --temp experiments run in <workspace>/.dvc/tmp/exps/<run>/ (a stage's wdir below it)
    run = tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12cd" / "sub"
    run.mkdir(parents=True)
    monkeypatch.chdir(run)
    assert ClientSettings(cache_dir=".llm-cache").cache_path == tmp_path / "sub" / ".llm-cache"
    assert ClientSettings(cache_dir="/abs/cache").cache_path == Path("/abs/cache")


def _keys(tmp_path: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(tmp_path / "cache" / "responses.sqlite") as db:
        return [k for (k,) in db.execute("SELECT key FROM responses")]


PAPER = Sampling(temperature=0.5, top_p=0.8, max_tokens=200)
# The cache key of complete(MESSAGES, PAPER, sample=1) for identity "openai:fake", computed before Sampling had
# top_k: a request without top_k must keep it, or every cached response would be paid for again.
KEY_BEFORE_TOP_K = "b6b52a295cc7f9a652224ec1ce5471bde9f6a370437753a978f1da5a9829c38e"


def test_a_request_without_top_k_keeps_its_cache_key_and_body(fake_server, tmp_path):
    with fake_server() as srv:
        run(srv, tmp_path, lambda llm: llm.complete(MESSAGES, PAPER, sample=1))
        body = srv.bodies[0]
    assert _keys(tmp_path) == [KEY_BEFORE_TOP_K]
    assert "top_k" not in body and "extra_body" not in body


def test_top_k_is_sent_in_the_body_and_keys_the_cache(fake_server, tmp_path):
    async def both(llm):
        await llm.complete(MESSAGES, dataclasses.replace(PAPER, top_k=50), sample=1)
        await llm.complete(MESSAGES, dataclasses.replace(PAPER, top_k=50), sample=1)  # a cache hit
        return await llm.complete(MESSAGES, dataclasses.replace(PAPER, top_k=40), sample=1)

    with fake_server() as srv:
        _, stats = run(srv, tmp_path, both)
        assert [b["top_k"] for b in srv.bodies] == [50, 40]
    assert stats.sent_calls == 2 and stats.cache_hits == 1
    keys = _keys(tmp_path)
    assert len(keys) == 2 and KEY_BEFORE_TOP_K not in keys


def test_openai_s_own_api_gets_no_top_k(tmp_path):
    """api.openai.com refuses unknown arguments (HTTP 400): top_k is left out of the request and of its key. The
    cache holds the answer to the request without top_k, so the call is answered there, without a network."""
    from longwriter.llm.cache import request_key

    cfg = settings(tmp_path)
    request = {"messages": MESSAGES, "temperature": 0.5, "top_p": 0.8, "max_tokens": 200, "frequency_penalty": 0.0,
               "presence_penalty": 0.0, "seed": 0}
    identity = "openai:https://api.openai.com/v1:gpt-4o"
    with ResponseCache(Path(cfg.cache_dir) / "responses.sqlite") as cache:
        cache.put(request_key(identity, {"request": request, "sample": 0}), identity,
                  {"text": "cached", "finish_reason": "stop", "prompt_tokens": 3, "completion_tokens": 1,
                   "latency_s": 0.1})

        async def main():
            ep = Endpoint("https://api.openai.com/v1", "gpt-4o", identity, "json_schema", api_key="sk-unused-key")
            async with LLMClient(ep, cache, cfg) as llm:
                return await llm.complete(MESSAGES, dataclasses.replace(PAPER, top_k=50))
        reply = asyncio.run(main())
    assert reply.cached and reply.text == "cached"


def test_truncated_replies_are_counted_paid_or_cached(fake_server, tmp_path):
    """An HTTP 200 reply that stops on the token limit is a completion, cached like any other, and counted."""
    short = Sampling(temperature=0.0, max_tokens=50)  # the fake's 120 words take 160 tokens

    async def calls(llm):
        return [await llm.complete(MESSAGES, short), await llm.complete(MESSAGES, short),
                await llm.complete(MESSAGES, SAMPLING)]

    with fake_server(words=120) as srv:
        replies, stats = run(srv, tmp_path, calls)
        replies2, stats2 = run(srv, tmp_path, calls)
    assert [r.finish_reason for r in replies] == ["length", "length", "stop"]
    assert (stats.sent_calls, stats.cache_hits, stats.truncated) == (2, 1, 2)
    assert (stats2.sent_calls, stats2.truncated) == (0, 2)
    assert stats.as_metrics()["truncated"] == 2
