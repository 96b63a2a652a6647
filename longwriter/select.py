"""Stage ``select``: from raw instruction pools to the instructions AgentWrite will answer.

The cheap, deterministic part (normalise, deduplicate, detect language, filter by length) runs on whole
pools with Polars. Only the survivors are shown to the selector model, in a seeded random order and only
until each language has its quota, so a million-row pool costs as many LLM calls as the quota needs.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandera.polars as pa
import polars as pl
from tqdm import tqdm

from longwriter.errors import InputError
from longwriter.files import read_table, write_json
from longwriter.llm import ClientSettings, LLMCallError, LLMClient, ModelSpec, Sampling, run_with_llm
from longwriter.llm.structured import extract_json
from longwriter.schemas import LANGS, Instructions, Pool, empty, validate, write_checked, write_failures


@dataclass(frozen=True)
class SelectConfig:
    pools: tuple[str, ...] = ("data/pool/instructions.jsonl",)
    min_prompt_chars: int = 10
    max_prompt_chars: int = 4000
    # an instruction is kept when the selector says it needs a long answer of at least this many words
    min_estimated_words: int = 800
    # instructions that state a longer required length than this are left out (laptop-sized runs)
    max_required_words: int | None = None
    per_lang: int | None = 3
    seed: int = 0
    max_attempts: int = 3
    selector: ModelSpec = field(default_factory=ModelSpec)
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.0, max_tokens=96))


JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "needs_long_answer": {"type": "boolean"},
        "estimated_words": {"type": "integer", "minimum": 0, "maximum": 100000},
    },
    "required": ["needs_long_answer", "estimated_words"],
    "additionalProperties": False,
}

JUDGE_PROMPT = """You sort user requests for a writing assistant.
Decide whether a good answer to the request below must be a long piece of writing of at least {min_words} \
words (an essay, story, report, guide, chapter...), or whether a short answer is enough (a fact, a number, \
a translation, a slogan, a short note).

Reply with a JSON object: {{"needs_long_answer": true or false, "estimated_words": the number of words a good \
answer needs}}.

