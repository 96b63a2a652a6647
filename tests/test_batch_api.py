"""The OpenAI Batch API (a model spec with ``batch: true``) against the fake server's files and batches
endpoints: rounds, resuming a batch after a crash, failed and expired lines, the budget and the discount."""

from __future__ import annotations

import asyncio
import json

import openai
import polars as pl
import pytest
from test_stage_faults import write_instructions

from longwriter.agentwrite.write import WriteConfig, run_write
from longwriter.errors import ConfigError
from longwriter.llm import BudgetExhausted, ClientSettings, LLMCallError, ModelSpec, ResponseCache, run_with_llm
from longwriter.llm.cache import request_key
from longwriter.llm.spec import Sampling

SAMPLING = Sampling(max_tokens=400)


def batch_spec(srv, **kw) -> ModelSpec:
    return ModelSpec(provider="openai", base_url=srv.base_url, model="fake-model", batch=True, **kw)


def settings(tmp_path, **kw) -> ClientSettings:
    return ClientSettings(**({"cache_dir": str(tmp_path / "cache"), "max_retries": 2, "backoff_base_s": 0.01,
                              "backoff_max_s": 0.02, "request_timeout_s": 5.0, "batch_gather_s": 0.05,
                              "batch_poll_s": 0.02} | kw))


def ask_all(n: int):
    async def work(llm):
        return await asyncio.gather(*(llm.complete([{"role": "user", "content": f"question {i}"}], SAMPLING)
                                      for i in range(n)))
    return work


def sizes(srv) -> list[int]:
    return [b["request_counts"]["total"] for b in sorted(srv.batches.values(), key=lambda b: b["id"])]


def test_sequential_write_sends_one_batch_per_paragraph_round(fake_server, tmp_path):
    # 5 instructions of 4, 2, 3, 1 and 4 paragraphs: paragraph k of every instruction that has one is round k
    paragraphs = [4, 2, 3, 1, 4]
    write_instructions(tmp_path / "in.parquet", len(paragraphs))
    pl.DataFrame([{"instruction_id": f"i{k}", "section": s, "main_point": f"Part {s} of story {k}", "words": 80,
                   "attempts": 1} for k, n in enumerate(paragraphs) for s in range(1, n + 1)]
                 ).write_parquet(tmp_path / "plans.parquet")
    outs = {}
    for mode, batch in (("sequential", True), ("parallel", True), ("sequential", False)):
        d = tmp_path / f"{mode}-{batch}"
        with fake_server(words=80, batch_polls=1) as srv:
            spec = ModelSpec(provider="openai", base_url=srv.base_url, model="fake-model", batch=batch)
            m = run_write(tmp_path / "in.parquet", tmp_path / "plans.parquet", d / "s.parquet", d / "f.parquet",
                          d / "m.json", WriteConfig(mode=mode, generator=spec), settings(d, max_concurrency=2))
            outs[mode, batch] = pl.read_parquet(d / "s.parquet").drop("latency_s")
            assert m["written"] == 5 and m["continuation_calls"] == 0
            if batch:
                assert m["llm"]["batches"] == len(srv.batches)
                # sequential: K rounds, one per paragraph position; parallel: every paragraph in one
                assert sizes(srv) == ([5, 4, 3, 2] if mode == "sequential" else [sum(paragraphs)])
                assert set(srv.paid_calls().values()) == {1}
            else:
                assert srv.batches == {}
    # the same requests as without batches, so the same sections
    assert outs["sequential", True].equals(outs["sequential", False])


def test_a_crash_while_polling_resumes_the_same_batch(fake_server, tmp_path):
    with fake_server(batch_polls=10_000) as srv:  # a batch that stays in progress: the run is stopped
        async def stopped(llm):
            return await asyncio.wait_for(ask_all(3)(llm), timeout=0.5)
        with pytest.raises(TimeoutError):
            run_with_llm(batch_spec(srv), settings(tmp_path), stopped)
        assert len(srv.batches) == 1
        srv.batch_polls = 0
        answers, stats = run_with_llm(batch_spec(srv), settings(tmp_path), ask_all(3))
        assert len(srv.batches) == 1  # polled again, not submitted again
        assert stats.batches == 1 and stats.sent_calls == 3 and all(a.attempts == 1 for a in answers)
        assert set(srv.paid_calls().values()) == {1}
        again, stats = run_with_llm(batch_spec(srv), settings(tmp_path), ask_all(3))
        assert stats.cache_hits == 3 and len(srv.batches) == 1 and [a.text for a in again] == [a.text for a in answers]


