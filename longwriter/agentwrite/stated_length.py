"""The length a prompt states it wants: "2000 words", "2,000-word", "3k words", "3000字", "三千字", "1.5万字"."""

from __future__ import annotations

import functools
import re

import polars as pl

from longwriter.agentwrite.rows import by_part, row_frame

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


def hide_stated_length(prompt: str) -> str:
    """``prompt`` without the length statements ``required_words_in`` reads ("a 2,000-word essay" -> "an essay"
    reads "a essay"; "写一篇800字的文章" -> "写一篇的文章"): what a prompt that states no length looks like, for
    measuring a length predictor against the length the prompt stated (``longwriter.length_target``)."""
    hidden = _ZH_LENGTH.sub("", _EN_LENGTH.sub("", prompt))
    return re.sub(r"[ \t]{2,}", " ", hidden).strip()


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


def required_words(prompts: pl.Series) -> pl.Series:
    """``required_words_in`` of each prompt; only prompts that mention "word" or 字 are looked at."""
    p = pl.col("p")
    frame = row_frame(prompts, hit=p.str.contains(r"(?i)word|字"))
    return by_part(frame, [
        (~pl.col("hit"), pl.lit(None, dtype=pl.Int64).alias("w")),
        (pl.col("hit"), required_words_expr("p").alias("w")),
    ])["w"]
