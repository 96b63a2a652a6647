"""The deterministic part of select: pools, normalisation, dedup, language, stated lengths, and the
selector's choice logic against a scripted server."""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path

import polars as pl
import pytest
from wildchat import conversation, write_shard

from longwriter.agentwrite.dedup import (
    _BLANKS,
    _plain_classes,
    first_distinct,
    first_of_each_key,
    normalised_prompts,
    unique_ids,
)
from longwriter.agentwrite.pool import _certainly_valid, load_pools
from longwriter.agentwrite.select import SelectConfig, prefilter
from longwriter.agentwrite.selector import choose
from longwriter.agentwrite.stated_length import _EN_RUN, _ZH_RUN, required_words, required_words_in
from longwriter.errors import InputError
from longwriter.language import language_expr, languages
from longwriter.llm import ClientSettings, Endpoint, LLMClient, ResponseCache
from longwriter.schemas import Pool, validate

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
    cands, counts, _ = prefilter(load_pools([str(pool)]), SelectConfig(min_prompt_chars=5, max_required_words=5000))
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


def test_a_wildchat_shard_is_a_pool_of_first_user_turns(tmp_path):
    shard = write_shard(tmp_path / "wildchat" / "train-00000-of-00002.parquet", [
        ("h1", conversation("Write a 3000-word history of the printing press.", "Now make it funnier.")),
        ("h2", conversation("写一篇五千字的小说")),
        ("h3", conversation("   ", "Write a long report on tides.")),  # blank first user turn: not an instruction
    ])
    dropped: list[dict] = []
    df = load_pools([str(shard)], dropped)
    assert [(d["instruction_id"], d["section"], d["reason"]) for d in dropped] == [("h3", 3, "no_user_turn")]
    assert df.to_dicts() == [
        {"id": "h1", "prompt": "Write a 3000-word history of the printing press.",
         "source": "train-00000-of-00002", "required_words": None},
        {"id": "h2", "prompt": "写一篇五千字的小说", "source": "train-00000-of-00002", "required_words": None},
    ]
    # a directory of shards is one pool, read in name order, named after the directory
    write_shard(tmp_path / "wildchat" / "train-00001-of-00002.parquet", [("h4", conversation("Write a guide."))])
    df = load_pools([str(tmp_path / "wildchat")])
    assert df["id"].to_list() == ["h1", "h2", "h4"] and set(df["source"]) == {"wildchat"}
    cands, counts, _ = prefilter(df, SelectConfig(min_prompt_chars=5, max_required_words=None))
    assert counts["read"] == 3 and dict(zip(cands["id"], cands["required_words"], strict=True)) == {
        "h1": 3000, "h2": 5000, "h4": None}


