"""The true price of long writing: cached prompt tokens counted and priced by the client (direct and Batch API,
replayed from the response cache), the fake server's prefix cache, and write's --estimate against real runs."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
from fake_openai import approx_tokens
from test_stage_faults import fake_spec, fast_settings, write_instructions

from longwriter.agentwrite.estimate import estimate, estimate_files, shared_units, summary, units
from longwriter.agentwrite.write import WriteConfig, read_inputs, run_write
from longwriter.llm import ClientSettings, Endpoint, LLMClient, ModelSpec, ResponseCache, Sampling, open_endpoint
from longwriter.llm.batch import cached_prompt_tokens

ROOT = Path(__file__).parent.parent
SAMPLING = Sampling(temperature=0.0, max_tokens=100)
PRICES = {"price_input_per_mtok": 2.0, "price_cached_input_per_mtok": 0.5, "price_output_per_mtok": 8.0}
BASE = " ".join(f"word{i}" for i in range(60))  # 60 words: 80 tokens by the fake's count


def _ask(endpoint: Endpoint, settings: ClientSettings, prompts: list[str]):
    with ResponseCache(settings.cache_path / "responses.sqlite") as cache:
        async def main():
            async with LLMClient(endpoint, cache, settings) as llm:
                done = [await llm.complete([{"role": "user", "content": p}], SAMPLING) for p in prompts]
                return done, llm.stats
        return asyncio.run(main())


def _endpoint(srv, **kw) -> Endpoint:
    return Endpoint(srv.base_url, "fake-model", "openai:fake", "json_schema", **kw)


def _price(c, cached_rate: float) -> float:
    return ((c.prompt_tokens - c.cached_tokens) * 2.0 + c.cached_tokens * cached_rate + c.completion_tokens * 8.0) / 1e6


def test_cached_prompt_tokens_are_counted_priced_and_replayed(fake_server, tmp_path):
    prompts = [BASE, BASE + " and then some more words", "another prompt altogether"]
    with fake_server(prefix_cache=True) as srv:
        done, stats = _ask(_endpoint(srv, **PRICES), fast_settings(tmp_path), prompts)
    # the second prompt repeats the first's 60 words: 80 tokens cached; the others share nothing
    assert [c.cached_tokens for c in done] == [0, approx_tokens(60), 0]
    assert done[1].prompt_tokens == approx_tokens(65)
    expected = sum(_price(c, 0.5) for c in done)
    assert stats.cost_usd == pytest.approx(expected)
    assert expected < sum(_price(c, 2.0) for c in done)  # cheaper than at the full input rate
    metrics = stats.as_metrics()
    assert metrics["cached_prompt_tokens"] == metrics["sent_cached_prompt_tokens"] == 80
    # replayed from the response cache: the call's cached tokens as reported, nothing sent, nothing paid
    with fake_server(prefix_cache=True) as srv:
        again, stats2 = _ask(_endpoint(srv, **PRICES), fast_settings(tmp_path), prompts)
        assert srv.requests_count() == 0
    assert [c.cached_tokens for c in again] == [0, 80, 0] and all(c.cached for c in again)
    m2 = stats2.as_metrics()
    assert (m2["cached_prompt_tokens"], m2["sent_cached_prompt_tokens"], m2["cost_usd"]) == (80, 0, 0.0)


def test_without_usage_details_or_a_cached_price_every_prompt_token_costs_the_input_price(fake_server, tmp_path):
    with fake_server() as srv:  # no prefix cache: usage carries no prompt_tokens_details
        done, stats = _ask(_endpoint(srv, **PRICES), fast_settings(tmp_path / "a"), [BASE, BASE + " more"])
        assert "prompt_tokens_details" not in srv.log[0] and srv.log[1]["cached_tokens"] == 0
    assert [c.cached_tokens for c in done] == [0, 0]
    assert stats.cost_usd == pytest.approx(sum(_price(c, 2.0) for c in done))
    assert stats.as_metrics()["cached_prompt_tokens"] == 0 and "sent_cached_prompt_tokens" in stats.as_metrics()
    # cached tokens reported, but no cached price: billed at the input price
    no_cached_price = {k: v for k, v in PRICES.items() if k != "price_cached_input_per_mtok"}
    with fake_server(prefix_cache=True) as srv:
        done, stats = _ask(_endpoint(srv, **no_cached_price), fast_settings(tmp_path / "b"), [BASE, BASE + " more"])
    assert done[1].cached_tokens == 80 and stats.cost_usd == pytest.approx(sum(_price(c, 2.0) for c in done))


def test_usage_details_are_read_from_objects_and_json_and_clamped():
    assert cached_prompt_tokens(None, 10) == 0
    assert cached_prompt_tokens({"prompt_tokens": 10}, 10) == 0
    assert cached_prompt_tokens({"prompt_tokens_details": None}, 10) == 0
    assert cached_prompt_tokens({"prompt_tokens_details": {"cached_tokens": None}}, 10) == 0
    assert cached_prompt_tokens({"prompt_tokens_details": {"cached_tokens": 4}}, 10) == 4
    assert cached_prompt_tokens({"prompt_tokens_details": {"cached_tokens": 40}}, 10) == 10
    assert cached_prompt_tokens(SimpleNamespace(prompt_tokens_details=SimpleNamespace(cached_tokens=7)), 10) == 7
    assert cached_prompt_tokens(SimpleNamespace(prompt_tokens_details=None), 10) == 0
    e = Endpoint("http://x", "m", "i", "none", price_input_per_mtok=1.0, price_output_per_mtok=2.0,
                 price_cached_input_per_mtok=0.25, batch=True, batch_discount=0.5)
    assert e.cost_usd(1000, 100, 600) == pytest.approx((400 * 1.0 + 600 * 0.25 + 100 * 2.0) / 1e6 * 0.5)
    assert e.cost_usd(1000, 0, 5000) == pytest.approx(1000 * 0.25 / 1e6 * 0.5)  # never more cached than sent


def test_the_fake_prefix_cache_rounds_like_openai(fake_server, tmp_path):
    long = " ".join(f"w{i}" for i in range(1200))  # 1,600 tokens
    with fake_server(prefix_cache=True, prefix_cache_step=128, prefix_cache_min=1024) as srv:
        done, _ = _ask(_endpoint(srv), fast_settings(tmp_path), [long, long + " x", BASE, BASE + " y"])
    # 1,600 shared tokens in steps of 128: 1,536; 80 shared tokens are under the 1,024 minimum
    assert [c.cached_tokens for c in done] == [0, 1536, 0, 0]


def test_batch_lines_carry_cached_tokens_at_the_batch_price(fake_server, tmp_path):
    from longwriter.llm import run_with_llm
    with fake_server(prefix_cache=True, batch_polls=0) as srv:
        spec = ModelSpec(provider="openai", base_url=srv.base_url, model="fake-model", batch=True, **PRICES)

        async def two_rounds(llm):
            first = await llm.complete([{"role": "user", "content": BASE}], SAMPLING)
            return first, await llm.complete([{"role": "user", "content": BASE + " more"}], SAMPLING)
        settings = fast_settings(tmp_path, batch_gather_s=0.05, batch_poll_s=0.05)
        (first, second), stats = run_with_llm(spec, settings, two_rounds)
        assert len(srv.batches) == 2
    assert (first.cached_tokens, second.cached_tokens) == (0, 80)
    assert stats.sent_cached_prompt_tokens == 80
    assert stats.cost_usd == pytest.approx((_price(first, 0.5) + _price(second, 0.5)) * 0.5)
    (first2, second2), stats2 = run_with_llm(spec, settings, two_rounds)  # replayed: the same counts
    assert second2.cached and second2.cached_tokens == 80 and stats2.cached_prompt_tokens == 80


def test_the_cached_price_is_a_checked_spec_field_outside_the_cache_identity(tmp_path):
    with pytest.raises(ValueError, match="price_cached_input_per_mtok"):
        ModelSpec(price_cached_input_per_mtok=-1)
    spec = ModelSpec(provider="openai", base_url="http://127.0.0.1:9/v1", model="m", **PRICES)
    cheaper = ModelSpec(provider="openai", base_url="http://127.0.0.1:9/v1", model="m",
                        **(PRICES | {"price_cached_input_per_mtok": 0.1}))
    settings = ClientSettings(cache_dir=str(tmp_path))
    with open_endpoint(spec, settings) as a, open_endpoint(cheaper, settings) as b:
        assert a.price_cached_input_per_mtok == 0.5 and b.price_cached_input_per_mtok == 0.1
        assert a.identity == b.identity  # a price change replays every answer already paid for
    with open_endpoint(ModelSpec(**PRICES), settings) as embedded:  # local backends bill nothing
        assert embedded.cost_usd(1000, 1000, 500) == 0.0


# --- the estimate ---------------------------------------------------------------------------------------------


def _plans(path: Path, n: int, sections: int, words: int) -> None:
    pl.DataFrame([{"instruction_id": f"i{k}", "section": s, "main_point": f"Part {s} of story {k}", "words": words,
                   "attempts": 1} for k in range(n) for s in range(1, sections + 1)]).write_parquet(path)


def test_units_and_shared_prefixes():
    assert units("two words") == 2 and units("写一篇 text") == 4 and units("") == 0
    assert shared_units("a b c d", "a b x d") == 2
    assert shared_units("a b c1", "a b c10") == 2  # a cut piece is not shared
    assert shared_units("a b\n\nc", "a b\n\nd e") == 2
    assert shared_units("a b", "a b") == 2


@pytest.mark.parametrize("case", [
    {"mode": "sequential", "history_words": None, "step": 1, "min": 0},
    {"mode": "sequential", "history_words": 100, "step": 1, "min": 0},
    {"mode": "parallel", "history_words": None, "step": 1, "min": 0},
    {"mode": "sequential", "history_words": None, "step": 32, "min": 256},
], ids=["sequential", "history_words", "parallel", "rounded"])
def test_the_estimate_matches_a_real_run_on_the_fake_server(fake_server, tmp_path, case):
    """Estimate vs a write run on the fake server (its prefix cache on, each paragraph at its budget): prompt and
    completion tokens within 1 %, cached prompt tokens within 2 %."""
    n, sections, words = 3, 6, 60
    write_instructions(tmp_path / "in.parquet", n)
    _plans(tmp_path / "plans.parquet", n, sections, words)
    with fake_server(words=words, prefix_cache=True, prefix_cache_step=case["step"],
                     prefix_cache_min=case["min"]) as srv:
        cfg = WriteConfig(mode=case["mode"], history_words=case["history_words"], generator=fake_spec(srv),
                          max_continuations=0)
        m = run_write(tmp_path / "in.parquet", tmp_path / "plans.parquet", tmp_path / "s.parquet",
                      tmp_path / "f.parquet", tmp_path / "m.json", cfg, fast_settings(tmp_path, max_concurrency=2))
    assert m["written"] == n and m["llm"]["sent_calls"] == n * sections
    est = estimate_files(tmp_path / "in.parquet", tmp_path / "plans.parquet", cfg, tokens_per_word=4 / 3,
                         min_cached_tokens=case["min"], cached_step_tokens=case["step"])[case["mode"]]
    llm = m["llm"]
    assert est["calls"] == llm["sent_calls"]
    assert est["prompt_tokens"] == pytest.approx(llm["prompt_tokens"], rel=0.01)
    assert est["completion_tokens"] == pytest.approx(llm["completion_tokens"], rel=0.01)
    assert llm["cached_prompt_tokens"] > 0
    assert est["cached_prompt_tokens"] == pytest.approx(llm["cached_prompt_tokens"], rel=0.02)
    assert json.loads((tmp_path / "m.json").read_text())["llm"]["cached_prompt_tokens"] == llm["cached_prompt_tokens"]


def test_history_words_bounds_the_quadratic_term_and_prices_follow_the_spec(tmp_path):
    prompts, langs = {"a": "Write a long story."}, {"a": "en"}
    plans = {"a": [(f"part {i}", 500) for i in range(20)]}
    spec = ModelSpec(provider="openai", base_url="http://x/v1", model="m", **PRICES)
    full = estimate(prompts, langs, plans, WriteConfig(generator=spec))
    cut = estimate(prompts, langs, plans, WriteConfig(generator=spec, history_words=2000))
    seq, par = full["sequential"], full["parallel"]
    # sequential re-sends the text: ~ n^2/2 paragraphs of prompt, most of it a cached prefix
    assert seq["prompt_tokens"] > 9 * seq["completion_tokens"] > 9 * 0.99 * par["completion_tokens"]
    assert seq["cached_share"] > 0.85 and par["prompt_tokens"] < seq["prompt_tokens"] / 10
    assert cut["sequential"]["prompt_tokens"] < seq["prompt_tokens"] / 2
    assert cut["sequential"]["cached_share"] < 0.2  # a sliding window is no shared prefix
    usd = ((seq["prompt_tokens"] - seq["cached_prompt_tokens"]) * 2.0 + seq["cached_prompt_tokens"] * 0.5
           + seq["completion_tokens"] * 8.0) / 1e6
    assert seq["usd"] == pytest.approx(usd, abs=1e-4) and seq["usd_without_prefix_cache"] > seq["usd"]
    no_prices = estimate(prompts, langs, plans, WriteConfig())
    assert no_prices["sequential"]["usd"] is None and "none" in summary(no_prices)
    assert no_prices["sequential"]["prompt_tokens"] == seq["prompt_tokens"]
    # Chinese: the stand-in history is cut by characters, as the stage cuts it
    zh = estimate(prompts, {"a": "zh"}, plans, WriteConfig(history_words=2000))
    assert zh["sequential"]["prompt_tokens"] > cut["sequential"]["prompt_tokens"]
    assert math.isclose(zh["sequential"]["completion_tokens"], seq["completion_tokens"])


def test_write_estimate_cli_writes_json_and_calls_no_model(tmp_path):
    write_instructions(tmp_path / "in.parquet", 2)
    _plans(tmp_path / "plans.parquet", 2, 4, 50)
    (tmp_path / "params.yaml").write_text("write:\n  history_words: 120\n")
    base = [sys.executable, "-m", "stages.write", "--params", str(tmp_path / "params.yaml"),
            "--instructions", str(tmp_path / "in.parquet"), "--plans", str(tmp_path / "plans.parquet")]
    out = subprocess.run([*base, "--estimate", "--estimate-json", str(tmp_path / "e.json")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["history_words"] == 120 and result["sequential"]["calls"] == 8 and "sequential *" in out.stdout
    assert result["sequential"]["usd"] is None  # the embedded default has no prices
    to_stdout = subprocess.run([*base, "--estimate", "--estimate-cache-min", "0", "--estimate-cache-step", "1"],
                               cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert to_stdout.returncode == 0 and json.loads(to_stdout.stdout)["sequential"]["cached_prompt_tokens"] > 0
    assert "write estimate" in to_stdout.stderr
    missing = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "--output" in missing.stderr
    instructions, plans = read_inputs(tmp_path / "in.parquet", tmp_path / "plans.parquet")
    assert instructions.height == 2 and len(plans["i0"]) == 4


def test_history_words_keeps_a_spaced_history_within_the_limit_whole_and_cuts_chinese_by_characters():
    from longwriter.agentwrite.write import _tail_words
    english = " ".join(["lighthouse"] * 150)  # 150 words, 1,649 characters: within 200 words
    assert _tail_words(english, 200) == english
    assert _tail_words(english, 100) == "[...] " + " ".join(["lighthouse"] * 100)
    chinese = "河流的历史很长。" * 40  # 320 characters, no spaces
    assert _tail_words(chinese, 100) == "[...]" + chinese[-200:]
    assert _tail_words(chinese, 200) == chinese and _tail_words(english, None) == english
