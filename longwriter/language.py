"""Which language a prompt is in: zh, en or other, by the units the word counter counts plus other scripts.

Shared by ``select`` (which pool prompts are Chinese or English) and the benchmarks (the language of each
request), so both parts of the method decide a language the same way.
"""

from __future__ import annotations

import polars as pl

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
    rows = pl.DataFrame({"p": prompts}).with_row_index("i").lazy()
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