Request:
<<<
{prompt}
>>>"""

# Stated lengths: "2000 words", "2,000-word", "3k words", "3000字", "三千字", "1.5万字".
_EN_LENGTH = re.compile(r"(\d[\d,]*(?:\.\d+)?)\s*(k)?\s*-?\s*words?\b", re.IGNORECASE)
_ZH_LENGTH = re.compile(r"(\d+(?:\.\d+)?|[一二两三四五六七八九十百千万]+)\s*(万)?\s*字")
_ZH_DIGITS = {"一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_ZH_UNITS = {"十": 10, "百": 100, "千": 1000, "万": 10000}

# The same patterns in Polars (Rust regex), used to find, without calling Python on every row, the short windows
# of a prompt where the patterns above can match. A window is a maximal run of the characters a match can be
# made of, so Python's findall on the windows finds exactly what it finds on the whole prompt; an English
# window also carries the character after the run, which decides the trailing \b. Python's \s is Rust's \s plus
# \x1c-\x1f; Python's \d and Rust's \d are both Unicode Nd; (?i) folds k, s, w, o, r, d alike in both.
_WS = r"\s\x1c-\x1f"
_EN_RUN = rf"[\d,.{_WS}k\-words]"
_EN_WINDOW = rf"(?i){_EN_RUN}*\d{_EN_RUN}*word{_EN_RUN}*(?s:.)?"
_ZH_NUMERALS = "一二两三四五六七八九十百千万"
_ZH_RUN = rf"[\d.{_WS}{_ZH_NUMERALS}字]"
_ZH_WINDOW = rf"{_ZH_RUN}*[\d{_ZH_NUMERALS}]{_ZH_RUN}*字{_ZH_RUN}*"


def _zh_number(text: str) -> int | None:
    total, current = 0, 0
    for ch in text:
        if ch in _ZH_DIGITS:
            current = _ZH_DIGITS[ch]
        elif ch in _ZH_UNITS:
            unit = _ZH_UNITS[ch]
            if unit == 10000:
                total = (total + current) * unit
            else:
                total += (current or 1) * unit
            current = 0
    return (total + current) or None


def _en_lengths(text: str) -> list[float]:
    found = []
    for number, k in _EN_LENGTH.findall(text):
        value = float(number.replace(",", ""))
        found.append(value * 1000 if k else value)
    return found


def _zh_lengths(text: str) -> list[float]:
    found = []
    for number, wan in _ZH_LENGTH.findall(text):
        value = float(number) if number[0].isdigit() else float(_zh_number(number) or 0)
        found.append(value * 10000 if wan else value)
    return found


def _largest_length(found: list[float]) -> int | None:
    found = [v for v in found if v >= 20]  # "5 words" is a constraint, not a length requirement
    return int(max(found)) if found else None


def required_words_in(prompt: str) -> int | None:
    """The length a prompt asks for, if it states one (the largest stated number of words or 字)."""
    return _largest_length(_en_lengths(prompt) + _zh_lengths(prompt))


def required_words_expr(col: str = "prompt") -> pl.Expr:
    """``required_words_in`` as an expression: Polars finds the windows a length statement can be in, Python
    reads only those (a million prompts cost as many Python calls as there are prompts mentioning words or 字)."""
    return pl.struct(pl.col(col).str.extract_all(_EN_WINDOW).alias("en"),
                     pl.col(col).str.extract_all(_ZH_WINDOW).alias("zh")).map_batches(
        _required_words_of_windows, return_dtype=pl.Int64)


def _required_words_of_windows(windows: pl.Series) -> pl.Series:
    en, zh = windows.struct.field("en"), windows.struct.field("zh")
    hits = ((en.list.len() > 0) | (zh.list.len() > 0)).fill_null(False)
    rows = hits.arg_true()
    en_lengths, zh_lengths = functools.cache(_en_lengths), functools.cache(_zh_lengths)  # windows repeat
    values = [_largest_length([v for w in en_w for v in en_lengths(w)] + [v for w in zh_w for v in zh_lengths(w)])
              for en_w, zh_w in zip(en.gather(rows).to_list(), zh.gather(rows).to_list(), strict=True)]
    out = pl.Series(windows.name, [None] * len(windows), dtype=pl.Int64)
    return out.scatter(rows, pl.Series(values, dtype=pl.Int64)) if len(rows) else out


_CJK = r"[\u4e00-\u9fff]"
# kana, hangul, cyrillic, arabic, devanagari, thai, greek, hebrew: languages we do not target
_OTHER_SCRIPTS = (r"[\u3040-\u30ff\uac00-\ud7af\u0400-\u04ff\u0600-\u06ff\u0900-\u097f\u0e00-\u0e7f\u0370-\u03ff"
                  r"\u0590-\u05ff]")


def _latin_words(text: pl.Expr) -> pl.Expr:
    r"""The number of matches of ``\b[a-zA-Z]+\b``: runs of ASCII letters with no word character (\w) on either
    side, counted as those with none on the left less those of them with a word character that is not an ASCII
    letter on the right. Rust's regex engines cannot use a DFA for a Unicode \b once the text is not ASCII,
    which made the plain count the slowest step of ``prefilter``."""
    left = r"(?:^|\W)[a-zA-Z]+"
    return (text.str.count_matches(left).cast(pl.Int64)
            - text.str.count_matches(left + r"[\w--[a-zA-Z]]").cast(pl.Int64))


def _language_of(cjk: pl.Expr, latin: pl.Expr, other: pl.Expr) -> pl.Expr:
    return (pl.when((other > 0) & (other * 2 >= cjk + latin)).then(pl.lit("other"))
            .when(cjk >= latin).then(pl.when(cjk > 0).then(pl.lit("zh")).otherwise(pl.lit("other")))
            .when(cjk * 4 >= latin).then(pl.lit("zh"))
            .otherwise(pl.lit("en")))


def _language_counts(col: str) -> dict[str, pl.Expr]:
    """CJK characters, ASCII words and characters of other scripts. The CJK count is taken as the bytes left
    once everything but ASCII and CJK is removed, less the characters (a CJK character is 3 bytes in UTF-8):
    cheaper than counting a match per character."""
    text = pl.col(col)
    kept = text.str.replace_all(r"[^\x00-\x7f\u4e00-\u9fff]+", "")
    return {"cjk": ((kept.str.len_bytes() - kept.str.len_chars()) // 2).cast(pl.Int64),
            "latin": _latin_words(text),
            "other": text.str.count_matches(_OTHER_SCRIPTS).cast(pl.Int64)}


def language_expr(col: str = "prompt") -> pl.Expr:
    """zh, en or other: by the same units the word counter counts, plus other scripts."""
    counts = _language_counts(col)
    return _language_of(counts["cjk"], counts["latin"], counts["other"])


def _stable_ids(prompts: pl.Series) -> pl.Series:
    return pl.Series([hashlib.sha1(p.encode("utf-8")).hexdigest()[:12] for p in prompts.to_list()], dtype=pl.Utf8)


def _certainly_valid(df: pl.DataFrame, model: type[pa.DataFrameModel]) -> bool:
    """Whether ``df`` passes ``model``, decided with a few Polars aggregates (a million rows in a fraction of a
    second, where pandera takes about a second). False means "ask pandera", which then names the row; any
    column property or check this does not know also answers False."""
    schema = model.to_schema()
    if schema.checks or schema.unique or schema.coerce or schema.strict:
        return False
    exprs: list[pl.Expr] = []
    for name, column in schema.columns.items():
        if name not in df.columns:
            if column.required:
                return False
            continue
        if column.coerce or df.schema[name] != column.dtype.type:
            return False
        col = pl.col(name)
        if not column.nullable:
            exprs.append(col.null_count() == 0)
        if column.unique:
            exprs.append(col.n_unique() == pl.len())
        for check in column.checks:
            if check.name == "not_blank":  # _not_blank: something left after strip_chars
                exprs.append(col.str.contains(r"\S").all())
            elif check.name == "greater_than":
                exprs.append((col > check.statistics["min_value"]).all())
            else:
                return False
    return all(df.select(e.alias(f"c{i}") for i, e in enumerate(exprs)).row(0)) if exprs else True


# Chat logs serve as pools as they are published: a WildChat-1M Parquet shard holds one `conversation` per row
# (a list of {role, content, ...} turns) keyed by `conversation_hash`; chat sets hold `messages`. The instruction
# is the conversation's first user turn, the request the paper's selection starts from.
_CHAT_COLUMNS = ("conversation", "messages")
_POOL_SUFFIXES = (".parquet", ".jsonl", ".json", ".ndjson")
# the columns select reads: a WildChat shard's others (moderation scores, headers, ...) stay on disk
_POOL_COLUMNS = ["id", "prompt", "source", "required_words", *_CHAT_COLUMNS, "conversation_hash"]


def pool_files(path: str) -> list[Path]:
    """The files of one ``select.pools`` entry: the file itself, or every pool file in a directory (e.g. the
    shards ``dvc import-url`` put there), in name order."""
    entry = Path(path)
    if not entry.is_dir():
        return [entry]
    files = sorted(p for p in entry.rglob("*") if p.is_file() and p.suffix.lower() in _POOL_SUFFIXES)
    if not files:
        raise InputError(path, f"no pool files ({', '.join(_POOL_SUFFIXES)}) in this directory")
    return files


def first_user_turns(df: pl.DataFrame, path: str | Path) -> pl.DataFrame:
    """A pool file's rows as prompts: unchanged when it has a ``prompt`` column; a chat log's rows get the
    first user turn of their conversation as ``prompt`` (and ``conversation_hash`` as ``id``). Conversations
    without a non-blank user turn are left out: an empty chat message is not an instruction."""
    if "prompt" in df.columns:
        return df
    column = next((c for c in _CHAT_COLUMNS if c in df.columns), None)
    if column is None:
        raise InputError(path, "missing column 'prompt', and no chat column ('conversation' as in WildChat-1M, "
                               "or 'messages') to take the first user turn from")
    dtype = df.schema[column]
    if not (isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct)
            and {"role", "content"} <= {f.name for f in dtype.inner.fields}):
        raise InputError(path, f"expected a list of {{role, content}} turns, found {dtype}", column=column)
    turn = pl.element()
    first_user = pl.col(column).list.eval(
        turn.filter(turn.struct.field("role") == "user").struct.field("content").first()).list.first()
    df = df.with_columns(first_user.alias("prompt")).filter(pl.col("prompt").str.contains(r"\S"))
    if "id" not in df.columns and "conversation_hash" in df.columns:
        df = df.with_columns(pl.col("conversation_hash").cast(pl.Utf8).alias("id"))
    return df


def load_pools(paths: list[str]) -> pl.DataFrame:
    """Read and validate each pool; returns id, prompt, source, required_words (one frame, pool order).

    A pool is a file (JSONL or Parquet) or a directory of them; its source is the file's, or the directory's,
    name unless rows carry their own."""
    frames = []
    for path in paths:
        source = Path(path).stem
        for file in pool_files(path):
            df = first_user_turns(read_table(file, _POOL_COLUMNS), file)
            df = (df.drop("_row") if _certainly_valid(df.drop("_row", strict=False), Pool)
                  else validate(df, Pool, str(file)))
            frames.append(df.select(
                pl.col("id") if "id" in df.columns else _stable_ids(df["prompt"]).alias("id"),
                pl.col("prompt"),
                (pl.col("source").fill_null(source) if "source" in df.columns else pl.lit(source)).alias("source"),
                (pl.col("required_words").cast(pl.Int64) if "required_words" in df.columns
                 else pl.lit(None, dtype=pl.Int64)).alias("required_words"),
            ))
    return pl.concat(frames, how="vertical_relaxed")


# NFKC changes a text only where it holds a character that is not "stable" (one NFKC maps to something else, a
# combining mark, or one that can combine with the character before it): Unicode's quick check. A row made
# of "plain" characters only (stable, and left as they are by lowercasing, or A-Z: all English, most Chinese)
# is skipped, and so is its lowercasing (A-Z is mapped directly; ``to_lowercase`` goes character by character
# through Chinese). Full-width ASCII forms and the ideographic space (Chinese punctuation: ，：？！) are mapped
# directly to what NFKC makes of them. Characters outside the common blocks below count as not plain: their
# rows take the slow, exact path, and the regex classes stay small and fast.
_BLOCKS = [(0x0000, 0x024F), (0x0370, 0x04FF), (0x0590, 0x06FF), (0x0900, 0x097F), (0x0E00, 0x0E7F),
           (0x2000, 0x206F), (0x3000, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xFF00, 0xFFEF),
           (0x1F300, 0x1FAFF)]
_ASCII_UPPER = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
_ASCII_LOWER = [c.lower() for c in _ASCII_UPPER]


def _class_body(keep) -> str:
    """A regex class body (no brackets) of the characters in ``_BLOCKS`` for which ``keep(char)`` is true."""
    ranges: list[list[int]] = []
    for lo, hi in _BLOCKS:
        for cp in range(lo, hi + 1):
            if unicodedata.category(chr(cp)) != "Cn" and keep(chr(cp)):
                if ranges and ranges[-1][1] == cp - 1:
                    ranges[-1][1] = cp
                else:
                    ranges.append([cp, cp])
    return "".join(f"\\x{{{lo:X}}}" if lo == hi else f"\\x{{{lo:X}}}-\\x{{{hi:X}}}" for lo, hi in ranges)


@functools.cache
def _plain_classes() -> tuple[str, list[str], list[str]]:
    """The class of plain characters; the full-width forms, and what NFKC makes of them."""
    seconds = {0x1161 + i for i in range(21)} | {0x11A8 + i for i in range(27)}  # Hangul vowel and final jamo
    for cp in range(0x20000):  # every character that composes with another is in planes 0 and 1
        decomposition = unicodedata.decomposition(chr(cp)).split()
        if len(decomposition) == 2 and not decomposition[0].startswith("<"):
            seconds.add(int(decomposition[1], 16))
    plain = _class_body(lambda c: ord(c) not in seconds and unicodedata.combining(c) == 0
                        and unicodedata.normalize("NFKC", c) == c and (c.lower() == c or "A" <= c <= "Z"))
    wide = [chr(cp) for cp in [*range(0xFF01, 0xFF5F), 0x3000]]
    narrow = [unicodedata.normalize("NFKC", c) for c in wide]
    assert all(len(n) == 1 and ord(n) < 128 and ord(n) not in seconds for n in narrow)
    return plain, wide, narrow


def _rows(prompts: pl.Series, **flags: pl.Expr) -> pl.DataFrame:
    """A frame of ``prompts`` (column ``p``) with a row index ``i`` and the given columns."""
    frame = pl.DataFrame({"p": prompts}).with_row_index("i")
    return frame.lazy().with_columns(**flags).collect(engine="streaming").sort("i") if flags else frame


def _by_part(frame: pl.DataFrame, parts: list[tuple[pl.Expr, pl.Expr]], *keep: str) -> pl.DataFrame:
    """``frame`` (with a row index ``i``) split by the row conditions of ``parts``, each part's expression
    computed on its rows only (an expensive step is not run on rows it would not change), with the columns
    ``keep``, in row order.

    Both helpers run on the streaming engine, which spreads row batches over all cores (the in-memory engine
    evaluates a string expression on one core) and never holds a whole intermediate column (such as the
    lowercased pool).
    """
    lazy = frame.lazy()
    parts_ = [lazy.filter(cond).select("i", expr, *keep) for cond, expr in parts]
    return pl.concat(parts_).collect(engine="streaming").sort("i")


def _normalise(prompts: pl.Series) -> pl.DataFrame:
    """``p``: ``prompts.str.normalize("NFKC").str.strip_chars()``, computed only where it changes something;
    ``plain``: whether the row is made of plain characters (as ASCII rows are)."""
    plain, wide, narrow = _plain_classes()
    wide_class = "".join(f"\\x{{{ord(c):X}}}" for c in wide)
    p = pl.col("p")
    frame = _rows(prompts, ascii=p.str.len_bytes() == p.str.len_chars(),
                  pad=p.str.contains(r"^\s") | p.str.contains(r"\s$"))
    others = ~frame["ascii"]  # (a filter shares the strings; a gather would copy them)
    flags = _rows(prompts.filter(others), plain=~p.str.contains(f"[^{plain}{wide_class}]"),
                  wide=p.str.contains(f"[{wide_class}]"))
    rows = others.arg_true()
    frame = frame.with_columns(frame["ascii"].scatter(rows, flags["plain"]).alias("plain"),
                               pl.repeat(False, frame.height, eager=True).scatter(rows, flags["wide"]).alias("wide"))
    plain_, wide_, pad = pl.col("plain"), pl.col("wide"), pl.col("pad")
    # rows that are not rewritten keep sharing the pool's strings
    return _by_part(frame, [
        (plain_ & ~wide_ & ~pad, p),
        (plain_ & ~wide_ & pad, p.str.strip_chars()),
        (plain_ & wide_, p.str.replace_many(wide, narrow).str.strip_chars()),
        (~plain_, p.str.normalize("NFKC").str.strip_chars()),
    ], "plain")


def normalised_prompts(prompts: pl.Series) -> pl.Series:
    """``prompts.str.normalize("NFKC").str.strip_chars()``, computed only where it changes something."""
    return _normalise(prompts)["p"].alias(prompts.name)


# the whitespace characters (\s, Unicode White_Space) other than the space
_BLANKS = ["\t", "\n", "\x0b", "\x0c", "\r", "\x85", "\xa0", "\u1680", *map(chr, range(0x2000, 0x200B)), "\u2028",
           "\u2029", "\u202f", "\u205f", "\u3000"]


def _dedup_keys(frame: pl.DataFrame, finish) -> pl.Series:
    r"""``finish`` applied to the dedup key (lowercase, whitespace runs made one space) of each row of ``frame``
    (from ``_normalise``). Every blank is mapped to a space along with the lowercasing (by ``replace_many``, a
    single pass, for plain rows), then runs of spaces are made one: the same as replacing ``\s+`` by a space,
    with a regex that only has to look for two spaces."""
    p = pl.col("p")
    fast = pl.col("plain") & (p.str.len_bytes() != p.str.len_chars())  # ASCII rows: to_lowercase is fastest
    spaced = [" "] * len(_BLANKS)
    return _by_part(frame, [
        (fast, finish(p.str.replace_many(_ASCII_UPPER + _BLANKS, _ASCII_LOWER + spaced)
                      .str.replace_all(" {2,}", " ")).alias("k")),
        (~fast, finish(p.str.to_lowercase().str.replace_many(_BLANKS, spaced).str.replace_all(" {2,}", " "))
         .alias("k")),
    ])["k"]


def _first_distinct(hashes: pl.Series, exact) -> pl.Series:
    """``is_first_distinct`` of some values, from their 64-bit ``hashes``; ``exact(mask)`` gives the values of
    the rows whose hash is shared, which are compared, so a collision costs nothing."""
    first = hashes.is_first_distinct()
    shared = hashes.is_duplicated()
    if shared.any():
        first = first.scatter(shared.arg_true(), exact(shared).is_first_distinct())
    return first


def first_of_each_key(prompts: pl.Series) -> pl.Series:
    """``is_first_distinct`` of the dedup key (lowercase, whitespace runs made one space) of normalised
    prompts, without holding the keys (another copy of the whole pool)."""
    frame = _rows(prompts, plain=~pl.col("p").str.contains(f"[^{_plain_classes()[0]}]"))
    return _first_of_each_key(frame)


def _first_of_each_key(frame: pl.DataFrame) -> pl.Series:
    return _first_distinct(_dedup_keys(frame, lambda key: key.hash()),
                           lambda rows: _dedup_keys(frame.filter(rows), lambda key: key))


def unique_ids(ids: pl.Series) -> pl.Series:
    """``ids`` with the second, third... occurrence of an id suffixed -1, -2...: a later pool reusing an id
    is a different prompt. Only rows whose id hash is shared are looked at."""
    shared = ids.hash().is_duplicated().arg_true()
    if not len(shared):
        return ids
    rank = pl.int_range(pl.len()).over("id")
    rekeyed = pl.DataFrame({"id": ids.gather(shared)}).select(
        pl.when(pl.col("id").is_duplicated() & (rank > 0)).then(pl.col("id") + "-" + rank.cast(pl.Utf8))
        .otherwise(pl.col("id")))["id"]
    return ids.scatter(shared, rekeyed)


def languages(prompts: pl.Series) -> pl.Series:
    """``language_expr`` for each prompt, counting only what decides it.

    Prompts in ASCII are en when they hold an ASCII word, else other. For the rest, one pass removes every
    character but ASCII and CJK: the bytes left give the CJK count (a CJK character is 3 bytes), the characters
    left and removed bound the ASCII words (at most one per ASCII character) and the other-script characters
    (at most one per removed character). A prompt whose bounds settle it (a Chinese prompt with a little ASCII
    and punctuation) is not counted further; other scripts are counted next, and the ASCII words last, on the
    prompts still open. The decision is the same as counting everything.
    """
    p, cjk, ascii_chars, rest = pl.col("p"), pl.col("cjk"), pl.col("ascii_chars"), pl.col("rest")
    rows = _rows(prompts).lazy()
    is_ascii = p.str.len_bytes() == p.str.len_chars()
    ascii_rows = rows.filter(is_ascii).select(
        "i", pl.when(p.str.contains(r"(?-u:\b)[a-zA-Z]+(?-u:\b)")).then(pl.lit("en")).otherwise(pl.lit("other"))
        .alias("lang"))
    kept = pl.col("kept")  # a column, so that the removal runs once
    only_ascii_and_cjk = p.str.replace_all(r"[^\x00-\x7f\u4e00-\u9fff]+", "").alias("kept")
    counted = rows.filter(~is_ascii).with_columns(only_ascii_and_cjk).select(
        "i", "p", ((kept.str.len_bytes() - kept.str.len_chars()) // 2).cast(pl.Int64).alias("cjk"),
        kept.str.len_chars().cast(pl.Int64).alias("kept_chars"), p.str.len_chars().cast(pl.Int64).alias("chars"),
    ).with_columns((pl.col("kept_chars") - cjk).alias("ascii_chars"),
                   (pl.col("chars") - pl.col("kept_chars")).alias("rest")).collect(engine="streaming").lazy()
    # zh whatever the other counts: other characters cannot outweigh the CJK ones, ASCII words are too few
    chinese = (cjk > 0) & (cjk * 4 >= ascii_chars) & (rest * 2 < cjk)
    with_other = counted.filter(~chinese).with_columns(
        p.str.count_matches(_OTHER_SCRIPTS).cast(pl.Int64).alias("other")).collect(engine="streaming").lazy()
    other_ = pl.col("other")
    foreign = (other_ > 0) & (other_ * 2 >= cjk + ascii_chars)  # other whatever the ASCII words
    return pl.concat([
        ascii_rows,
        counted.filter(chinese).select("i", pl.lit("zh").alias("lang")),
        with_other.filter(foreign).select("i", pl.lit("other").alias("lang")),
        with_other.filter(~foreign).select("i", _language_of(cjk, _latin_words(p), other_).alias("lang")),
    ]).collect(engine="streaming").sort("i")["lang"]


def required_words(prompts: pl.Series) -> pl.Series:
    """``required_words_in`` of each prompt; only prompts that mention "word" or 字 are looked at."""
    p = pl.col("p")
    frame = _rows(prompts, hit=p.str.contains(r"(?i)word|字"))
    return _by_part(frame, [
        (~pl.col("hit"), pl.lit(None, dtype=pl.Int64).alias("w")),
        (pl.col("hit"), required_words_expr("p").alias("w")),
    ])["w"]


def prefilter(pool: pl.DataFrame, cfg: SelectConfig) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Normalise, deduplicate, detect language, filter by length. Returns the candidates and step counts.

    Normalising is NFKC then strip; two prompts are duplicates when they are equal after lowercasing and
    making every whitespace run one space (the first is kept). The steps run only where they can change
    something, so a million-row pool takes seconds.
    """
    counts: dict[str, Any] = {"read": pool.height}
    # a prompt equal to an earlier one is a duplicate whatever its key: dropped before the costly steps
    df = pool.filter(_first_distinct(pool["prompt"].hash(), pool["prompt"].filter))
    normalised = _normalise(df["prompt"])
    df = df.with_columns(normalised["p"].alias("prompt")).filter(_first_of_each_key(normalised))
    del normalised
    # ids must stay unique across pools: a later pool reusing an id is a different prompt, so re-key it
    df = df.with_columns(unique_ids(df["id"]))
    counts["after_dedup"] = df.height
    df = df.with_columns(languages(df["prompt"]).alias("lang"), pl.col("prompt").str.len_chars().alias("_chars"))
    counts["by_lang"] = {lang: int(n) for lang, n in
                         df.group_by("lang").len().sort("lang").iter_rows()}
    df = df.filter(pl.col("lang").is_in(LANGS))
    counts["after_lang"] = df.height
    df = df.filter(pl.col("_chars").is_between(cfg.min_prompt_chars, cfg.max_prompt_chars))
    counts["after_length"] = df.height
    df = df.with_columns(pl.coalesce(pl.col("required_words"), required_words(df["prompt"])).alias("required_words"))
    if cfg.max_required_words is not None:
        df = df.filter(pl.col("required_words").is_null() | (pl.col("required_words") <= cfg.max_required_words))
    counts["after_required_words"] = df.height
    return df.drop("_chars"), counts


