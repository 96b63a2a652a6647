"""The length experiment: mix's max_output_words (real tables through the real mix code: samples over it left out,
one failures row each), the bench's recipe overlay (the shipped recipes build every section), its parsing of
``dvc exp show --json`` and ``dvc queue status``, its figure, and (slow) the DVC behaviour it relies on: queued
``dvc exp run -s mix sft ruler`` experiments run only those stages, in that order, with the upstream outputs
checked out."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from longwriter.benchmark import read_benchmark
from longwriter.config import ConfigError, build, read_params, section
from longwriter.failures import Failures, Reason
from longwriter.files import read_table
from longwriter.schemas import MESSAGES, Chat, LongSamples, validate, write_checked
from longwriter.train.mix import MixConfig, answer_words, cap_output_words, run_mix

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import length_transfer as lt  # noqa: E402

EXP_SHOW = ROOT / "tests" / "fixtures" / "length_transfer_exp_show.json"
RECIPES = ("configs/params/length-transfer.yaml", "configs/params/length-transfer-paper.yaml")


# ----------------------------------------------------------------------------------------------- mix

def _answer(words: int, lang: str) -> str:
    return "字" * words if lang == "zh" else " ".join(["word"] * words)


def _long(words: dict[str, tuple[int, str]]) -> pl.DataFrame:
    ids = sorted(words)
    df = pl.DataFrame({
        "id": ids, "lang": [words[i][1] for i in ids], "source": ["agentwrite"] * len(ids),
        "messages": [[{"role": "user", "content": f"Write about {i}."},
                      {"role": "assistant", "content": _answer(*words[i])}] for i in ids],
        "words": [words[i][0] for i in ids], "planned_words": [500] * len(ids), "sections": [3] * len(ids),
        "lines_removed": [0] * len(ids)}, schema_overrides={"messages": MESSAGES})
    return validate(df, LongSamples, "long")


def _general(words: dict[str, int]) -> pl.DataFrame:
    ids = sorted(words)
    df = pl.DataFrame({"id": ids, "source": ["chat"] * len(ids),
                       "messages": [[{"role": "user", "content": "hi"},
                                     {"role": "assistant", "content": _answer(words[i], "en")}] for i in ids]},
                      schema_overrides={"messages": MESSAGES})
    return validate(df, Chat, "general")


@pytest.fixture(scope="module")
def tokenizer_dir(tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(str(out))
    return out


LONG = {"l-100": (100, "en"), "l-250": (250, "zh"), "l-251": (251, "en"), "l-400": (400, "zh"),
        "l-600": (600, "en"), "l-900": (900, "zh")}
GENERAL = {f"g-{i}": 20 + 10 * i for i in range(8)} | {"g-long": 300}


def _run(tmp_path: Path, tokenizer_dir: Path, **cfg: Any) -> tuple[dict[str, Any], pl.DataFrame, pl.DataFrame]:
    write_checked(_long(LONG), LongSamples, tmp_path / "long.parquet")
    write_checked(_general(GENERAL), Chat, tmp_path / "general.parquet")
    config = MixConfig(long=str(tmp_path / "long.parquet"), general=str(tmp_path / "general.parquet"),
                       general_per_long=None, **cfg)
    result = run_mix(config, tokenizer_dir, tmp_path / "mix", tmp_path / "mix.json", tmp_path / "failures.parquet",
                     timings=tmp_path / "timings.json")
    both = pl.concat([read_table(tmp_path / "mix" / f"{s}.parquet") for s in ("train", "validation")])
    failures = validate(read_table(tmp_path / "failures.parquet"), Failures, "failures")
    return result, both, failures


def test_mix_leaves_out_every_sample_over_max_output_words_with_a_failures_row(tmp_path: Path,
                                                                                tokenizer_dir: Path) -> None:
    result, both, failures = _run(tmp_path, tokenizer_dir, max_output_words=250)
    # at most 250 words (the paper's count: one per CJK ideograph) stay, long or general; 250 itself stays
    assert sorted(both.filter(pl.col("source") == "long")["id"]) == ["l-100", "l-250"]
    assert sorted(both.filter(pl.col("source") == "general")["id"]) == sorted(set(GENERAL) - {"g-long"})
    assert sorted(failures["instruction_id"]) == ["g-long", "l-251", "l-400", "l-600", "l-900"]
    assert set(failures["reason"]) == {"over_max_words"} and set(failures["stage"]) == {"mix"}
    assert Reason.OVER_MAX_WORDS.kind == "drop"
    row = failures.filter(pl.col("instruction_id") == "l-400").row(0, named=True)
    assert row["error"] == "long sample: 400 words > max_output_words 250" and row["section"] is None
    assert result["left_out"] == {"long": 4, "general": 1} and result["failures"] == {"over_max_words": 5}
    assert result["max_output_words"] == 250
    # the metrics: each split's answer words per source beside its tokens, as written to the metrics file
    written = json.loads((tmp_path / "mix.json").read_text())
    assert written["left_out"] == result["left_out"]
    long_words = [s["long"]["words"] for s in (written["train"], written["validation"])]
    assert max(w["max"] for w in long_words) == 250 and sum(w["total"] for w in long_words) == 350
    general_words = [s["general"]["words"] for s in (written["train"], written["validation"])]
    assert max(w["max"] for w in general_words) == 90
    assert all(written[s][src]["tokens"] > 0 for s in ("train", "validation") for src in ("long", "general")
               if written[s][src]["examples"])


def test_mix_without_a_limit_keeps_every_sample_and_writes_an_empty_failures_table(tmp_path: Path,
                                                                                   tokenizer_dir: Path) -> None:
    result, both, failures = _run(tmp_path, tokenizer_dir)
    assert both.height == len(LONG) + len(GENERAL) and failures.height == 0
    assert result["left_out"] == {"long": 0, "general": 0} and result["failures"] == {}
    assert max(result[s]["long"]["words"]["max"] for s in ("train", "validation")) == 900


def test_a_limit_that_leaves_nothing_to_train_on_is_an_input_error(tmp_path: Path, tokenizer_dir: Path) -> None:
    from longwriter.errors import InputError

    with pytest.raises(InputError, match="nothing to train on"):
        _run(tmp_path, tokenizer_dir, max_output_words=10)


def test_the_limit_keeps_what_it_keeps_and_the_ratio_applies_after_it() -> None:
    long = _long(LONG)
    kept, rows = cap_output_words(long, 500, "long")
    assert sorted(kept["id"]) == ["l-100", "l-250", "l-251", "l-400"] and len(rows) == 2
    assert kept.columns == long.columns
    assert cap_output_words(long, None, "long") == (long, [])


def test_answer_words_is_the_longest_assistant_turn_by_the_papers_count() -> None:
    messages = [{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "两个 words"},
                {"role": "user", "content": "more"}, {"role": "assistant", "content": "one two three"}]
    assert answer_words(messages) == 3
    assert answer_words([{"role": "assistant", "content": "写一篇 essay, don't"}]) == 3 + 1 + 2


@pytest.mark.parametrize("value", [0, -5, True])
def test_max_output_words_must_be_a_positive_integer_or_null(value: Any) -> None:
    with pytest.raises(ConfigError, match="max_output_words"):
        build(MixConfig, {"max_output_words": value}, "params.yaml:mix")


# ----------------------------------------------------------------------------------------------- the recipes

def test_the_overlay_merges_mappings_and_replaces_the_rest() -> None:
    base = {"a": {"x": 1, "y": {"p": 1, "q": 2}, "l": [1, 2]}, "b": 3}
    overlay = {"a": {"y": {"q": 5}, "l": [9], "new": 1}, "c": {"z": 1}}
    merged = lt.deep_merge(base, overlay)
    assert merged == {"a": {"x": 1, "y": {"p": 1, "q": 5}, "l": [9], "new": 1}, "b": 3, "c": {"z": 1}}
    assert base == {"a": {"x": 1, "y": {"p": 1, "q": 2}, "l": [1, 2]}, "b": 3}
    assert lt.new_keys(base, overlay) == ["a.new", "c"]


def test_apply_recipe_writes_plain_yaml_that_keeps_params_yamls_anchored_values(tmp_path: Path) -> None:
    params, recipe = tmp_path / "params.yaml", tmp_path / "recipe.yaml"
    params.write_text("models:\n  e: &e {provider: embedded}\nplan:\n  generator: *e\n  max_words: 250\n"
                      "write:\n  generator: *e\n")
    recipe.write_text("plan:\n  max_words: 100  # a comment\n")
    merged, added = lt.apply_recipe(params, recipe)
    text = params.read_text()
    assert "&" not in text and "*" not in text  # no anchors or aliases for DVC's -S to trip on
    assert yaml.safe_load(text) == merged
    assert merged["plan"] == {"generator": {"provider": "embedded"}, "max_words": 100}
    assert merged["write"]["generator"] == {"provider": "embedded"} and added == []


def _section_classes() -> dict[str, set[type]]:
    from test_config import section_classes

    return section_classes()


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_shipped_recipe_over_params_yaml_builds_every_section(recipe: str, tmp_path: Path) -> None:
    params_file = tmp_path / "params.yaml"
    params_file.write_text((ROOT / "params.yaml").read_text())
    merged, _ = lt.apply_recipe(params_file, ROOT / recipe)
    params = read_params(params_file)  # a misspelt key fails to build below
    for key, classes in _section_classes().items():
        for cls in classes:
            build(cls, section(params, key, recipe), f"{recipe}:{key}")
    values = lt.conditions(merged, None)
    assert values[1] == 2 * values[0] and values[2] == 4 * values[0]
    assert values[-1] == merged["mix"]["max_output_words"]  # the baseline is the top condition
    ruler = merged["ruler"]
    bench = read_benchmark(ROOT / ruler["input"], list(ruler["lengths"]))
    assert set(ruler["lengths"]) >= set(values)
    assert "sft" in {m["name"] for m in merged["eval"]["models"]}
    per_length = bench.group_by("required").len()["len"].min()
    assert ruler["per_length"] is None or ruler["per_length"] <= per_length


def test_the_laptop_recipe_is_250_500_1000_and_the_papers_500_1000_2000() -> None:
    laptop, paper = (yaml.safe_load((ROOT / r).read_text()) for r in RECIPES)
    assert lt.conditions(laptop, None) == [250, 500, 1000]
    assert lt.conditions(paper, None) == [500, 1000, 2000]
    assert lt.conditions(laptop, "400,100,200") == [100, 200, 400]


# ----------------------------------------------------------------------------------------------- DVC's side

def _stages() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_the_queued_experiments_name_their_stages_in_pipeline_order() -> None:
    command = lt.queue_command(250)
    assert command[:6] == ["dvc", "exp", "run", "--queue", "-s", "-n"]
    assert "mix.max_output_words=250" in command and command[-3:] == ["mix", "sft", "ruler"]
    stages = _stages()
    # -s runs the targets in the order given, so each must come after the stage whose output it reads
    assert "${paths.mix}" in stages["sft"]["deps"] and "${paths.model.sft}" in stages["ruler"]["deps"]
    assert "mix" in stages["mix"]["params"]
    assert [c for c in lt.commands([250, 500, 1000], lt.RECIPE) if c.startswith("dvc exp run")] == [
        " ".join(lt.queue_command(x)) for x in (250, 500, 1000)]


def test_the_top_level_plot_reads_the_columns_the_bench_writes() -> None:
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    (path, spec), = next(p for p in plots if "plots/length_transfer.csv" in p).items()
    assert spec["x"] == "max_words" and spec["y"] == "max_output_length"
    assert (ROOT / ".dvc" / "plots" / f"{spec['template']}.json").exists()


def test_queue_status_is_read_by_name() -> None:
    text = ("Task     Name     Created    Status\nc94a652  lt-250   05:15 AM   Success\n"
            "9c95ca8  lt-500   Jan 02, 2025   Failed\n5100632  lt-1000  05:15 AM   Running\n\n"
            "Worker status: 0 active, 1 idle\n")
    assert lt.queue_states(text) == {"lt-250": "Success", "lt-500": "Failed", "lt-1000": "Running"}
    assert lt.queue_states("No experiment tasks in the queue.\n\nWorker status: 0 active, 0 idle\n") == {}


# ----------------------------------------------------------------------------------------------- results

def _result() -> dict[str, Any]:
    show = json.loads(EXP_SHOW.read_text())
    return {"conditions": lt.collect(show, ["lt-250", "lt-500", "lt-1000"], "sft"), "model": "sft"}


def test_each_condition_is_read_from_its_experiments_metrics() -> None:
    conditions = _result()["conditions"]
    assert [c["max_output_words"] for c in conditions] == [250, 500, 1000]
    top = conditions[2]
    assert top["experiment"] == "lt-1000" and top["rev"] == "c" * 40
    # train + validation: 13 + 1 long samples, their tokens and the general ones'; the longest answer of either
    assert top["sft_data"] == {"long_samples": 14, "general_samples": 18, "tokens": 14 * 900 + 18 * 200,
                               "long_tokens": 14 * 900, "max_words": 980, "long_max_words": 980,
                               "general_max_words": 240, "left_out": {"long": 0, "general": 0}}
    assert conditions[0]["sft_data"]["left_out"] == {"long": 10, "general": 0}
    assert top["ruler"]["max_output_length"] == 1000 and top["ruler"]["max_output_length_censored"] is True
    assert top["ruler"]["max_output_length_effective"] == 500
    assert top["ruler"]["mean_words"]["2000"] == 900.0
    assert top["sft"]["train_loss_last"] == 1.2
    assert top["others"]["base"]["max_output_length"] == 250 and "sft" not in top["others"]


def test_a_missing_experiment_is_an_error_naming_it() -> None:
    import click

    with pytest.raises(click.ClickException, match="lt-2000"):
        lt.collect(json.loads(EXP_SHOW.read_text()), ["lt-250", "lt-2000"], "sft")


def test_the_figure_marks_censored_values_and_has_the_identity_line(tmp_path: Path) -> None:
    result = _result()
    lt.write_csv(result, tmp_path / "lt.csv")
    with (tmp_path / "lt.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["max_words"], r["max_output_length"], r["shown"]) for r in rows] == [
        ("sft produced", "250", "250", "250"), ("sft effective", "250", "125", "125"),
        ("base produced", "250", "250", "250"),
        ("sft produced", "500", "500", "500"), ("sft effective", "500", "250", "250"),
        ("base produced", "500", "250", "250"),
        ("sft produced", "1000", "1000", "≥ 1000"), ("sft effective", "1000", "500", "500"),
        ("base produced", "1000", "250", "250")]
    lt.write_png(result, tmp_path / "lt.png")
    assert (tmp_path / "lt.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = lt.summary_table(result)
    assert "≥ 1000" in table and "250" in table


# ----------------------------------------------------------------------------------------------- DVC (slow)

STAGE = """import json, os, sys, yaml
name = sys.argv[1]
cap = yaml.safe_load(open("params.yaml"))["mix"]["cap"]
with open(os.environ["LT_LOG"], "a") as f:
    f.write(f"{name} {cap}\\n")