def test_chat_pools_with_messages_and_pools_without_prompts(tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "Write an essay on salt."}]}) + "\n")
    df = load_pools([str(chat)])
    assert df["prompt"].to_list() == ["Write an essay on salt."] and len(df["id"][0]) == 12
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "Write an essay on salt."}) + "\n")
    with pytest.raises(InputError, match=r"bad.jsonl: missing column 'prompt', and no chat column"):
        load_pools([str(bad)])
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"conversation": ["Write an essay on salt."]}) + "\n")
    with pytest.raises(InputError, match=r"odd.jsonl: column 'conversation': expected a list of \{role, content\}"):
        load_pools([str(odd)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: no pool files"):
        load_pools([str(tmp_path / "empty")])


def test_default_pool_is_valid():
    df = load_pools([str(ROOT / "data/pool/instructions.jsonl")])
    cands, counts, _ = prefilter(df, SelectConfig())
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


# --- the vectorised prefilter against the plain definitions it replaced -------------------------------------

TRICKY = [
    "Write a 2,000-word essay on rivers.", "Write an essay of about 1500 words", "A 3k words report", "3K WORDS",
    "3 K-Words", "2000 \u212awords", "请写一篇不少于3000字的文章", "写一篇五千字的小说", "约1.5万字的报告",
    "写一篇两千字的散文", "一万五千字", "十字路口", "数字", "3 字", "2000 字", "2000 万 字",
    "Give me 3 slogans of 5 words each", "What is 17 * 23?", "Write 800 words, then a 1200-word appendix",
    "2000 words\u200d", "2000 wordś", "2000 words\u0301", "2000 wordsa", "2000 words_", "2000 woRDs",
    "2000 \u017fwords", "2000wordS", "2000\x1cwords", "2000\x85words", "٢٠٠٠ words", "２０００字",
    "１，５００ ｗｏｒｄｓ", "1,,000 words", "1.5.3 words", "12.5k words", "0.5 words", "word 2000 words",
    "words2000 words", "5-word", "5 - words", "10 -  word", "2000 kwords", "2000 k words", "1" * 15 + " words",
    "Ｗｒｉｔｅ　ａ　２０００－ｗｏｒｄ　ｅｓｓａｙ", "e\u0301", "\u00a8", "x \u00a8", "ﬁne", "①②", "㎞", "Ⅻ", "ｶﾞｷﾞ",
    "\u1100\u1161\u11a8", "İstanbul", "ISTANBUL", "ΣΑΣ ΟΔΟΣ", "σας οδος", "Straße", "STRASSE", "\u212a", "\u212b",
    "ǅemal", "Ꭰ", "ა", "😀 emoji", "𠀀𠀁", "豈", "⼀", "\u3000padded\u3000", "\ttabbed\n", "non\u00a0breaking",
    "line\u2028sep", "next\x85line", "a  b", "A\tB", "a b", "用Python写", "用 Python 写", "Привет world", "日本語です",
    "café latte", "naïve approach", "12345", "___", "abc_def", "abc1", "中文abc中文", "中abc文def中", "x中abc",
    "Привет, напиши эссе", "日本語で書いてください", "مرحبا بالعالم", "안녕하세요 world", "สวัสดี", "Γειά σου",
    "שלום", "नमस्ते", "Write an essay about Python", "写一篇关于长江的文章", "ＡＢＣ ａｂｃ", "，。！？", "\u3000",
    "x\u3000\u3000y",
]


def _tricky_prompts(n: int, seed: int = 0) -> list[str]:
    """Prompts of 1-4 tricky fragments with assorted separators, case and padding, some repeated."""
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(n):
        if out and rng.random() < 0.15:
            p = rng.choice(out)
        else:
            p = "".join(rng.choice(TRICKY) + rng.choice(["", " ", "  ", "\n", "，", "\u3000", "\t"])
                        for _ in range(rng.randint(1, 4)))
        p = rng.choice([p, p, p.upper(), p.lower(), p.title(), f"  {p}\n", f"\u3000{p}"])
        out.append(p if p.strip() else "x" + p)
    return out


def _reference_language(col: str = "prompt") -> pl.Expr:
    cjk = pl.col(col).str.count_matches(r"[\u4e00-\u9fff]")
    latin = pl.col(col).str.count_matches(r"\b[a-zA-Z]+\b")
    other = pl.col(col).str.count_matches(
        r"[\u3040-\u30ff\uac00-\ud7af\u0400-\u04ff\u0600-\u06ff\u0900-\u097f\u0e00-\u0e7f\u0370-\u03ff\u0590-\u05ff]")
    return (pl.when((other > 0) & (other * 2 >= cjk + latin)).then(pl.lit("other"))
            .when(cjk >= latin).then(pl.when(cjk > 0).then(pl.lit("zh")).otherwise(pl.lit("other")))
            .when(cjk * 4 >= latin).then(pl.lit("zh"))
            .otherwise(pl.lit("en")))


def _reference_prefilter(pool: pl.DataFrame, cfg: SelectConfig) -> tuple[pl.DataFrame, dict]:
    """prefilter as first written: one Polars expression per step over every row."""
    counts: dict = {"read": pool.height}
    df = pool.with_columns(
        pl.when(pl.col("id").is_duplicated() & (pl.int_range(pl.len()).over("id") > 0))
        .then(pl.col("id") + "-" + pl.int_range(pl.len()).over("id").cast(pl.Utf8))
        .otherwise(pl.col("id")).alias("id"))
    df = df.with_columns(pl.col("prompt").str.normalize("NFKC").str.strip_chars())
    df = df.with_columns(pl.col("prompt").str.to_lowercase().str.replace_all(r"\s+", " ").alias("_key"))
    df = df.unique(subset="_key", keep="first", maintain_order=True)
    counts["after_dedup"] = df.height
    df = df.with_columns(_reference_language("prompt").alias("lang"), pl.col("prompt").str.len_chars().alias("_chars"))
    counts["by_lang"] = {lang: int(n) for lang, n in df.group_by("lang").len().sort("lang").iter_rows()}
    df = df.filter(pl.col("lang").is_in(["zh", "en"]))
    counts["after_lang"] = df.height
    df = df.filter(pl.col("_chars").is_between(cfg.min_prompt_chars, cfg.max_prompt_chars))
    counts["after_length"] = df.height
    stated = pl.col("prompt").map_elements(required_words_in, return_dtype=pl.Int64)
    df = df.with_columns(pl.coalesce(pl.col("required_words"), stated).alias("required_words"))
    if cfg.max_required_words is not None:
        df = df.filter(pl.col("required_words").is_null() | (pl.col("required_words") <= cfg.max_required_words))
    counts["after_required_words"] = df.height
    return df.drop("_key", "_chars"), counts


def test_required_words_vectorised_agrees_with_python():
    prompts = TRICKY + _tricky_prompts(3000, seed=1)
    got = required_words(pl.Series(prompts)).to_list()
    assert got == [required_words_in(p) for p in prompts]
    assert sum(v is not None for v in got) > 300  # the list does exercise stated lengths


def test_steps_agree_with_their_plain_definitions():
    s = pl.Series("prompt", TRICKY + _tricky_prompts(4000, seed=2))
    norm = s.str.normalize("NFKC").str.strip_chars()
    assert normalised_prompts(s).equals(norm)
    key = norm.str.to_lowercase().str.replace_all(r"\s+", " ")
    assert first_of_each_key(norm).to_list() == key.is_first_distinct().to_list()
    want = pl.DataFrame({"p": norm}).select(_reference_language("p").alias("lang"))["lang"].to_list()
    assert languages(norm).to_list() == want
    assert pl.DataFrame({"prompt": norm}).select(language_expr().alias("lang"))["lang"].to_list() == want


@pytest.mark.parametrize("seed", [0, 3])
def test_prefilter_agrees_with_reference(seed):
    prompts = _tricky_prompts(5000, seed=seed)
    rng = random.Random(seed)
    pool = pl.DataFrame({
        "id": [f"p{i % 4500}" for i in range(len(prompts))],  # some ids reused: re-keyed
        "prompt": prompts,
        "source": ["t"] * len(prompts),
        "required_words": [rng.choice([None, None, None, 1500]) for _ in prompts],
    }, schema_overrides={"required_words": pl.Int64})
    cfg = SelectConfig(min_prompt_chars=5, max_prompt_chars=60, max_required_words=5000)
    got, counts, dropped = prefilter(pool, cfg)
    want, want_counts = _reference_prefilter(pool, cfg)
    assert counts == want_counts
    assert got.equals(want)
    # every pool row is a candidate or one failures row, never both, never neither
    ids = unique_ids(pool["id"])
    assert ids.n_unique() == pool.height and dropped["instruction_id"].n_unique() == dropped.height
    assert set(got["id"]).isdisjoint(dropped["instruction_id"])
    assert set(got["id"]) | set(dropped["instruction_id"]) == set(ids)
    by_reason = dict(dropped["reason"].value_counts().iter_rows())
    assert by_reason["duplicate"] == counts["read"] - counts["after_dedup"]
    assert by_reason["other_language"] == counts["after_dedup"] - counts["after_lang"]
    assert by_reason["prompt_length"] == counts["after_lang"] - counts["after_length"]
    assert counts["after_dedup"] < counts["read"] and counts["after_length"] < counts["after_lang"]


def test_ids_reused_across_pools_are_rekeyed(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"id": "x", "prompt": "Write a long story about a fox."}\n'
                 '{"id": "y", "prompt": "Write a long story about a bear."}\n', encoding="utf-8")
    b.write_text('{"id": "x", "prompt": "Write a long story about a wolf."}\n', encoding="utf-8")
    cands, _, _ = prefilter(load_pools([str(a), str(b)]), SelectConfig())
    assert cands["id"].to_list() == ["x", "y", "x-1"]
    assert cands["source"].to_list() == ["a", "a", "b"]


def test_first_distinct_survives_hash_collisions():
    values = pl.Series(["a", "b", "a", "c", "b", "d"])
    collide = pl.Series([7, 7, 7, 7, 7, 9], dtype=pl.UInt64)  # every hash equal but the last
    assert first_distinct(collide, values.filter).to_list() == values.is_first_distinct().to_list()
    assert first_distinct(values.hash(), values.filter).to_list() == values.is_first_distinct().to_list()


@pytest.mark.parametrize("frame", [
    {"prompt": ["a", "b"]},
    {"id": ["a", "b"], "prompt": ["x", "y"], "source": [None, "s"], "required_words": [None, 5]},
    {"id": ["a", "a"], "prompt": ["x", "y"]},
    {"id": ["a", None], "prompt": ["x", "y"]},
    {"id": ["a", "b"], "prompt": ["x", None]},
    {"id": ["a", "b"], "prompt": ["x", " \u3000\n"]},
    {"prompt": ["x", "y"], "required_words": [0, 5]},
    {"prompt": ["x", "y"], "required_words": pl.Series([4, 5], dtype=pl.Int32)},
    {"prompt": ["x", "y"], "required_words": [None, None]},
    {"id": [1, 2], "prompt": ["x", "y"]},
    {"prompt": ["x", "y"], "source": [1, 2]},
    {"id": ["a", "b"]},
    {"prompt": [1, 2]},
])
def test_fast_pool_check_never_passes_what_pandera_rejects(frame):
    df = pl.DataFrame(frame)
    try:
        validate(df, Pool, "pool.jsonl")
        valid = True
    except InputError:
        valid = False
    fast = _certainly_valid(df, Pool)
    assert not fast or valid
    if valid and all(df[c].dtype != pl.Null for c in df.columns):
        assert fast  # the common, valid case does take the fast path


def _all_chars() -> pl.Series:
    return pl.Series([chr(cp) for cp in range(0x110000) if not 0xD800 <= cp < 0xE000])


def test_window_classes_cover_what_python_matches():
    """The Rust windows hold every character Python's length patterns can match, so no match is cut."""
    chars = _all_chars()
    en = set(chars.filter(chars.str.contains(f"(?i)^{_EN_RUN}$")).to_list())  # _EN_WINDOW is (?i)
    zh = set(chars.filter(chars.str.contains(f"^{_ZH_RUN}$")).to_list())
    py_en = re.compile(r"[\d,.\s\-kwords]", re.IGNORECASE)
    py_zh = re.compile(r"[\d.\s一二两三四五六七八九十百千万字]")
    for c in chars.to_list():
        if py_en.fullmatch(c):
            assert c in en, hex(ord(c))
        if py_zh.fullmatch(c):
            assert c in zh, hex(ord(c))


def test_plain_characters_are_left_alone_by_nfkc_and_lowercasing():
    plain, wide, narrow = _plain_classes()
    chars = _all_chars()
    chars = chars.filter(chars.str.contains(f"^[{plain}]$"))
    assert chars.len() > 30000 and "中" in chars.to_list() and "，" not in chars.to_list()
    assert chars.str.normalize("NFKC").equals(chars)
    lowered = chars.str.to_lowercase()
    assert ((lowered == chars) | chars.str.contains("^[A-Z]$")).all()
    assert pl.Series(wide).str.normalize("NFKC").to_list() == narrow


def test_a_parquet_chat_log_read_by_duckdb_matches_the_polars_reading_row_for_row(tmp_path):
    from longwriter.agentwrite.pool import first_user_turns
    from longwriter.files import read_table

    def turns(i: int) -> list[dict]:
        if i % 11 == 0:  # a system turn first: the first *user* turn is the instruction
            return [{**conversation("x")[0], "role": "system", "content": "Be brief."}, *conversation(f"Essay {i}")]
        if i % 13 == 0:
            return conversation(" \n ")  # no usable user turn: dropped, recorded with its row
        if i % 17 == 0:
            return [conversation("x")[1]]  # a reply only
        return conversation(f"Write essay {i}.", "And another.")

    rows = [(f"h{i}", turns(i)) for i in range(1, 3001)]
    shard = write_shard(tmp_path / "big.parquet", rows)
    df = pl.read_parquet(shard)
    df.write_parquet(shard, row_group_size=64)  # many row groups, scanned on several threads
    dropped: list[dict] = []
    by_duckdb = load_pools([str(shard)], dropped)
    polars_dropped: list[dict] = []
    by_polars = first_user_turns(read_table(shard, ["conversation_hash", "conversation"]), shard, polars_dropped)
    assert by_duckdb["prompt"].to_list() == by_polars["prompt"].to_list()
    assert by_duckdb["id"].to_list() == by_polars["id"].to_list()
    assert dropped == polars_dropped and len(dropped) == len([i for i in range(1, 3001)
                                                              if i % 11 and (i % 13 == 0 or i % 17 == 0)])
    assert by_duckdb.filter(pl.col("id") == "h22")["prompt"].item() == "Essay 22"


def test_large_parquet_pool_is_read_in_parallel_slices(tmp_path, monkeypatch):
    import longwriter.files as files

    prompts = _tricky_prompts(1000, seed=4)
    path = tmp_path / "pool.parquet"
    pl.DataFrame({"id": [f"r{i}" for i in range(len(prompts))], "prompt": prompts}).write_parquet(
        path, row_group_size=128)
    monkeypatch.setattr(files, "_ROWS_PER_READER", 100)
    monkeypatch.setattr(files.pl, "thread_pool_size", lambda: 3)
    df = load_pools([str(path)])
    assert df["id"].to_list() == [f"r{i}" for i in range(len(prompts))] and df["prompt"].to_list() == prompts
    monkeypatch.setattr(files, "_ROWS_PER_READER", 10**9)
    assert load_pools([str(path)]).equals(df)


@pytest.mark.parametrize("prompt", [
    "中文 a b c d e f g h", "中文 a b c d e f g h i", "中文，“引号”《书名》", "中" + "，" * 3, "中" + "，" * 2,
    "Привет мир abc def ghi", "Привет abc def ghi jkl", "日本 ab", "かな漢字漢字漢字", "かなかな漢字 abc",
    "café", "é", "naïve café au lait", "中abc文def中", "用 Python 写 code", "😀", "😀 smile", "中😀😀😀", "Ωmega",
])
def test_language_borderlines_agree_with_counting_everything(prompt):
    want = pl.DataFrame({"p": [prompt]}).select(_reference_language("p").alias("lang"))["lang"].to_list()
    assert languages(pl.Series([prompt])).to_list() == want


def test_blanks_are_the_regex_whitespace_but_the_space():

    chars = _all_chars()
    assert sorted(chars.filter(chars.str.contains(r"^\s$")).to_list()) == sorted([" ", *_BLANKS])


def test_required_words_on_the_default_pool_and_edge_series():
    prompts = load_pools([str(ROOT / "data/pool/instructions.jsonl")])["prompt"]
    extra = pl.Series(["约1.5万字的报告", "A 3k words report", "写一篇两千字的散文", "no numbers here", "2,000-word"])
    for series in (pl.concat([prompts, extra]), pl.Series(["no length"]), pl.Series([], dtype=pl.Utf8)):
        assert required_words(series).to_list() == [required_words_in(p) for p in series.to_list()]


def test_every_candidate_not_chosen_gets_one_row_with_its_reason():
    from longwriter.agentwrite.select import verdict_failures
    from longwriter.agentwrite.selector import Verdict
    cands = pl.DataFrame({"id": ["a", "b", "c", "d", "e", "f"], "lang": ["en"] * 6,
                          "required_words": [None, None, 800, None, None, None]},
                         schema_overrides={"required_words": pl.Int64})
    verdicts = [Verdict("a", True, 2000, 1), Verdict("b", False, 0, 1), Verdict("c", True, 3000, 1),
                Verdict("d", None, None, 3, "bad JSON", reason="unusable_output"), Verdict("e", True, 5000, 1)]
    rows = verdict_failures(cands, {"a"}, verdicts, SelectConfig(per_lang=1))
    got = {r["instruction_id"]: (r["reason"], r["error"]) for r in rows}
    assert len(rows) == len(got) == 5 and "a" not in got
    assert got["b"][0] == "not_long" and got["d"][0] == "unusable_output"
    assert got["c"] == ("not_long", "800 words (stated) < min_estimated_words 1200")  # stated length rules
    assert got["e"][0] == "left_out" and "accepted after select.per_lang 1" in got["e"][1]
    assert got["f"][0] == "left_out" and got["f"][1].startswith("not judged")
