"""count_words must reproduce the LongBench-Write rule exactly, quirks included.

Reference (LongBench-Write's ``count_words``)::

    len(re.findall(r'[\u4e00-\u9fff]', text)) + len(re.findall(r'\b[a-zA-Z]+\b', text))

Python's ``\\b`` is Unicode-aware: CJK ideographs, digits, ``_`` and accented letters are all word characters,
so a Latin run glued to any of them has no boundary on that side and is not counted.
"""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longwriter.wordcount import cjk_count, count_words, latin_word_count, word_units


def reference(text: str) -> int:
    return len(re.findall(r"[\u4e00-\u9fff]", text)) + len(re.findall(r"\b[a-zA-Z]+\b", text))


# Expected values worked out by hand from the two regexes, not by running them.
HAND_CHECKED = [
    ("", 0),
    ("Hello, world!", 2),
    # the apostrophe is a non-word char: "don" and "t" are both bounded words
    ("don't", 2),
    ("it's 3 o'clock", 4),  # it, s, o, clock; "3" is not a letter word
    # "word" is followed by "2" (a word char): no \b after it; "vec" is preceded by "2": no \b before it
    ("word2vec", 0),
    # é is a word char, so "caf" has no boundary after it
    ("café", 0),
    ("hello_world", 0),  # "_" is a word char
    ("我爱北京天安门", 7),
    # 我 爱 编 程 = 4; "Python" sits between 爱 and 编, both word chars, so it has no boundaries
    ("我爱Python编程", 4),
    # spaces give "Python" its boundaries: 4 ideographs + 1 word
    ("我爱 Python 编程", 5),
    # ideographs 年 发 展 迅 速 = 5 (2024 and the full-width punctuation count nothing);
    # "AI" has a boundary before it (after "，", a non-word char) but none after it (发 is a word char)
    ("2024年，AI发展迅速。", 5),
    ("中文abc", 2),  # 中 文; "abc" glued to 文
    ("ＡＢＣ", 0),  # full-width Latin letters are not [a-zA-Z]
    ("ひらがな", 0),  # kana are outside U+4E00-U+9FFF
    ("\u3400", 0),  # CJK Extension A (U+3400) is outside the counted block
    ("\u4e00\u9fff", 2),  # both ends of the counted block are included
    ("\u4dff\ua000", 0),  # just outside both ends
    ("  multiple   spaces\tand\nnewlines  ", 4),
]


@pytest.mark.parametrize(("text", "expected"), HAND_CHECKED)
def test_count_words_hand_checked(text: str, expected: int) -> None:
    assert count_words(text) == expected


@pytest.mark.parametrize(("text", "expected"), HAND_CHECKED)
def test_word_units_has_one_unit_per_counted_word(text: str, expected: int) -> None:
    assert len(word_units(text)) == expected


def test_word_units_are_in_text_order_and_lower_cased() -> None:
    assert word_units("Hello 世界, World!") == ["hello", "世", "界", "world"]
    assert word_units("我爱 Python 编程") == ["我", "爱", "python", "编", "程"]


def test_cjk_and_latin_counts_split_the_total() -> None:
    text = "2024年，AI发展迅速。 The end."
    assert cjk_count(text) == 5
    assert latin_word_count(text) == 2
    assert count_words(text) == 7


_ASCII = string.ascii_letters + string.digits + string.punctuation + " \t\n"
_ACCENTED = "éèñüÀßçøÅ"
_OTHER_WIDE = "ＡＢＣひらがなカタ\u3400\u4dff\ua000，。"
_CJK = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF)

mixed_text = st.text(
    alphabet=st.one_of(
        st.sampled_from(_ASCII),
        _CJK,
        st.sampled_from(_ACCENTED),
        st.sampled_from(_OTHER_WIDE),
    ),
    max_size=80,
)

simple_text = st.text(
    alphabet=st.one_of(st.sampled_from(string.ascii_letters + " "), _CJK),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(mixed_text)
def test_count_words_matches_reference(text: str) -> None:
    assert count_words(text) == reference(text)


@settings(max_examples=300, deadline=None)
@given(mixed_text)
def test_word_units_length_matches_count(text: str) -> None:
    units = word_units(text)
    assert len(units) == count_words(text)
    assert cjk_count(text) + latin_word_count(text) == count_words(text)


@settings(max_examples=200, deadline=None)
@given(simple_text, simple_text)
def test_newline_join_is_additive(a: str, b: str) -> None:
    assert count_words(a + "\n" + b) == count_words(a) + count_words(b)
