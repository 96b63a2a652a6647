"""Normalising and deduplicating prompts: NFKC then strip, and a dedup key (lowercase, whitespace runs made one
space) whose first occurrence is kept; each step runs only on the rows it can change."""

from __future__ import annotations

import functools
import unicodedata

import polars as pl

from longwriter.agentwrite.rows import by_part, row_frame

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


def normalise(prompts: pl.Series) -> pl.DataFrame:
    """``p``: ``prompts.str.normalize("NFKC").str.strip_chars()``, computed only where it changes something;
    ``plain``: whether the row is made of plain characters (as ASCII rows are)."""
    plain, wide, narrow = _plain_classes()
    wide_class = "".join(f"\\x{{{ord(c):X}}}" for c in wide)
    p = pl.col("p")
    frame = row_frame(prompts, ascii=p.str.len_bytes() == p.str.len_chars(),
                  pad=p.str.contains(r"^\s") | p.str.contains(r"\s$"))
    others = ~frame["ascii"]  # (a filter shares the strings; a gather would copy them)
    flags = row_frame(prompts.filter(others), plain=~p.str.contains(f"[^{plain}{wide_class}]"),
                  wide=p.str.contains(f"[{wide_class}]"))
    rows = others.arg_true()
    frame = frame.with_columns(frame["ascii"].scatter(rows, flags["plain"]).alias("plain"),
                               pl.repeat(False, frame.height, eager=True).scatter(rows, flags["wide"]).alias("wide"))
    plain_, wide_, pad = pl.col("plain"), pl.col("wide"), pl.col("pad")
    # rows that are not rewritten keep sharing the pool's strings
    return by_part(frame, [
        (plain_ & ~wide_ & ~pad, p),
        (plain_ & ~wide_ & pad, p.str.strip_chars()),
        (plain_ & wide_, p.str.replace_many(wide, narrow).str.strip_chars()),
        (~plain_, p.str.normalize("NFKC").str.strip_chars()),
    ], "plain")


def normalised_prompts(prompts: pl.Series) -> pl.Series:
    """``prompts.str.normalize("NFKC").str.strip_chars()``, computed only where it changes something."""
    return normalise(prompts)["p"].alias(prompts.name)


# the whitespace characters (\s, Unicode White_Space) other than the space
_BLANKS = ["\t", "\n", "\x0b", "\x0c", "\r", "\x85", "\xa0", "\u1680", *map(chr, range(0x2000, 0x200B)), "\u2028",
           "\u2029", "\u202f", "\u205f", "\u3000"]


def _dedup_keys(frame: pl.DataFrame, finish) -> pl.Series:
    r"""``finish`` applied to the dedup key (lowercase, whitespace runs made one space) of each row of ``frame``
    (from ``normalise``). Every blank is mapped to a space along with the lowercasing (by ``replace_many``, a
    single pass, for plain rows), then runs of spaces are made one: the same as replacing ``\s+`` by a space,
    with a regex that only has to look for two spaces."""
    p = pl.col("p")
    fast = pl.col("plain") & (p.str.len_bytes() != p.str.len_chars())  # ASCII rows: to_lowercase is fastest
    spaced = [" "] * len(_BLANKS)
    return by_part(frame, [
        (fast, finish(p.str.replace_many(_ASCII_UPPER + _BLANKS, _ASCII_LOWER + spaced)
                      .str.replace_all(" {2,}", " ")).alias("k")),
        (~fast, finish(p.str.to_lowercase().str.replace_many(_BLANKS, spaced).str.replace_all(" {2,}", " "))
         .alias("k")),
    ])["k"]


def first_distinct(hashes: pl.Series, exact) -> pl.Series:
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
    frame = row_frame(prompts, plain=~pl.col("p").str.contains(f"[^{_plain_classes()[0]}]"))
    return first_of_normalised(frame)


def first_of_normalised(frame: pl.DataFrame) -> pl.Series:
    return first_distinct(_dedup_keys(frame, lambda key: key.hash()),
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