os.makedirs("metrics", exist_ok=True)
if name == "up":
    open("up.txt", "w").write("100 200 300 600 900")
elif name == "mix":
    open("mix.txt", "w").write(" ".join(x for x in open("up.txt").read().split() if int(x) <= cap))
elif name == "sft":
    open("sft.txt", "w").write(max(open("mix.txt").read().split(), key=int))
elif name == "dpo":
    open("dpo.txt", "w").write(open("sft.txt").read())
elif name == "ruler":
    json.dump({"sft": int(open("sft.txt").read()), "dpo": int(open("dpo.txt").read())},
              open("metrics/ruler.json", "w"))
"""

DVC_YAML = """stages:
  up: {cmd: python stage.py up, deps: [stage.py], outs: [up.txt]}
  mix: {cmd: python stage.py mix, deps: [up.txt], params: [mix], outs: [mix.txt]}
  sft: {cmd: python stage.py sft, deps: [mix.txt], outs: [sft.txt]}
  dpo: {cmd: python stage.py dpo, deps: [sft.txt], outs: [dpo.txt]}
  ruler: {cmd: python stage.py ruler, deps: [sft.txt, dpo.txt], metrics: [{metrics/ruler.json: {cache: false}}]}
"""


@pytest.mark.slow
def test_queued_single_item_experiments_run_only_their_stages_in_order(tmp_path: Path) -> None:
    import os

    repo, log = tmp_path / "repo", tmp_path / "log.txt"
    repo.mkdir()
    (repo / "stage.py").write_text(STAGE)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "params.yaml").write_text("mix:\n  cap: 900\n")
    env = {**os.environ, "LT_LOG": str(log), "DVC_NO_ANALYTICS": "1",
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}

    def sh(*args: str) -> str:
        return subprocess.run(list(args), cwd=repo, env=env, check=True, capture_output=True, text=True).stdout

    def dvc(*args: str) -> str:
        return sh(sys.executable, "-m", "dvc", *args)

    sh("git", "init", "-q")
    dvc("init", "-q")
    dvc("repro")
    sh("git", "add", "-A")
    sh("git", *lt.GIT_ID, "commit", "-qm", "baseline")
    log.write_text("")
    # the bench's commands: 200 and 300 differ from the baseline, 900 is the baseline; then the wrong order
    for cap in (200, 300, 900):
        dvc("exp", "run", "--queue", "-s", "-n", f"cap-{cap}", "-S", f"mix.cap={cap}", "mix", "sft", "ruler")
    dvc("exp", "run", "--queue", "-s", "-n", "reversed-600", "-S", "mix.cap=600", "ruler", "sft", "mix")
    dvc("queue", "start", "-j", "1")
    import time

    for _ in range(120):
        states = lt.queue_states(dvc("queue", "status"))
        if len(states) == 4 and not any(s in ("Queued", "Running") for s in states.values()):
            break
        time.sleep(1)
    assert set(states.values()) == {"Success"}, states
    runs = log.read_text().split("\n")
    # dpo (upstream of ruler) never ran: ruler read the baseline's dpo.txt, checked out into the experiment's
    # workspace; the condition equal to the baseline ran nothing
    assert sorted(r for r in runs if r) == sorted(["mix 200", "sft 200", "ruler 200", "mix 300", "sft 300",
                                                   "ruler 300", "mix 600"])
    found = lt.experiments(json.loads(dvc("exp", "show", "--json")))
    ruler = {n: e["metrics"]["metrics/ruler.json"] for n, e in found.items()}
    assert ruler["cap-200"] == {"sft": 200, "dpo": 900} and ruler["cap-300"] == {"sft": 300, "dpo": 900}
    assert ruler["cap-900"] == {"sft": 900, "dpo": 900}
    # the wrong order: mix ran, then sft and ruler had already been found unchanged
    assert ruler["reversed-600"] == {"sft": 900, "dpo": 900}
    dvc("queue", "stop")


# The bench itself, end to end, on a source repository of trivial stages with the real ones' names, params and
# metrics files: clone, recipe, baseline, queued experiments, results and figure.
TOY_STAGE = """import json, os, sys, yaml
name = sys.argv[1]
params = yaml.safe_load(open("params.yaml"))
cap = params["mix"]["max_output_words"]
os.makedirs("metrics", exist_ok=True)
if name == "postprocess":
    open("long.txt", "w").write("100 200 300 450 600 900")
