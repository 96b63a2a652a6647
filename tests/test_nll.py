"""The nll stage's computations: token NLL against a direct forward pass (in one window and strided), cumulative
means, the tail slope and the shuffled-paragraph control."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama

from longwriter.config import build
from longwriter.errors import ConfigError
from longwriter.eval.nll import (
    NllConfig,
    cumulative_mean,
    set_curves,
    shuffled_paragraphs,
    tail_slope,
    token_nll,
)


def _direct(model, ids: list[int]) -> list[float]:
    """-log p(ids[i] | ids[:i]) for i >= 1, from one forward pass over the whole sequence."""
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return [-logp[i - 1, ids[i]].item() for i in range(1, len(ids))]


def test_token_nll_in_one_window_is_the_direct_forward_computation(tokenizer):
    model = tiny_llama(tokenizer).eval()
    ids = tokenizer("The lighthouse keeper opened the bottle and read the letter twice.")["input_ids"]
    assert token_nll(model, ids, window=64) == pytest.approx(_direct(model, ids), abs=1e-5)
    # and it is what the model's own loss averages
    with torch.inference_mode():
        loss = model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert sum(token_nll(model, ids, window=64)) / (len(ids) - 1) == pytest.approx(loss, abs=1e-5)


def test_a_text_longer_than_the_window_is_scored_once_per_token_in_strided_windows(tokenizer):
    model = tiny_llama(tokenizer).eval()
    ids = list(range(100, 121))  # 21 tokens
    window, stride = 8, 4
    got = token_nll(model, ids, window)
    assert len(got) == len(ids) - 1
    # by hand: token i is scored in the first window [s, s + 8) (s = 0, 4, 8, ...) where it is past the overlap
    expected = []
    for i in range(1, len(ids)):
        s = 0 if i < window else ((i - window) // stride + 1) * stride
        expected.append(_direct(model, ids[s:s + window])[i - s - 1])
    assert got == pytest.approx(expected, abs=1e-5)
    # every token after the first window saw at least window // 2 tokens before it
    assert all(i - (0 if i < window else ((i - window) // stride + 1) * stride) >= stride
               for i in range(window, len(ids)))


def test_cumulative_mean_and_tail_slope_by_hand():
    assert cumulative_mean([3.0, 1.0, 2.0]) == [3.0, 2.0, 2.0]
    assert tail_slope([4.0, 3.0, 2.0, 1.0], 1.0) == pytest.approx(-1000.0)  # one nat per token, per 1k tokens
    assert tail_slope([9.0, 9.0, 2.0, 2.0], 0.5) == pytest.approx(0.0)     # only the flat last half
    assert tail_slope([1.0], 1.0) is None


def test_shuffled_paragraphs_keeps_every_paragraph_in_a_seeded_order():
    text = "\n\n".join(f"Paragraph {i} says something." for i in range(8))
    a, b = shuffled_paragraphs(text, 0), shuffled_paragraphs(text, 1)
    assert sorted(a.split("\n\n")) == sorted(text.split("\n\n")) and a != text
    assert a == shuffled_paragraphs(text, 0) and a != b
    assert sorted(shuffled_paragraphs("one\ntwo\nthree", 3).split("\n")) == ["one", "three", "two"]


def test_a_set_s_curves_leave_short_texts_out(tokenizer):
    model = tiny_llama(tokenizer).eval()
    long_text = "\n\n".join(f"Part {i}: the keeper walked to the shore and looked at the sea again." for i in range(6))
    scored = set_curves(model, tokenizer, [long_text, "Too short."],
                        NllConfig(min_tokens=40, window=32, positions=(8, 16, 9999)))
    m = scored["metrics"]
    assert (m["texts"], m["short"], m["left_out_by_max_texts"]) == (1, 1, 0)
    n = len(tokenizer(long_text, add_special_tokens=False)["input_ids"])
    # per text, by position without ids: the scored text's mean NLL is the last point of its (here the) curve
    [(text_id, tokens, nll_mean, nll_mean_shuffled)] = scored["scored"]
    assert (text_id, tokens) == ("0", n) and nll_mean == pytest.approx(scored["curves"]["original"][-1])
    assert nll_mean_shuffled == pytest.approx(scored["curves"]["shuffled"][-1])
    assert scored["short"] == [("1", len(tokenizer("Too short.", add_special_tokens=False)["input_ids"]))]
    assert scored["left_out"] == []
    capped_set = set_curves(model, tokenizer, [long_text, long_text + " More.", "Too short."],
                            NllConfig(min_tokens=40, window=32, positions=(8,), max_texts=1), ids=["a", "b", "c"])
    capped = capped_set["metrics"]
    assert (capped["texts"], capped["short"], capped["left_out_by_max_texts"]) == (1, 1, 1)
    # the shortest of the long enough texts goes
    assert [t[0] for t in capped_set["scored"]] == ["b"] and capped_set["left_out"] == [("a", n)]
    assert [t[0] for t in capped_set["short"]] == ["c"]
    assert m["original"]["tokens"] == len(scored["curves"]["original"]) == n - 1
    assert set(m["original"]["nll_at"]) == {"8", "16"}  # 9999 is past the curve
    assert m["original"]["nll_at"]["8"] == pytest.approx(scored["curves"]["original"][7], abs=1e-4)
    assert m["shuffled"]["tail_slope_per_1k"] is not None


@pytest.mark.parametrize(("data", "match"), [
    ({"min_tokens": 1}, "min_tokens"), ({"tail_fraction": 0}, "tail_fraction"), ({"positions": [0]}, "positive"),
])
def test_nll_config_errors(data, match):
    with pytest.raises(ConfigError, match=match):
        build(NllConfig, data, "params.yaml:nll")


def test_the_stage_scores_each_text_set_from_the_tables(tokenizer, tmp_path):
    import polars as pl

    from longwriter.eval.nll import NllConfig, run_nll
    from longwriter.generation import answer_row
    from longwriter.schemas import Answers, LongSamples, NllTexts, empty, validate
    from longwriter.scoring import bucket_of
    from longwriter.train.checkpoint import save_checkpoint

    save_checkpoint(tiny_llama(tokenizer), tokenizer, tmp_path / "model")

    def text(paragraphs: int) -> str:
        return " ".join(f"Paragraph {k}: the keeper climbed the stairs and lit the lamp again." for k in range(
            paragraphs))

    # AgentWrite: three long enough texts (the shortest of them past max_texts) and a short one
    samples = pl.DataFrame([{"id": i, "lang": "en", "source": "p", "planned_words": 300, "sections": 3,
                             "lines_removed": 0, "words": 300,
                             "messages": [{"role": "user", "content": "Write."},
                                          {"role": "assistant", "content": t}]}
                            for i, t in (("s", text(30)), ("short", "Too short."), ("mid", text(12)),
                                         ("long", text(32)))])
    validate(samples, LongSamples, "s").write_parquet(tmp_path / "samples.parquet")
    request = {"index": 0, "prompt": "Write.", "type": None, "lang": "en", "required": 300, "bucket": bucket_of(300)}
    answers = [answer_row("base", request, 0, text(10), "stop", 1024, 5, 300, 1.0),
               answer_row("base", {**request, "index": 1}, 0, "Too short.", "stop", 1024, 5, 3, 1.0),
               answer_row("base", request, 1, text(10), "stop", 1024, 5, 300, 1.0)]  # not sample 0: not a text
    validate(pl.DataFrame(answers, schema=empty(Answers).schema), Answers, "a").write_parquet(tmp_path / "a.parquet")
    result = run_nll(NllConfig(model=str(tmp_path / "model"), min_tokens=64, window=128, positions=[32, 64],
                               max_texts=2),
                     tmp_path / "samples.parquet", tmp_path / "a.parquet", tmp_path / "nll.parquet",
                     tmp_path / "m.json", tmp_path / "c.csv", tmp_path / "f.parquet")
    agentwrite = result["sets"]["agentwrite"]
    # the answers' texts are scored (their requests are not): both curves at both positions
    assert (agentwrite["texts"], agentwrite["short"], agentwrite["left_out_by_max_texts"]) == (2, 1, 1)
    assert (result["sets"]["base"]["texts"], result["sets"]["base"]["short"]) == (1, 1)
    assert set(agentwrite["original"]["nll_at"]) == {"32", "64"} and set(agentwrite["shuffled"]["nll_at"]) == {
        "32", "64"}
    assert result["failures"] == {"left_out": 1, "too_short": 2}
    table = validate(pl.read_parquet(tmp_path / "nll.parquet"), NllTexts, "nll")
    assert table.select("set", "text_id").rows() == [("agentwrite", "long"), ("agentwrite", "s"), ("base", "0")]
    assert (table["nll_mean"] > 0).all() and (table["nll_mean_shuffled"] > 0).all()
    tokens = dict(zip(table["text_id"], table["tokens"], strict=True))
    assert tokens["long"] > tokens["s"] == len(tokenizer(text(30), add_special_tokens=False)["input_ids"])
    failures = pl.read_parquet(tmp_path / "f.parquet")
    assert failures.select("stage", "instruction_id", "section", "reason").sort("instruction_id").rows() == [
        ("nll", "agentwrite/mid", None, "left_out"), ("nll", "agentwrite/short", None, "too_short"),
        ("nll", "base/1", None, "too_short")]
    assert all("max_texts (2)" in e for e in failures.filter(pl.col("reason") == "left_out")["error"])
    # every text is exactly one of: a row of the table, or one failures row
    out = {f"{s}/{t}" for s, t in table.select("set", "text_id").iter_rows()}
    failed = failures["instruction_id"].to_list()
    assert len(failed) == len(set(failed)) and not out & set(failed)
    assert out | set(failed) == {"agentwrite/s", "agentwrite/short", "agentwrite/mid", "agentwrite/long", "base/0",
                                 "base/1"}
