"""The export stage: a Hugging Face dataset directory that datasets.load_dataset reads, with an honest card."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from longwriter.agentwrite.export import ExportConfig, git_revision, push_to_hub, recipe_hash, run_export
from longwriter.config import build
from longwriter.errors import ConfigError, InputError
from longwriter.schemas import LongSamples, validate

ROOT = Path(__file__).parent.parent


def _samples(path: Path, n: int = 5) -> Path:
    rows = []
    for i in range(n):
        zh = i % 2 == 1
        answer = ("长" * (1500 * i + 10)) if zh else " ".join(["word"] * (700 * i + 10))
        rows.append({"id": f"s{i}", "lang": "zh" if zh else "en", "source": "pool",
                     "messages": [{"role": "user", "content": f"Write {i}."},
                                  {"role": "assistant", "content": answer}],
                     "words": 1500 * i + 10 if zh else 700 * i + 10, "planned_words": 1000, "sections": 3,
                     "lines_removed": i})
    validate(pl.DataFrame(rows), LongSamples, "samples").write_parquet(path)
    return path


PARAMS = {
    "select": {"selector": {"provider": "embedded"}},
    "plan": {"generator": {"provider": "openai", "base_url": "https://bot:s3cret@llm.internal.example.com/v1",
                           "model": "gpt-x",
                           "api_key_env": "EXPORT_TEST_KEY", "revision": "2026-11"}},
    "write": {"mode": "parallel"},
}


def test_the_export_loads_with_datasets_and_its_card_says_what_and_whence(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPORT_TEST_KEY", "sk-very-secret-value")
    out = tmp_path / "hf"
    metrics = run_export(_samples(tmp_path / "s.parquet"), PARAMS, "params.yaml", out, tmp_path / "m.json",
                         ExportConfig(shard_rows=2), root=ROOT)
    assert metrics["examples"] == 5 and metrics["shards"] == 3 and metrics["by_lang"] == {"en": 3, "zh": 2}
    assert sorted(p.name for p in (out / "data").iterdir()) == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    from datasets import load_dataset

    # the test's own datasets cache: an earlier or a concurrent run's dataset info would be checked against it
    ds = load_dataset(str(out), cache_dir=str(tmp_path / "hf-cache"))
    assert list(ds) == ["train"] and ds["train"].num_rows == 5
    assert ds["train"]["id"] == [f"s{i}" for i in range(5)]
    assert ds["train"][3]["messages"][1]["content"] == "长" * 4510
    text = (out / "README.md").read_text(encoding="utf-8")
    assert "language: [en, zh]" in text and "path: data/train-*.parquet" in text
    assert "| en | 3 |" in text and "| zh | 2 |" in text
    # words 10, 1,510, 1,410, 4,510, 2,810
    assert metrics["length_histogram"] == {"0-1,000": 1, "1,000-2,000": 2, "2,000-5,000": 2, "5,000-10,000": 0,
                                           "10,000-20,000": 0, "20,000+": 0}
    assert "| planner | gpt-x (an OpenAI-compatible API), revision 2026-11 |" in text
    assert "s3cret" not in text and "internal" not in text  # an endpoint URL can carry a host name, credentials
    assert "smollm2-135m-instruct (llama.cpp)" in text and "parallel mode" in text
    assert f"hash `{recipe_hash(PARAMS)}`" in text and git_revision(ROOT).split("+")[0] in text
    assert "sk-very-secret-value" not in text and "EXPORT_TEST_KEY" not in text


def test_a_failed_export_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    import longwriter.agentwrite.export as export

    out = tmp_path / "hf"
    samples = _samples(tmp_path / "s.parquet")
    run_export(samples, PARAMS, "params.yaml", out, tmp_path / "m.json", ExportConfig())
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(export, "card", broken)
    with pytest.raises(RuntimeError):
        run_export(samples, PARAMS, "params.yaml", out, tmp_path / "m.json", ExportConfig(shard_rows=1))
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_recipe_hash_follows_the_recipe_only():
    assert recipe_hash(PARAMS) == recipe_hash({**PARAMS, "sft": {"lr": 1}})
    assert recipe_hash(PARAMS) != recipe_hash({**PARAMS, "write": {"mode": "sequential"}})


def test_git_revision_outside_a_checkout(tmp_path):
    assert git_revision(tmp_path) == "unknown"


def test_push_refuses_what_is_not_an_export(tmp_path):
    with pytest.raises(InputError, match="not an exported dataset"):
        push_to_hub(tmp_path, "someone/data")


def test_export_config_is_checked():
    with pytest.raises(ConfigError, match="shard_rows"):
        build(ExportConfig, {"shard_rows": 0}, "params.yaml:export")


def test_the_stage_script_exports_with_the_project_params(tmp_path):
    samples = _samples(tmp_path / "s.parquet", 2)
    done = subprocess.run([sys.executable, "-m", "stages.export", "--samples", str(samples), "--output",
                           str(tmp_path / "hf"), "--metrics", str(tmp_path / "m.json"), "--timings",
                           str(tmp_path / "t.json")],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "2 examples in 1 shard(s)" in done.stdout
    assert "smollm2-135m-instruct (llama.cpp)" in (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    # the timing figures go where --timings says, not beside the metrics
    assert (tmp_path / "t.json").is_file() and not (tmp_path / "timings").exists()