@dataclass
class Verdict:
    id: str
    needs_long_answer: bool | None = None
    estimated_words: int | None = None
    attempts: int = 0
    error: str | None = None


async def judge(llm: LLMClient, prompt_id: str, prompt: str, cfg: SelectConfig) -> Verdict:
    """Ask the selector whether ``prompt`` needs a long answer; re-ask on unusable output."""
    messages = [{"role": "user", "content": JUDGE_PROMPT.format(min_words=cfg.min_estimated_words, prompt=prompt)}]
    verdict = Verdict(prompt_id)
    for sample in range(cfg.max_attempts):
        verdict.attempts = sample + 1
        try:
            reply = await llm.complete(messages, cfg.sampling, schema=JUDGE_SCHEMA, sample=sample)
        except LLMCallError as e:
            verdict.error = str(e)
            return verdict
        obj = extract_json(reply.text)
        if (isinstance(obj, dict) and isinstance(obj.get("needs_long_answer"), bool)
                and isinstance(obj.get("estimated_words"), int) and not isinstance(obj["estimated_words"], bool)):
            verdict.needs_long_answer = obj["needs_long_answer"]
            verdict.estimated_words = max(0, obj["estimated_words"])
            verdict.error = None
            return verdict
        verdict.error = f"unusable selector output: {reply.text[:200]!r}"
    return verdict


