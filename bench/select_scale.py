"""select at pool scale: the pre-LLM part of ``select`` on a generated WildChat-shaped pool.

    python bench/select_scale.py [--rows 1000000] [--seed 0] [--layout prompts|wildchat]

Generates a deterministic Parquet pool (columns id, prompt, source) in a temporary directory: 50 % English,
35 % Chinese and 15 % other languages (Russian, Japanese, Korean and Arabic, which ``select`` calls "other";
Spanish and German, which it calls "en"), prompt bodies of 1 to 20,000 characters, log-normal with median 200
and sigma 1.3, 5 % exact duplicates and 5 % near duplicates (case and whitespace changed) of earlier rows, and
about 15 % of prompts stating a length ("Write a 2000-word essay ...", "写一篇3000字的文章"). A body is a slice
of a 2-million-character corpus per language, drawn word by word (character by character for Chinese,
Japanese and Korean) with the frequencies of a few sentences, newlines included, so the Parquet file
compresses about as much as real text; a ticket number keeps originals distinct. Generating a million rows
takes about ten seconds. ``--layout wildchat`` writes the same prompts as WildChat-1M's shards hold them: one
``conversation`` per row (the prompt as the user turn, then an assistant reply as long as another row's prompt)
keyed by ``conversation_hash``, so the run also measures taking the first user turn out of each conversation.

Then, in a fresh child process (so its peak RSS is that of the select work alone) on ``--threads`` cores and
Polars threads, it times ``prefilter(load_pools([pool]), SelectConfig())``: reading, Pool validation, NFKC
normalisation, deduplication, language detection, length filters and stated-length extraction. It prints
rows/s, seconds and peak RSS of each run against the issue's targets (10 s and 2 GiB on 2 cores; measured,
never asserted) and writes the figures to ``--out`` as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import polars as pl

TARGET_SECONDS = 10.0
TARGET_RSS_MIB = 2048.0

# sentence fragments per language: the corpora are drawn from their words (characters), a prompt is a slice of one
FRAGMENTS: dict[str, list[str]] = {
    "en": [
        "Write a detailed essay about the history of the Roman Empire and its fall. ",
        "Can you help me debug this Python function? It raises a KeyError when the dict is empty. ",
        "def load(path):\n    with open(path) as f:\n        return json.load(f)\n",
        "Explain the difference between TCP and UDP in simple terms. ",
        "I am writing a fantasy novel where a young mage discovers a hidden library beneath the city. ",
        "Please summarize the following article in three bullet points. ",
        "The quarterly report shows revenue grew by 12% while operating costs stayed flat. ",
        "What are the best practices for securing a REST API in production? ",
        "Translate the next paragraph into formal business English. ",
        "She walked along the river at dawn, counting the boats that drifted past the old mill. ",
        "Give me a list of 10 creative names for a coffee shop near the university. ",
        "Act as a career coach and review my resume for a data analyst position. ",
        "Continue the story: the lighthouse keeper heard a knock on the door at midnight. ",
        "How do I configure nginx as a reverse proxy for a Node.js application? ",
        "SELECT name, COUNT(*) FROM orders GROUP BY name HAVING COUNT(*) > 5; ",
        "Describe the water cycle for a fifth-grade science class. ",
        "Rewrite this email so it sounds more polite but still firm about the deadline. ",
        "In the year 2150, humanity had spread across the outer planets, but Earth remained silent. ",
        "Compare the economic policies of Keynes and Hayek, with examples from the twentieth century. ",
        "Generate a weekly meal plan for a vegetarian athlete training for a marathon. ",
    ],
    "zh": [
        "请帮我写一篇关于人工智能发展历史的文章，要求内容详实，结构清晰。",
        "我正在准备考研，能否给我制定一个为期三个月的复习计划？",
        "解释一下量子计算的基本原理，用通俗易懂的语言。",
        "写一个关于江南水乡的故事，主人公是一位年轻的船夫。",
        "以下代码有什么问题：for i in range(10): print(i",
        "请将下面这段话翻译成英文：春眠不觉晓，处处闻啼鸟。",
        "公司今年第三季度的销售额同比增长了百分之十五，但利润率有所下降。",
        "如何提高团队的沟通效率？请给出具体可行的建议！",
        "长江是中国最长的河流，全长约六千三百公里，流经十一个省级行政区。",
        "帮我润色一下这封求职信，使它更加专业、得体。",
        "分析《红楼梦》中林黛玉的人物形象及其悲剧意义：",
        "请用Python实现一个快速排序算法，并说明其时间复杂度？",
        "夜深了，城市的灯光一盏盏熄灭，只有街角的便利店还亮着。",
        "列出十个适合周末带孩子去的北京景点，并简单介绍。",
        "什么是通货膨胀？它对普通人的生活有哪些影响？",
    ],
    "ru": ["Напиши подробное эссе о русской литературе девятнадцатого века. ",
           "Как настроить сервер на Ubuntu для веб-приложения? ",
           "Расскажи историю о старом доме на краю деревни. "],
    "ja": ["あなたはプロのライターです。ブログの記事をかいてください。",
           "このぶんしょうをわかりやすくまとめてください。",
           "むかしむかし、あるところにおじいさんとおばあさんがすんでいました。"],
    "ko": ["한국의 전통 음식에 대해 자세히 설명해 주세요. ",
           "이 코드를 더 효율적으로 만드는 방법을 알려주세요. ",
           "서울에서 가볼 만한 곳을 추천해 주세요. "],
    "ar": ["اكتب مقالا عن تاريخ الحضارة الإسلامية. ",
           "كيف يمكنني تحسين مهاراتي في الكتابة؟ ",
           "اشرح لي مفهوم الذكاء الاصطناعي ببساطة. "],
    "es": ["Escribe un ensayo sobre la historia de España en el siglo veinte. ",
           "¿Cuál es la mejor manera de aprender a programar? "],
    "de": ["Schreibe einen ausführlichen Aufsatz über die Geschichte Berlins. ",
           "Wie funktioniert ein Elektromotor? Erkläre es einfach. "],
}
LANG_SHARES = {"en": 0.50, "zh": 0.35, "ru": 0.04, "ja": 0.03, "ko": 0.03, "ar": 0.02, "es": 0.02, "de": 0.01}
WORDS = [300, 500, 800, 1000, 1500, 2000, 2500, 3000, 5000, 8000, 10000, 20000]
LENGTH_TEMPLATES = {
    "en": ["Write a {n}-word essay about the following. ", "Write an essay of about {n} words: ",
           "I need a {k}k words report on this topic. ", "In at least {c} words, answer: "],
    "zh": ["写一篇{n}字的文章：", "请写一篇不少于{n}字的文章，", "写一篇{zh}字的小说，", "约{n}字："],
}
_ZH_NUM = {300: "三百", 500: "五百", 800: "八百", 1000: "一千", 1500: "一千五百", 2000: "两千", 2500: "两千五百",
           3000: "三千", 5000: "五千", 8000: "八千", 10000: "一万", 20000: "两万"}
STATED_SHARE = 0.15
# corpus characters per language: far more than a compressor's window, so the Parquet file compresses about as
# much as real text does (slices of a short corpus would compress a hundredfold)
CORPUS_CHARS = 2_000_000
MAX_CHARS = 20_000
CHAR_LANGS = {"zh": (0x4E00, 0x9FA5), "ja": (0x3041, 0x3096), "ko": (0xAC00, 0xD7A3)}  # and their extra characters
NEWLINE_SHARE = 0.02


def _corpus(lang: str, rng: np.random.Generator) -> str:
    """Text drawn token by token, with the frequencies of the fragments: words (and blanks, and now and then a
    newline) for most languages, characters for Chinese, Japanese and Korean, which also get a tenth of their
    characters from the rest of their script."""
    text = "".join(FRAGMENTS[lang])
    units = list(text) if lang in CHAR_LANGS else text.split()
    vocab, freq = np.unique(np.array(units, dtype=object), return_counts=True)
    p = freq / freq.sum()
    if lang in CHAR_LANGS:
        lo, hi = CHAR_LANGS[lang]
        extra = np.array([chr(c) for c in range(lo, hi + 1)], dtype=object)
        vocab, p = np.concatenate([vocab, extra]), np.concatenate([0.9 * p, np.full(len(extra), 0.1 / len(extra))])
    vocab, p = np.append(vocab, "\n"), np.append(p * (1 - NEWLINE_SHARE), NEWLINE_SHARE)
    mean = float(sum(len(v) * q for v, q in zip(vocab, p, strict=True))) + (0 if lang in CHAR_LANGS else 1)
    tokens = vocab[rng.choice(len(vocab), size=int((CORPUS_CHARS + MAX_CHARS) / mean) + 1, p=p)]
    return ("" if lang in CHAR_LANGS else " ").join(tokens.tolist())


def _length_prefixes() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for lang, templates in LENGTH_TEMPLATES.items():
        out[lang] = [t.format(n=n, k=f"{n / 1000:g}", c=f"{n:,}", zh=_ZH_NUM[n]) for t in templates for n in WORDS]
    return out


def _slices(data: bytes, starts: np.ndarray, ends: np.ndarray) -> pl.Series:
    """Strings data[starts[i]:ends[i]] (UTF-8 bytes cut on character boundaries) as one Arrow string array.

    One bytes slice per row joined by memcpy: a million rows take about a second.
    """
    import pyarrow as pa

    blob = b"".join([data[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)])
    offsets = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
    return pl.from_arrow(pa.LargeStringArray.from_buffers(len(starts), pa.py_buffer(offsets), pa.py_buffer(blob)))


def generate_pool(rows: int, seed: int) -> pl.DataFrame:
    """A WildChat-shaped pool of ``rows`` prompts (deterministic in ``seed``); vectorised, a few seconds."""
    rng = np.random.default_rng(seed)
    langs = list(LANG_SHARES)
    kind = rng.choice(3, size=rows, p=[0.90, 0.05, 0.05])  # 0 original, 1 exact duplicate, 2 near duplicate
    kind[0] = 0
    original = np.flatnonzero(kind == 0)
    # a duplicate copies a uniformly chosen original that comes before it
    before = np.cumsum(kind == 0) - (kind == 0)  # originals strictly before each row
    pick = np.floor(rng.random(rows) * np.maximum(before, 1)).astype(np.int64)
    source_row = np.where(kind == 0, np.arange(rows), original[np.minimum(pick, len(original) - 1)])

    lang = rng.choice(len(langs), size=rows, p=[LANG_SHARES[x] for x in langs])
    length = np.clip(np.rint(rng.lognormal(np.log(200), 1.3, size=rows)), 1, MAX_CHARS).astype(np.int64)
    start = rng.random(rows)
    stated = rng.random(rows) < STATED_SHARE / (LANG_SHARES["en"] + LANG_SHARES["zh"])
    prefixes = _length_prefixes()

    corpora = [_corpus(name, rng) for name in langs]
    sizes = np.array([len(c) for c in corpora])
    base = np.cumsum([0, *sizes])[:-1]
    text = "".join(corpora)
    data = text.encode("utf-8")
    # byte offset of every character of the joined corpora (and of its end)
    char_bytes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    widths = 1 + (char_bytes >= 0x80) + (char_bytes >= 0x800) + (char_bytes >= 0x10000)
    byte_at = np.concatenate([[0], np.cumsum(widths)])
    start_char = base[lang] + (start * (sizes[lang] - MAX_CHARS)).astype(np.int64)
    prompts = _slices(data, byte_at[start_char], byte_at[start_char + length]).str.strip_chars()
    for name, choices in prefixes.items():
        rows_of = (lang == langs.index(name)) & stated
        table = pl.Series(choices)
        prefix = table.gather(rng.integers(0, len(choices), size=rows)).zip_with(
            pl.Series(rows_of), pl.Series([""], dtype=pl.Utf8).gather(np.zeros(rows, dtype=np.int64)))
        prompts = pl.select(pl.concat_str(prefix, prompts)).to_series()
    # a ticket number keeps originals distinct (short slices of the corpora repeat), so the duplicates are the
    # 10 % made below; digits count for no language and state no length
    tickets = pl.Series(rng.integers(0, 10**9, size=rows)).cast(pl.Utf8)
    prompts = pl.select(pl.concat_str(prompts, pl.lit(" #"), tickets)).to_series()

    copies = prompts.gather(source_row)
    near_rows = np.flatnonzero(kind == 2)
    case = rng.integers(0, 3, size=len(near_rows))  # near duplicates: upper, lower or title case, more blanks
    changed = pl.DataFrame({"p": copies.gather(near_rows), "case": case}).select(
        pl.when(pl.col("case") == 0).then(pl.lit("  ") + pl.col("p").str.to_uppercase().str.replace_all(" ", "  "))
        .when(pl.col("case") == 1).then(pl.col("p").str.to_lowercase() + pl.lit("\n"))
        .otherwise(pl.col("p").str.replace_all(" ", " \t ", literal=True).str.to_titlecase()))
    copies = copies.scatter(near_rows, changed.to_series())
    return pl.DataFrame({
        "id": pl.select(pl.format("wc-{}", pl.int_range(rows, dtype=pl.Int64))).to_series(),
        "prompt": copies,
        "source": pl.Series(["wildchat"], dtype=pl.Utf8).gather(np.zeros(rows, dtype=np.int64)),
    })


def as_wildchat(pool: pl.DataFrame) -> pl.DataFrame:
    """``pool`` in WildChat-1M's layout: conversation_hash, a user turn and an assistant reply, turn, language."""
    reply = pool["prompt"].shift(1, fill_value="Sure.")
    return pool.select(
        pl.col("id").alias("conversation_hash"),
        pl.concat_list(pl.struct(pl.lit("user").alias("role"), pl.col("prompt").alias("content")),
                       pl.struct(pl.lit("assistant").alias("role"), reply.alias("content"))).alias("conversation"),
        pl.lit(1, dtype=pl.Int64).alias("turn"),
        pl.lit("English").alias("language"),
    )


