"""Stage scripts as users run them: --help everywhere, and bad input stops a stage with a message naming
file, row and column, a non-zero exit code, and no output written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent
STAGES = ["select", "length_target", "plan", "write", "postprocess", "ruler", "longbench_answer", "longbench",
          "compare"]


def run_stage(name: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"stages.{name}", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("name", STAGES)
def test_help(name):
    out = run_stage(name, "--help")
    assert out.returncode == 0 and "--params" in out.stdout and name in out.stdout


def test_a_stage_takes_its_paths_from_the_command_line_only(tmp_path):
    # dvc.yaml names every path (its vars) and passes each one: a script has no second, silent default
    result = run_stage("plan", "--params", str(tmp_path / "params.yaml"))
    assert result.returncode == 2 and "Missing option '--instructions'" in result.stderr, result.stderr
    result = run_stage("export", "--samples", str(tmp_path / "s.parquet"), "--output", str(tmp_path / "hf"))
    assert result.returncode == 2 and "Missing option '--metrics'" in result.stderr, result.stderr


BAD_POOLS = {
    "malformed": (b'{"prompt": "Write a long essay about rivers."}\n{"prompt": "oops"\n', "row 2", "malformed JSON"),
    "missing_column": (b'{"text": "Write a long essay about rivers."}\n', "missing column 'prompt'", None),
    "wrong_type": (b'{"prompt": 12345678901}\n', "column 'prompt'", "wrong type"),
    "blank_prompt": (b'{"prompt": "Write a long essay about rivers."}\n{"prompt": "   "}\n', "row 2, column 'prompt'",
                     "empty"),
    "non_utf8": (b'{"prompt": "Write a long essay about rivers."}\n{"prompt": "caf\xe9 au lait"}\n', "row 2",
                 "UTF-8"),
    "empty_file": (b"", "empty", None),
    "duplicate_ids": (b'{"id": "a", "prompt": "Write about rivers at length."}\n'
                      b'{"id": "a", "prompt": "Write about mountains at length."}\n', "column 'id'", "duplicate"),
}


@pytest.mark.parametrize("case", sorted(BAD_POOLS))
def test_select_rejects_bad_pool(tmp_path, case):
    content, where, what = BAD_POOLS[case]
    pool = tmp_path / "pool.jsonl"
    pool.write_bytes(content)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"select": {"pools": [str(pool)]}, "llm": {"cache_dir": str(tmp_path / "c")}}))
    out_path = tmp_path / "selected.parquet"
    out_path.write_bytes(b"previous output")
    result = run_stage("select", "--params", str(params), "--output", str(out_path), "--failures",
                       str(tmp_path / "f.parquet"), "--metrics", str(tmp_path / "m.json"), "--timings",
                       str(tmp_path / "t.json"))
    assert result.returncode == 1
    assert str(pool) in result.stderr and where in result.stderr, result.stderr
    if what:
        assert what in result.stderr
    assert "Traceback" not in result.stderr
    assert out_path.read_bytes() == b"previous output"  # untouched
    assert not (tmp_path / "f.parquet").exists() and not (tmp_path / "m.json").exists()
    assert not (tmp_path / "t.json").exists()


def test_bad_params_name_the_key(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"plan": {"max_paragrafs": 5}}))
    result = run_stage("plan", "--params", str(params), "--instructions", str(tmp_path / "in.parquet"), "--output",
                       str(tmp_path / "p.parquet"), "--failures", str(tmp_path / "f.parquet"), "--metrics",
                       str(tmp_path / "m.json"), "--timings", str(tmp_path / "t.json"))
    assert result.returncode == 1 and "plan: unknown key(s) max_paragrafs" in result.stderr


def test_a_misspelt_params_section_stops_the_stage(tmp_path):
    # `wirte:` must not leave `write` running on all its defaults
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"wirte": {"mode": "parallel"}}))
    out = tmp_path / "sections.parquet"
    result = run_stage("write", "--params", str(params), "--instructions", str(tmp_path / "in.parquet"), "--plans",
                       str(tmp_path / "plans.parquet"), "--output", str(out), "--failures",
                       str(tmp_path / "f.parquet"), "--metrics", str(tmp_path / "m.json"), "--timings",
                       str(tmp_path / "t.json"))
    assert result.returncode == 1 and "unknown section(s) wirte" in result.stderr and str(params) in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_plan_rejects_instructions_with_bad_lang(tmp_path):
    import polars as pl
    path = tmp_path / "in.parquet"
    pl.DataFrame({"id": ["a", "b"], "prompt": ["x y z", "p q r"], "lang": ["en", "fr"], "source": ["s", "s"],
                  "required_words": [None, None], "estimated_words": [None, None]},
                 schema_overrides={"required_words": pl.Int64, "estimated_words": pl.Int64}).write_parquet(path)
    (tmp_path / "params.yaml").write_text("{}\n")
    result = run_stage("plan", "--params", str(tmp_path / "params.yaml"), "--instructions", str(path), "--output",
                       str(tmp_path / "p.parquet"), "--failures", str(tmp_path / "f.parquet"), "--metrics",
                       str(tmp_path / "m.json"), "--timings", str(tmp_path / "t.json"))
    assert result.returncode == 1
    assert f"{path}: row 2, column 'lang'" in result.stderr
    assert not (tmp_path / "p.parquet").exists()


BAD_BENCHMARKS = {
    "malformed": (b'{"prompt": "Write 300 words on rivers.", "type": "x", "length": 300}\n{"prompt": "oops"\n',
                  "row 2", "malformed JSON"),
    "missing_length": (b'{"prompt": "Write 300 words on rivers.", "type": "x"}\n', "missing column 'length'", None),
    "zero_length": (b'{"prompt": "Write about rivers.", "type": "x", "length": 300}\n'
                    b'{"prompt": "Write about hills.", "type": "x", "length": 0}\n', "row 2, column 'length'", None),
    "string_length": (b'{"prompt": "Write about rivers.", "type": "x", "length": 300}\n'
                      b'{"prompt": "Write about hills.", "type": "x", "length": "300"}\n', "row 2, column 'length'",
                      "string"),
    "blank_prompt": (b'{"prompt": " ", "type": "x", "length": 300}\n', "row 1, column 'prompt'", "empty"),
}


@pytest.mark.parametrize("stage", ["ruler", "longbench_answer"])
@pytest.mark.parametrize("case", sorted(BAD_BENCHMARKS))
def test_eval_stages_reject_bad_benchmark_files(tmp_path, stage, case):
    content, where, what = BAD_BENCHMARKS[case]
    bench = tmp_path / "bench.jsonl"
    bench.write_bytes(content)
    params = tmp_path / "params.yaml"
    section = "ruler" if stage == "ruler" else "longbench"
    extra = {"lengths": [300]} if stage == "ruler" else {}
    params.write_text(yaml.safe_dump({section: {"input": str(bench), **extra}, "llm": {"cache_dir": str(tmp_path)}}))
    out_path = tmp_path / "answers.parquet"
    out_path.write_bytes(b"previous output")
    args = ["--params", str(params), "--output", str(out_path), "--failures", str(tmp_path / "f.parquet"),
            "--metrics", str(tmp_path / "m.json"), "--timings", str(tmp_path / "t.json")]
    if stage == "ruler":
        args += ["--plot-csv", str(tmp_path / "p.csv"), "--plot-png", str(tmp_path / "p.png")]
    result = run_stage(stage, *args)
    assert result.returncode == 1
    assert str(bench) in result.stderr and where in result.stderr, result.stderr
    if what:
        assert what in result.stderr
    assert "Traceback" not in result.stderr
    assert out_path.read_bytes() == b"previous output"
    assert not [p for p in tmp_path.iterdir() if p.name not in {"bench.jsonl", "params.yaml", "answers.parquet"}
                and not p.name.startswith("responses")]
