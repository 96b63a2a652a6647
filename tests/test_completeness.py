import pytest

from longwriter.completeness import ends_sentence, incomplete_reason, is_refusal, strip_preamble


@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't help with that.",
    "I am sorry, I cannot write this essay.",
    "Sorry, but I won't be writing that.",
    "I apologize, but that request is not something I can do.",
    "I cannot assist with this request.",
    "I'm unable to provide that content.",
    "As an AI language model, I do not have opinions.",
    "Sure, here is paragraph 2:\nI'm sorry, I can't continue this story.",
    "抱歉，我无法完成这个请求。",
    "很抱歉，这个问题我不能回答。",
    "我无法帮助你完成这篇文章。",
    "作为一个人工智能，我没有个人观点。",
])
def test_refusals_in_english_and_chinese(text):
    assert is_refusal(text)
    assert incomplete_reason(text, "stop") == "refusal"


@pytest.mark.parametrize("text", [
    "I cannot stress enough how much the river shaped the town.",
    "Sorry was the word she never said, and the town remembered it.",
    "The essay argues that, as an AI system grows, so does its cost.",
    "我无法忘记那个夏天，河水很清。",
    "对话是这座城市的灵魂。",
])
def test_ordinary_text_is_not_a_refusal(text):
    assert not is_refusal(text)
    assert incomplete_reason(text, "stop") is None


@pytest.mark.parametrize(("text", "rest"), [
    ("Sure, here is paragraph 3:\nThe harbour was quiet.", "The harbour was quiet."),
    ("Certainly! Here's the next part:\n\nThe harbour was quiet.", "The harbour was quiet."),
    ("Here is paragraph 2: \nThe harbour was quiet.", "The harbour was quiet."),
    ("Sure! Here is paragraph 2: The harbour was quiet.", "The harbour was quiet."),
    ("好的，以下是第三段：\n港口很安静。", "港口很安静。"),
])
def test_preambles_are_stripped(text, rest):
    assert strip_preamble(text) == (rest, True)


def test_a_colon_inside_the_text_is_not_a_preamble():
    text = "The plan had three parts: a harbour, a market and a school."
    assert strip_preamble(text) == (text, False)


def test_the_reasons():
    assert incomplete_reason("", "stop") == "empty"
    assert incomplete_reason("Sure, here is paragraph 3:", "stop") == "empty"
    assert incomplete_reason("Fine text.", "content_filter") == "filtered"
    assert incomplete_reason("The harbour was quiet and the", "length") == "cut_off"
    assert incomplete_reason("The harbour was quiet.", "length") is None
    assert incomplete_reason("港口很安静。", "length") is None
    assert incomplete_reason("The harbour was quiet and the", "stop") is None  # the model chose to stop there
    assert ends_sentence('He said "go."') and not ends_sentence("and the")


def test_trim_to_sentence_keeps_the_text_up_to_its_last_sentence_end():
    from longwriter.completeness import trim_to_sentence

    assert trim_to_sentence("One. Two is here! Three and") == "One. Two is here!"
    assert trim_to_sentence("第一句。第二句，还有") == "第一句。"
    assert trim_to_sentence('He said "go." Then we') == 'He said "go."'
    assert trim_to_sentence("version 3.5 is out and") == ""  # a decimal point ends no sentence
    assert trim_to_sentence("no end at all") == ""
