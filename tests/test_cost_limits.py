"""Cost in dollars, a stage's budget (llm.max_cost_usd) and the rpm/tpm limits, against the fake server."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import polars as pl
import pytest
from test_stage_faults import write_instructions

import longwriter.llm.client as client_module
from longwriter.agentwrite.plan import PlanConfig, run_plan
from longwriter.config import build
from longwriter.errors import ConfigError
from longwriter.llm import (
    BudgetExhausted,
    ClientSettings,
    Endpoint,
    LLMClient,
    ModelSpec,
    ResponseCache,
    Sampling,
    open_endpoint,
)

SAMPLING = Sampling(temperature=0.0, max_tokens=100)
PRICES = {"price_input_per_mtok": 2.5, "price_output_per_mtok": 10.0}


def _settings(tmp_path: Path, **kw) -> ClientSettings:
    return ClientSettings(**({"cache_dir": str(tmp_path / "cache"), "max_retries": 1, "backoff_base_s": 0.01,
                              "backoff_max_s": 0.02, "request_timeout_s": 5.0, "max_concurrency": 1} | kw))


def _ask(endpoint: Endpoint, settings: ClientSettings, prompts: list[str]) -> tuple[list, object]:
    """Each prompt in turn; returns the completions (or the exception that stopped them) and the stats."""
    with ResponseCache(settings.cache_path / "responses.sqlite") as cache:
        async def main():
            done: list = []
            async with LLMClient(endpoint, cache, settings) as llm:
                for p in prompts:
                    try:
                        done.append(await llm.complete([{"role": "user", "content": p}], SAMPLING))
                    except BudgetExhausted as e:
                        done.append(e)
                        break
                return done, llm.stats
        return asyncio.run(main())


def _endpoint(srv, **kw) -> Endpoint:
    return Endpoint(srv.base_url, "fake-model", "openai:fake", "json_schema", **kw)


def test_paid_calls_are_priced_and_cached_ones_cost_nothing(fake_server, tmp_path):
    settings = _settings(tmp_path)
    with fake_server() as srv:
        done, stats = _ask(_endpoint(srv, **PRICES), settings, ["one", "two", "three"])
        expected = sum(c.prompt_tokens * 2.5 + c.completion_tokens * 10.0 for c in done) / 1e6
        assert expected > 0 and stats.cost_usd == pytest.approx(expected)
        assert stats.as_metrics()["cost_usd"] == round(expected, 6)
        assert settings.spend.usd == pytest.approx(expected)
        again, stats2 = _ask(_endpoint(srv, **PRICES), _settings(tmp_path), ["one", "two", "three"])
    assert all(c.cached for c in again) and stats2.cost_usd == 0.0


def test_no_prices_and_local_backends_cost_zero(fake_server, tmp_path):
    with fake_server() as srv:
        _, stats = _ask(_endpoint(srv), _settings(tmp_path), ["one"])
    assert stats.sent_calls == 1 and stats.as_metrics()["cost_usd"] == 0.0
    # prices on a spec reach only an API endpoint: the embedded model and local checkpoints cost nothing
    with open_endpoint(ModelSpec(**PRICES), _settings(tmp_path)) as endpoint:
        assert (endpoint.price_input_per_mtok, endpoint.price_output_per_mtok) == (0.0, 0.0)
    api = ModelSpec(provider="openai", base_url="http://127.0.0.1:9/v1", model="m", rpm=10, tpm=1000, **PRICES)
    with open_endpoint(api, _settings(tmp_path)) as endpoint:
        assert (endpoint.price_input_per_mtok, endpoint.price_output_per_mtok) == (2.5, 10.0)
        assert (endpoint.rpm, endpoint.tpm) == (10, 1000)


def test_the_budget_stops_new_requests_and_a_rerun_with_more_resumes_without_paying_twice(fake_server, tmp_path):
    prompts = [f"prompt {i}" for i in range(6)]
    with fake_server() as srv:
        one, _ = _ask(_endpoint(srv, **PRICES), _settings(tmp_path / "probe"), prompts[:1])
        per_call = one[0].prompt_tokens * 2.5e-6 + one[0].completion_tokens * 10e-6
        budget = 2.5 * per_call  # reached after the third paid call
        settings = _settings(tmp_path, max_cost_usd=budget)
        done, stats = _ask(_endpoint(srv, **PRICES), settings, prompts)
        assert [type(d).__name__ for d in done] == ["Completion"] * 3 + ["BudgetExhausted"]
        assert "llm.max_cost_usd reached" in str(done[-1]) and "rerun with a higher llm.max_cost_usd" in str(done[-1])
        assert stats.sent_calls == 3 and settings.spend.usd >= budget
        sent = srv.requests_count()
        more, stats2 = _ask(_endpoint(srv, **PRICES), _settings(tmp_path, max_cost_usd=10 * budget), prompts)
        assert [c.cached for c in more] == [True] * 3 + [False] * 3
        assert srv.requests_count() - sent == 3 and stats2.sent_calls == 3


def test_the_budget_is_the_stage_s_across_its_clients(fake_server, tmp_path):
    with fake_server() as srv:
        settings = _settings(tmp_path, max_cost_usd=1e-9)
        first, _ = _ask(_endpoint(srv, **PRICES), settings, ["a", "b"])
        other = Endpoint(srv.base_url, "other", "openai:other", "json_schema", **PRICES)  # a second model
        second, stats = _ask(other, settings, ["c"])
    assert type(first[-1]) is BudgetExhausted and type(second[0]) is BudgetExhausted and stats.sent_calls == 0


def test_a_stage_stops_on_its_budget_with_a_clear_error_and_resumes(fake_server, tmp_path):
    write_instructions(tmp_path / "in.parquet", 4)
    out = [tmp_path / "plans.parquet", tmp_path / "fail.parquet", tmp_path / "m.json"]
    with fake_server() as srv:
        cfg = PlanConfig(generator=ModelSpec(provider="openai", base_url=srv.base_url, model="fake-model",
                                             **PRICES))
        with pytest.raises(BudgetExhausted, match="llm.max_cost_usd reached"):
            run_plan(tmp_path / "in.parquet", *out, cfg, _settings(tmp_path, max_cost_usd=1e-9))
        assert not out[0].exists() and srv.requests_count() == 1  # nothing half-written; one call paid
        m = run_plan(tmp_path / "in.parquet", *out, cfg, _settings(tmp_path, max_cost_usd=100.0))
        assert srv.requests_count() == 4  # the first call came from the cache
    assert m["planned"] == 4 and m["llm"]["cache_hits"] == 1 and m["llm"]["cost_usd"] > 0
    assert json.loads(out[2].read_text())["llm"]["cost_usd"] == m["llm"]["cost_usd"]
    assert pl.read_parquet(out[0])["instruction_id"].n_unique() == 4


def _timed(srv, tmp_path: Path, n: int, **limits) -> float:
    settings = _settings(tmp_path, max_concurrency=n)
    with ResponseCache(settings.cache_path / "responses.sqlite") as cache:
        async def main() -> float:
            async with LLMClient(_endpoint(srv, **limits), cache, settings) as llm:
                started = time.perf_counter()
                await asyncio.gather(*(llm.complete([{"role": "user", "content": f"p{i}"}], SAMPLING)
                                       for i in range(n)))
                return time.perf_counter() - started
        return asyncio.run(main())


def test_rpm_and_tpm_are_honoured_across_concurrent_calls(fake_server, tmp_path, monkeypatch):
    monkeypatch.setattr(client_module, "_LIMIT_WINDOW_S", 1.0)  # "per minute" becomes per second
    with fake_server() as srv:
        free = _timed(srv, tmp_path / "free", 8)
        rpm = _timed(srv, tmp_path / "rpm", 8, rpm=4)  # 4 at once, then one every 0.25 s
        # each request counts len("pN") // 4 + max_tokens 100 = 100 tokens: 5 per window
        tpm = _timed(srv, tmp_path / "tpm", 8, tpm=500)
    assert rpm >= 0.9 and tpm >= 0.5 and free < min(rpm, tpm)


@pytest.mark.parametrize(("data", "match"), [
    ({"price_input_per_mtok": -1}, "price_input_per_mtok"),
    ({"price_output_per_mtok": "cheap"}, "price_output_per_mtok"),
    ({"rpm": 0}, "rpm"),
    ({"tpm": 1.5}, "tpm"),
])
def test_spec_limits_and_prices_are_checked(data, match):
    with pytest.raises(ConfigError, match=match):
        build(ModelSpec, {"provider": "openai", "base_url": "http://x/v1", "model": "m"} | data, "models.m")


def test_max_cost_usd_is_a_param_and_the_running_spend_is_not():
    assert build(ClientSettings, {"max_cost_usd": 5}, "llm").max_cost_usd == 5
    with pytest.raises(ConfigError, match="max_cost_usd"):
        build(ClientSettings, {"max_cost_usd": -1}, "llm")
    with pytest.raises(ConfigError, match="unknown key"):
        build(ClientSettings, {"spend": 3}, "llm")