def test_a_batch_whose_creation_was_not_recorded_is_found_by_its_input_file(fake_server, tmp_path):
    with fake_server(batch_polls=0) as srv:
        spec = batch_spec(srv)
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "question 0"}],
                "temperature": SAMPLING.temperature, "top_p": SAMPLING.top_p, "max_tokens": SAMPLING.max_tokens,
                "frequency_penalty": 0.0, "presence_penalty": 0.0, "seed": 0}
        identity = f"openai:{srv.base_url}:fake-model"
        key = request_key(identity, {"request": {k: v for k, v in body.items() if k != "model"}, "sample": 0})
        # what a run killed between creating the batch and recording its id leaves behind
        client = openai.OpenAI(base_url=srv.base_url, api_key="x")
        upload = client.files.create(file=("b.jsonl", (json.dumps(
            {"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n").encode()),
            purpose="batch")
        client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
        with ResponseCache(tmp_path / "cache" / "responses.sqlite") as cache:
            cache.batch_uploaded(upload.id, identity, [key])
            # and one whose batch was never created: its call is simply sent in a new batch
            cache.batch_uploaded("file-never", identity, [key + "x"])
        (answer,), stats = run_with_llm(spec, settings(tmp_path), ask_all(1))
        assert len(srv.batches) == 1 and stats.sent_calls == 1 and answer.attempts == 1
        with ResponseCache(tmp_path / "cache" / "responses.sqlite") as cache:
            assert cache.open_batches(identity) == [("file-never", None, [key + "x"])]


@pytest.mark.parametrize("outcome", ["expire:2", "fail"])
def test_expired_and_failed_lines_go_into_the_next_rounds_batch(fake_server, tmp_path, outcome):
    with fake_server(batch_polls=0, batch_outcomes=[outcome]) as srv:
        answers, stats = run_with_llm(batch_spec(srv), settings(tmp_path), ask_all(4))
    redone = 2 if outcome == "expire:2" else 4
    assert sizes(srv) == [4, redone]
    assert sorted(a.attempts for a in answers) == [1] * (4 - redone) + [2] * redone
    assert stats.retries == redone and stats.sent_calls == 4 and stats.failed_calls == 0


def test_a_line_failing_every_round_raises_and_a_stage_records_it(fake_server, tmp_path):
    with fake_server(batch_polls=0, faults={"500": 1.0}) as srv:
        with pytest.raises(LLMCallError, match=r"gave up after 3 batches; last error: HTTP 500"):
            run_with_llm(batch_spec(srv), settings(tmp_path), ask_all(1))
        assert sizes(srv) == [1, 1, 1]  # max_retries 2: three rounds
        write_instructions(tmp_path / "in.parquet", 2)
        pl.DataFrame([{"instruction_id": f"i{k}", "section": 1, "main_point": "p", "words": 80, "attempts": 1}
                      for k in range(2)]).write_parquet(tmp_path / "plans.parquet")
        m = run_write(tmp_path / "in.parquet", tmp_path / "plans.parquet", tmp_path / "s.parquet",
                      tmp_path / "f.parquet", tmp_path / "m.json", WriteConfig(generator=batch_spec(srv)),
                      settings(tmp_path, max_retries=0))
    failures = pl.read_parquet(tmp_path / "f.parquet")
    assert m["failed"] == 2 and failures.height == 2 and set(failures["reason"]) == {"llm_error"}
    assert all("gave up after 1 batches" in e for e in failures["error"])


def test_batch_price_is_discounted_and_the_budget_stops_the_next_round(fake_server, tmp_path):
    prices = {"price_input_per_mtok": 2.0, "price_output_per_mtok": 8.0}
    with fake_server(batch_polls=0) as srv:
        spec = ModelSpec(provider="openai", base_url=srv.base_url, model="fake-model", **prices)
        _, direct = run_with_llm(spec, settings(tmp_path / "direct"), ask_all(3))
        _, batched = run_with_llm(batch_spec(srv, **prices), settings(tmp_path / "batched"), ask_all(3))
        assert batched.cost_usd == pytest.approx(direct.cost_usd * 0.5) and direct.cost_usd > 0

        async def two_rounds(llm):
            first = await ask_all(3)(llm)
            return first, await llm.complete([{"role": "user", "content": "one more"}], SAMPLING)
        budget = batched.cost_usd / 2  # the first round passes it; the second is never sent
        with pytest.raises(BudgetExhausted, match="llm.max_cost_usd reached"):
            run_with_llm(batch_spec(srv, **prices), settings(tmp_path / "budget", max_cost_usd=budget), two_rounds)
        assert len(srv.batches) == 2  # the batched run's, and the first round's
        (first, last), stats = run_with_llm(batch_spec(srv, **prices),
                                            settings(tmp_path / "budget", max_cost_usd=1.0), two_rounds)
        assert stats.cache_hits == 3 and stats.sent_calls == 1 and len(srv.batches) == 3


def test_batch_needs_the_openai_provider():
    with pytest.raises(ValueError, match="batch: true needs provider 'openai'"):
        ModelSpec(batch=True)
    from longwriter.config import build
    with pytest.raises(ConfigError, match="batch_discount"):
        build(ModelSpec, {"provider": "openai", "base_url": "http://x", "model": "m", "batch": True,
                          "batch_discount": 1.5}, "params.yaml:write.generator")


def test_a_batch_that_cannot_be_polled_is_polled_again_never_sent_again(fake_server, tmp_path):
    # the first two retrievals fail: with max_retries 1 that is the poll's retry spent, so the first attempt of
    # both calls fails, and their second polls the same batch again
    with fake_server(batch_polls=0, batch_retrieve_errors=2) as srv:
        answers, stats = run_with_llm(batch_spec(srv), settings(tmp_path, max_retries=1), ask_all(2))
    assert len(srv.batches) == 1 and [a.attempts for a in answers] == [2, 2] and stats.sent_calls == 2