def _accepts(v: Verdict, cfg: SelectConfig, required: int | None) -> bool:
    if not v.needs_long_answer:
        return False
    # a prompt that states its length is judged by that length, not by the model's guess
    words = required if required is not None else v.estimated_words
    return (words or 0) >= cfg.min_estimated_words


async def choose(llm: LLMClient, candidates: pl.DataFrame, cfg: SelectConfig,
                 progress: Any = None) -> tuple[pl.DataFrame, list[Verdict]]:
    """Judge candidates in a seeded order until each language has ``per_lang`` accepted ones."""
    order = candidates.sort("id").sample(fraction=1.0, shuffle=True, seed=cfg.seed)
    verdicts: list[Verdict] = []
    chosen: list[pl.DataFrame] = []
    window = max(2, llm.settings.max_concurrency * 2)
    for lang in LANGS:
        pending = order.filter(pl.col("lang") == lang)
        accepted: list[int] = []
        estimates: dict[int, int | None] = {}
        for start in range(0, pending.height, window):
            if cfg.per_lang is not None and len(accepted) >= cfg.per_lang:
                break
            batch = pending.slice(start, window)
            results = await asyncio.gather(*(judge(llm, r["id"], r["prompt"], cfg)
                                             for r in batch.iter_rows(named=True)))
            for offset, (row, v) in enumerate(zip(batch.iter_rows(named=True), results, strict=True)):
                verdicts.append(v)
                if _accepts(v, cfg, row["required_words"]):
                    accepted.append(start + offset)
                    estimates[start + offset] = v.estimated_words
            if progress is not None:
                progress.update(batch.height)
        accepted = accepted[: cfg.per_lang] if cfg.per_lang is not None else accepted
        if accepted:
            chosen.append(pending[accepted].with_columns(
                pl.Series("estimated_words", [estimates[i] for i in accepted], dtype=pl.Int64)))
    if not chosen:
        return empty(Instructions), verdicts
    return pl.concat(chosen).select(empty(Instructions).columns).sort("lang", "id"), verdicts