elif name == "mix":
    kept = [int(x) for x in open("long.txt").read().split() if cap is None or int(x) <= cap]
    open("mix.txt", "w").write(" ".join(map(str, kept)))
    split = {"long": {"examples": len(kept), "tokens": 2 * sum(kept), "words": {"max": max(kept), "total": sum(kept)}},
             "general": {"examples": 2, "tokens": 100, "words": {"max": 50, "total": 80}}}
    json.dump({"max_output_words": cap, "left_out": {"long": 6 - len(kept), "general": 0}, "train": split,
               "validation": {"long": {"examples": 0, "tokens": 0}, "general": {"examples": 0, "tokens": 0}}},
              open("metrics/mix.json", "w"))
elif name == "sft":
    open("sft.txt", "w").write(max(open("mix.txt").read().split(), key=int))
    json.dump({"steps": 3, "train_loss_last": 1.0}, open("metrics/sft.json", "w"))
elif name == "dpo":
    open("dpo.txt", "w").write(open("sft.txt").read())
elif name == "ruler":
    top = max(params["ruler"]["lengths"])
    reach = max([n for n in params["ruler"]["lengths"] if n <= int(open("sft.txt").read())], default=0)
    out = {"sft": {"max_output_length": reach, "max_output_length_censored": reach == top,
                   "max_output_length_effective": reach // 2, "max_output_length_effective_censored": False,
                   "mean_words": {str(n): float(min(n, reach)) for n in params["ruler"]["lengths"]}},
           "base": {"max_output_length": 250, "max_output_length_censored": False}}
    json.dump(out, open("metrics/ruler.json", "w"))
