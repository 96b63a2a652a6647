"""A benchmark request's language: the file's ``lang`` field, else membership in ``longbench.en_file``, else the
prompt's script; how the LongBench stages pass ``en_file`` on; and dvc.yaml listing the optional files
(``longbench.en_file``, ``judge.prompt_file``) that params.yaml sets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from click.testing import CliRunner

from longwriter.benchmark import read_benchmark
from longwriter.errors import InputError
from longwriter.language import languages

ROOT = Path(__file__).parent.parent

EN = {"prompt": "Write a 300-word story about a cat.", "type": "Fiction", "length": 300}
ZH = {"prompt": "写一篇800字的散文，描写秋天的北京。", "type": "散文", "length": 800}
# Chinese script, asking for an English essay: the public release counts it in its English half
ZH_FOR_EN = {"prompt": "请以“fall in love with tea culture”为题 写一篇300词的英语作文", "type": "Popular Science",
             "length": 300}


def _write(path: Path, rows: list[Any]) -> Path:
    """One line per entry: dicts as JSON, strings verbatim."""
    path.write_text("".join((json.dumps(r, ensure_ascii=False) if isinstance(r, dict) else r) + "\n"
                            for r in rows), encoding="utf-8")
    return path


# --- the lang field ------------------------------------------------------------------------------------------


def test_the_script_decides_without_lang_field_or_en_file(tmp_path: Path) -> None:
    bench = read_benchmark(_write(tmp_path / "b.jsonl", [EN, ZH_FOR_EN, ZH]))
    assert bench["lang"].to_list() == ["en", "zh", "zh"]


def test_a_lang_field_decides(tmp_path: Path) -> None:
    rows = [{**EN, "lang": "zh"}, {**ZH_FOR_EN, "lang": "en"}, {**ZH, "lang": "zh"}]
    bench = read_benchmark(_write(tmp_path / "b.jsonl", rows))
    assert bench["lang"].to_list() == ["zh", "en", "zh"]
    assert bench.columns == ["index", "prompt", "type", "required", "lang", "bucket"]


def test_a_lang_field_wins_over_en_file(tmp_path: Path) -> None:
    en_file = _write(tmp_path / "en.jsonl", [EN])
    rows = [{**EN, "lang": "zh"}, {**ZH, "lang": "en"}]
    assert read_benchmark(_write(tmp_path / "b.jsonl", rows), en_file=en_file)["lang"].to_list() == ["zh", "en"]


def test_a_lang_field_survives_the_lengths_filter(tmp_path: Path) -> None:
    rows = [{**EN, "lang": "zh"}, {**ZH, "lang": "en"}, {**EN, "length": 1000, "lang": "en"}]
    bench = read_benchmark(_write(tmp_path / "ruler.jsonl", rows), lengths=[800, 1000])
    assert bench["required"].to_list() == [800, 1000] and bench["lang"].to_list() == ["en", "en"]


def test_a_lang_field_in_parquet(tmp_path: Path) -> None:
    path = tmp_path / "b.parquet"
    pl.DataFrame([{**ZH_FOR_EN, "lang": "en"}, {**EN, "lang": "en"}]).write_parquet(path)
    assert read_benchmark(path)["lang"].to_list() == ["en", "en"]


@pytest.mark.parametrize(("rows", "row"), [
    pytest.param([{**EN, "lang": "en"}, {**ZH, "lang": "zh"}, {**ZH, "lang": "fr"}], 3, id="unknown-language"),
    # the field on one row only: every other row lacks it, the first one is named
    pytest.param([EN, ZH, {**ZH, "lang": "zh"}], 1, id="given-on-one-row-only"),
    pytest.param([{**EN, "lang": "en"}, {**ZH, "lang": "ZH"}], 2, id="upper-case"),
    pytest.param([{**EN, "lang": "en"}, {**ZH, "lang": ""}], 2, id="empty"),
    pytest.param([{**EN, "lang": "en"}, {**ZH, "lang": "other"}], 2, id="other"),
    pytest.param([{**EN, "lang": "en"}, {**ZH, "lang": None}], 2, id="null"),
    pytest.param([{**EN, "lang": "en"}, ZH, {**EN, "lang": "en"}], 2, id="missing-on-a-row"),
    pytest.param([{**EN, "lang": 1}, {**ZH, "lang": 2}], 1, id="numbers"),
    pytest.param([{**EN, "lang": "en"}, {**ZH, "lang": "zh"}, {**ZH, "lang": 3}], 3, id="mixed-types"),
    pytest.param(["", {**EN, "lang": "en"}, {**ZH, "lang": "cn"}], 3, id="blank-lines-counted"),
])
def test_a_bad_lang_names_file_row_and_column(tmp_path: Path, rows: list[Any], row: int) -> None:
    path = _write(tmp_path / "b.jsonl", rows)
    with pytest.raises(InputError) as err:
        read_benchmark(path)
    assert (err.value.path, err.value.row, err.value.column) == (str(path), row, "lang")


# --- longbench.en_file ---------------------------------------------------------------------------------------


def test_en_file_membership_decides(tmp_path: Path) -> None:
    other_en = {**EN, "prompt": "Write a 500-word report on rivers.", "length": 500}
    # the English half holds the Chinese-script request for an English essay; other_en is not in it
    en_file = _write(tmp_path / "longbench_en.jsonl", [EN, {**ZH_FOR_EN, "prompt": f"  {ZH_FOR_EN['prompt']}\n"}])
    bench = read_benchmark(_write(tmp_path / "b.jsonl", [EN, ZH_FOR_EN, ZH, other_en]), en_file=en_file)
    assert bench["lang"].to_list() == ["en", "en", "zh", "zh"]


def test_en_file_in_parquet(tmp_path: Path) -> None:
    en_file = tmp_path / "en.parquet"
    pl.DataFrame([ZH_FOR_EN]).write_parquet(en_file)
    assert read_benchmark(_write(tmp_path / "b.jsonl", [EN, ZH_FOR_EN]), en_file=en_file)["lang"].to_list() == [
        "zh", "en"]


@pytest.mark.parametrize(("en_rows", "row", "column", "words"), [
    pytest.param(None, None, None, "not found", id="missing-file"),
    pytest.param([{"text": "Write."}], None, "prompt", "no 'prompt' field", id="no-prompt-field"),
    pytest.param([EN, {**EN, "prompt": "  "}], 2, "prompt", "blank", id="blank-prompt"),
    pytest.param([EN, {"type": "x", "length": 3}], 2, "prompt", "missing", id="prompt-missing-on-a-row"),
    pytest.param([{"prompt": 1}, {"prompt": 2}], 1, "prompt", "not a string", id="numbers"),
    pytest.param([{**EN, "prompt": "Write a haiku."}], None, None, "none of its prompts", id="no-overlap"),
])
def test_a_bad_en_file_is_named(tmp_path: Path, en_rows: list[Any] | None, row: int | None, column: str | None,
                                words: str) -> None:
    en_file = tmp_path / "en.jsonl"
    if en_rows is not None:
        _write(en_file, en_rows)
    with pytest.raises(InputError) as err:
        read_benchmark(_write(tmp_path / "b.jsonl", [EN, ZH]), en_file=en_file)
    assert (err.value.path, err.value.row, err.value.column) == (str(en_file), row, column)
    assert words in str(err.value)


@pytest.mark.parametrize("name", ["longbench.jsonl", "longbench_buckets.jsonl", "ruler.jsonl"])
def test_the_projects_files_keep_their_script_languages(name: str) -> None:
    bench = read_benchmark(ROOT / "data" / "eval" / name)
    assert bench["lang"].to_list() == languages(bench["prompt"]).to_list()


# --- the stages pass en_file on ------------------------------------------------------------------------------


class _Stop(Exception):
    pass


def _params(tmp_path: Path, bench: Path, en_file: Path) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["longbench"] = {"input": str(bench), "en_file": str(en_file), "per_lang": None}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def test_longbench_answer_reads_the_languages_of_en_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import longwriter.eval.longbench as longbench
    from stages.longbench_answer import main

    bench, en_file = _write(tmp_path / "b.jsonl", [EN, ZH_FOR_EN, ZH]), _write(tmp_path / "en.jsonl", [ZH_FOR_EN])
    seen: list[list[str]] = []

    def answers(requests: pl.DataFrame, *args: Any, **kwargs: Any) -> Any:
        seen.append(requests["lang"].to_list())
        raise _Stop

    monkeypatch.setattr(longbench, "generate_answers", answers)
    result = CliRunner().invoke(main, ["--params", str(_params(tmp_path, bench, en_file)),
                                       "--output", str(tmp_path / "a.parquet"), "--failures",
                                       str(tmp_path / "f.parquet"), "--metrics", str(tmp_path / "m.json"),
                                       "--timings", str(tmp_path / "t.json")])
    assert isinstance(result.exception, _Stop), result.output
    assert seen == [["zh", "en", "zh"]]


def test_longbench_passes_en_file_to_the_scores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stages.longbench as stage

    bench, en_file = _write(tmp_path / "b.jsonl", [EN, ZH_FOR_EN]), _write(tmp_path / "en.jsonl", [ZH_FOR_EN])
    seen: list[Any] = []

    def run(*args: Any, **kwargs: Any) -> Any:
        seen.append((args[2], kwargs.get("en_file")))
        raise _Stop

    monkeypatch.setattr(stage, "run_longbench", run)
    result = CliRunner().invoke(stage.main, ["--params", str(_params(tmp_path, bench, en_file)), *(
        arg for option, name in (("--answers", "a.parquet"), ("--answer-failures", "af.parquet"),
                                 ("--output", "s.parquet"), ("--failures", "f.parquet"), ("--metrics", "m.json"),
                                 ("--timings", "t.json"), ("--plot-csv", "p.csv"), ("--plot-png", "p.png"))
        for arg in (option, str(tmp_path / name)))])
    assert isinstance(result.exception, _Stop), result.output
    assert seen == [(str(bench), str(en_file))]


def test_run_longbench_reads_the_benchmark_with_en_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import longwriter.eval.longbench as longbench
    from longwriter.failures import write_failures
    from longwriter.judge import JudgeConfig
    from longwriter.llm import ClientSettings
    from longwriter.schemas import Answers, empty, write_checked

    answers, failures = tmp_path / "answers.parquet", tmp_path / "failures.parquet"
    write_checked(empty(Answers), Answers, answers)
    write_failures([], failures)
    calls: list[Any] = []

    def spy(path: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append((path, kwargs.get("en_file")))
        raise _Stop

    monkeypatch.setattr(longbench, "judge_answers", lambda *a, **k: ([], {}))
    monkeypatch.setattr(longbench, "read_benchmark", spy)
    with pytest.raises(_Stop):
        longbench.run_longbench(JudgeConfig(), ClientSettings(cache_dir=str(tmp_path)), "b.jsonl", answers,
                                failures, tmp_path / "s.parquet", tmp_path / "f.parquet", tmp_path / "m.json",
                                tmp_path / "p.csv", tmp_path / "p.png", en_file="en.jsonl")
    assert calls == [("b.jsonl", "en.jsonl")]


# --- dvc.yaml lists the optional files params.yaml sets -----------------------------------------------------

# each optional file param, and the stages that read the file (so must have it as a dep once it is set)
OPTIONAL_FILES = {"longbench.en_file": ("longbench_answer", "longbench"),
                  "judge.prompt_file": ("longbench", "dpo_pairs")}


def _deps(stage: dict[str, Any]) -> set[str]:
    return {next(iter(d)) if isinstance(d, dict) else d for d in stage.get("deps") or []}


def unlisted_optional_files(params: dict[str, Any], stages: dict[str, Any]) -> list[str]:
    """An optional file set in ``params`` that a stage reading it does not list as a dep (by its path or as
    the ``${section.key}`` interpolation): DVC would not rerun the stage when the file changes."""
    problems = []
    for key, names in OPTIONAL_FILES.items():
        section, field = key.split(".")
        value = (params.get(section) or {}).get(field)
        if value is None:
            continue
        for name in names:
            if not {value, "${" + key + "}"} & _deps(stages[name]):
                problems.append(f"stage {name}: {key} is set ({value}) but not a dep: uncomment "
                                f"'- ${{{key}}}' in dvc.yaml")
    return problems


def _repo() -> tuple[dict[str, Any], dict[str, Any]]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    return params, yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def test_the_optional_files_params_sets_are_deps() -> None:
    params, stages = _repo()
    assert unlisted_optional_files(params, stages) == []


def test_a_set_optional_file_missing_from_deps_is_named() -> None:
    params, stages = _repo()
    params = {**params, "longbench": {**params["longbench"], "en_file": "data/eval/longbench_en.jsonl"},
              "judge": {**params["judge"], "prompt_file": "data/eval/judge.txt"}}
    listed = {name: {**stage, "deps": [*stage["deps"], "${judge.prompt_file}", "data/eval/longbench_en.jsonl"]}
              for name, stage in stages.items()}
    problems = unlisted_optional_files(params, stages)
    assert len(problems) == 4 and any("stage dpo_pairs: judge.prompt_file" in p for p in problems)
    assert unlisted_optional_files(params, listed) == []


def test_the_stages_reading_an_optional_file_declare_its_param() -> None:
    _, stages = _repo()
    for key, names in OPTIONAL_FILES.items():
        for name in names:
            declared = stages[name]["params"]
            assert key in declared or key.split(".")[0] in declared, (name, key)