CHILD = r"""
import json, os, sys, time
import polars as pl
from longwriter.agentwrite.pool import load_pools
from longwriter.agentwrite.select import SelectConfig, prefilter

def rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
started = time.perf_counter()
base = rss("VmRSS")
cands, counts, _ = prefilter(load_pools([sys.argv[1]]), SelectConfig())
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "peak_rss_mib": rss("VmHWM"), "baseline_rss_mib": base,
                  "candidates": cands.height, "counts": counts, "threads": pl.thread_pool_size()}))
"""


def measure(path: Path, threads: int) -> dict:
    """Run load_pools + prefilter on ``path`` in a fresh interpreter; its timings and peak RSS."""
    env = dict(os.environ, POLARS_MAX_THREADS=str(threads))
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cores = sorted(os.sched_getaffinity(0))[:threads]
    done = subprocess.run([sys.executable, "-c", CHILD, str(path)], env=env, capture_output=True, text=True,
                          check=False, cwd=root, preexec_fn=lambda: os.sched_setaffinity(0, cores))
    if done.returncode != 0:
        raise click.ClickException(f"child failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@click.command(help=__doc__)
@click.option("--rows", default=1_000_000, show_default=True, help="Rows in the generated pool.")
@click.option("--seed", default=0, show_default=True, help="Seed of the generated pool.")
@click.option("--threads", default=2, show_default=True,
              help="Cores the measured child may run on, and its POLARS_MAX_THREADS.")
@click.option("--repeat", default=2, show_default=True,
              help="Measured runs, each in a fresh child; targets are judged on the slowest run and highest peak.")
@click.option("--layout", type=click.Choice(["prompts", "wildchat"]), default="prompts", show_default=True,
              help="prompts: id, prompt, source columns; wildchat: WildChat-1M's conversation layout.")
@click.option("--out", default=None, help="Results JSON  [default: bench/results/select_scale[_wildchat].json]")
def main(rows: int, seed: int, threads: int, repeat: int, layout: str, out: str | None) -> None:
    out = out or f"bench/results/select_scale{'' if layout == 'prompts' else '_' + layout}.json"
    with tempfile.TemporaryDirectory(prefix="select-scale-") as tmp:
        path = Path(tmp) / "wildchat.parquet"
        started = time.perf_counter()
        pool = generate_pool(rows, seed)
        (as_wildchat(pool) if layout == "wildchat" else pool).write_parquet(path)
        generated = time.perf_counter() - started
        chars = pool["prompt"].str.len_chars()
        shape = {"rows": rows, "layout": layout, "generate_seconds": round(generated, 2),
                 "parquet_mib": round(path.stat().st_size / 2**20, 1),
                 "text_mib": round(pool["prompt"].str.len_bytes().sum() / 2**20, 1),
                 "chars_median": int(chars.median()), "chars_mean": round(chars.mean(), 1),
                 "chars_max": int(chars.max()), "chars_min": int(chars.min())}
        del pool, chars
        runs = [measure(path, threads) for _ in range(repeat)]
    best = min(runs, key=lambda r: r["seconds"])
    slowest = max(r["seconds"] for r in runs)
    peak = max(r["peak_rss_mib"] for r in runs)
    result = {
        "pool": shape,
        "threads": best["threads"],
        "seconds": round(best["seconds"], 2),
        "rows_per_s": round(rows / best["seconds"]),
        "peak_rss_mib": round(peak, 1),
        "baseline_rss_mib": round(best["baseline_rss_mib"], 1),
        "runs": [{"seconds": round(r["seconds"], 2), "rows_per_s": round(rows / r["seconds"]),
                  "peak_rss_mib": round(r["peak_rss_mib"], 1)} for r in runs],
        "candidates": best["candidates"],
        "counts": best["counts"],
        # judged on the slowest run and the highest peak
        "targets": {"seconds": TARGET_SECONDS, "peak_rss_mib": TARGET_RSS_MIB,
                    "seconds_met": slowest <= TARGET_SECONDS, "peak_rss_met": peak <= TARGET_RSS_MIB},
    }
    click.echo(f"pool: {rows:,} rows, {shape['text_mib']} MiB of prompt text ({shape['parquet_mib']} MiB Parquet), "
               f"chars median {shape['chars_median']} mean {shape['chars_mean']} max {shape['chars_max']}; "
               f"generated in {shape['generate_seconds']} s")
    click.echo(f"{'rows':>10} {'seconds':>8} {'rows/s':>10} {'peak RSS MiB':>13} {'threads':>8}")
    for r in runs:
        click.echo(f"{rows:>10,} {r['seconds']:>8.2f} {rows / r['seconds']:>10,.0f} {r['peak_rss_mib']:>13.1f} "
                   f"{best['threads']:>8}")
    click.echo(f"counts: {json.dumps(best['counts'], ensure_ascii=False)}")
    t = result["targets"]
    click.echo(f"target <= {TARGET_SECONDS:.0f} s: {'PASS' if t['seconds_met'] else 'FAIL'} (slowest {slowest:.2f} s); "
               f"target <= {TARGET_RSS_MIB:.0f} MiB peak RSS: {'PASS' if t['peak_rss_met'] else 'FAIL'} "
               f"(highest {peak:.1f} MiB)")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