"""

TOY_DVC_YAML = """stages:
  postprocess: {cmd: python stage.py postprocess, deps: [stage.py], outs: [long.txt]}
  mix: {cmd: python stage.py mix, deps: [long.txt], params: [mix], outs: [mix.txt],
        metrics: [{metrics/mix.json: {cache: false}}]}
  sft: {cmd: python stage.py sft, deps: [mix.txt], outs: [sft.txt], metrics: [{metrics/sft.json: {cache: false}}]}
  dpo: {cmd: python stage.py dpo, deps: [sft.txt], outs: [dpo.txt]}
  ruler: {cmd: python stage.py ruler, deps: [sft.txt, dpo.txt], params: [ruler],
          metrics: [{metrics/ruler.json: {cache: false}}]}
"""


@pytest.mark.slow
def test_the_bench_end_to_end_on_trivial_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from click.testing import CliRunner

    source = tmp_path / "source"
    (source / "configs" / "params").mkdir(parents=True)
    (source / "stage.py").write_text(TOY_STAGE)
    (source / "dvc.yaml").write_text(TOY_DVC_YAML)
    (source / "params.yaml").write_text("mix:\n  max_output_words: null\nruler:\n  lengths: [250, 500, 1000]\n")
    (source / "configs" / "params" / "length-transfer.yaml").write_text("mix:\n  max_output_words: 1000\n")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for args in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"], ["git", "add", "-A"],
                 ["git", *lt.GIT_ID, "commit", "-qm", "source"]):
        subprocess.run(args, cwd=source, env=env, check=True, capture_output=True)
    saved: dict[str, Any] = {}
    monkeypatch.setattr(lt, "PLOT_CSV", tmp_path / "out" / "length_transfer.csv")
    monkeypatch.setattr(lt, "PLOT_PNG", tmp_path / "out" / "length_transfer.png")
    monkeypatch.setattr(lt, "ROOT", tmp_path)
    monkeypatch.setattr(lt, "save_result", lambda name, data: saved.setdefault(name, data) and tmp_path / name)
    monkeypatch.setattr(lt, "POLL_S", 1.0)
    clone = tmp_path / "clone"
    out = CliRunner().invoke(lt.main, ["--source", str(source), "--keep", str(clone)])
    assert out.exit_code == 0, out.output + repr(out.exception)
    result = saved["length_transfer"]
    assert [c["max_output_words"] for c in result["conditions"]] == [250, 500, 1000] and result["failed"] == []
    by_x = {c["max_output_words"]: c for c in result["conditions"]}
    assert {x: c["sft_data"]["max_words"] for x, c in by_x.items()} == {250: 200, 500: 450, 1000: 900}
    assert {x: c["sft_data"]["left_out"]["long"] for x, c in by_x.items()} == {250: 4, 500: 2, 1000: 0}
    assert {x: c["ruler"]["max_output_length"] for x, c in by_x.items()} == {250: 0, 500: 250, 1000: 500}
    assert by_x[1000]["others"]["base"]["max_output_length"] == 250
    assert result["baseline_stages"] == ["postprocess", "mix", "sft", "dpo", "ruler"]
    assert (tmp_path / "out" / "length_transfer.png").read_bytes()[:4] == b"\x89PNG"
    # the clone keeps its experiments; --collect reads the same figures again
    saved.clear()
    again = CliRunner().invoke(lt.main, ["--collect", str(clone)])
    assert again.exit_code == 0, again.output + repr(again.exception)
    assert saved["length_transfer"]["conditions"] == result["conditions"]
    assert saved["length_transfer"]["commit"] == subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, check=True).stdout.strip()