def run_select(output: str | Path, failures: str | Path, metrics: str | Path,
               cfg: SelectConfig, settings: ClientSettings) -> dict[str, Any]:
    """The whole stage: read pools, prefilter, ask the selector, write table, failures and metrics."""
    candidates, counts = prefilter(load_pools(list(cfg.pools)), cfg)

    async def work(llm: LLMClient) -> tuple[pl.DataFrame, list[Verdict]]:
        with tqdm(total=candidates.height, desc="select: judged", unit="prompt", disable=None) as bar:
            return await choose(llm, candidates, cfg, bar)

    (chosen, verdicts), stats = run_with_llm(cfg.selector, settings, work)
    failed = [v for v in verdicts if v.error is not None]
    write_checked(chosen, Instructions, output)
    write_failures([{"stage": "select", "instruction_id": v.id, "section": None, "attempts": v.attempts,
                     "error": v.error} for v in failed], failures)
    counts |= {
        "judged": len(verdicts),
        "judged_long": sum(1 for v in verdicts if v.needs_long_answer),
        "judge_failed": len(failed),
        "selected": chosen.height,
        "selected_by_lang": {lang: int((chosen["lang"] == lang).sum()) for lang in LANGS},
        "llm": stats.as_metrics(),
    }
    write_json(counts, metrics)
    return counts

