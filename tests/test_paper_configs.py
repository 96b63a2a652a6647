"""The params overlays in configs/params/ merged over params.yaml build through the stages' own dataclasses.

Each overlay is a partial params file: sections whose mappings merge key by key over params.yaml's (YAML anchors
resolved), lists and scalars replacing, the deep merge bench/length_transfer.py applies its recipes with and
docs/scale.md's merge command runs. Every section of the merged params is then built as each stage builds it
(``build(Cls, section(params, "x"), ...)``, the section -> classes map read from stages/*.py), so a misspelt or
unknown key, or a bad value, fails here naming the overlay file and the key. The paper-*.yaml overlays are also
checked against the paper's settings (/work/shared/METHOD.md)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_config import section_classes

from longwriter.config import SECTIONS, build, section
from longwriter.errors import ConfigError
from longwriter.llm.spec import ModelSpec

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from length_transfer import deep_merge  # noqa: E402

OVERLAYS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs" / "params").glob("*.yaml"))
PAPER = ("configs/params/paper-data.yaml", "configs/params/paper-train.yaml", "configs/params/paper-eval.yaml")


def load(path: str | Path) -> dict[str, Any]:
    data = yaml.safe_load(Path(ROOT / path).read_text(encoding="utf-8")) or {}
    assert isinstance(data, dict), f"{path}: an overlay is a mapping of params.yaml sections"
    return data


def merged(*overlays: str) -> dict[str, Any]:
    params = load("params.yaml")
    for overlay in overlays:
        params = deep_merge(params, load(overlay))
    return params


def build_all(params: dict[str, Any], where: str) -> dict[str, list[Any]]:
    """Every section built as the stages build it; ``where`` names the file in each error."""
    unknown = sorted(set(params) - SECTIONS)
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {', '.join(unknown)}")
    built: dict[str, list[Any]] = {}
    for key, classes in section_classes().items():
        built[key] = [build(cls, section(params, key, where), f"{where}:{key}")
                      for cls in sorted(classes, key=lambda c: c.__name__)]
    for name, spec in (section(params, "models", where)).items():
        build(ModelSpec, spec, f"{where}:models.{name}")
    train = section(params, "train", where)  # dvc.yaml writes train.launch into the training stages' cmd
    if set(train) - {"launch"} or not isinstance(train.get("launch", ""), str):
        raise ConfigError(f"{where}:train: only launch (a command prefix) is known, got {train!r}")
    return built


def one(built: dict[str, list[Any]], key: str) -> Any:
    (cfg,) = {repr(c): c for c in built[key]}.values()  # every stage reading the section builds the same value
    return cfg


def test_there_are_overlays_and_the_paper_ones_among_them() -> None:
    assert set(PAPER) <= set(OVERLAYS)
    assert {"configs/params/llama3.1-8b.yaml", "configs/params/grpo-gpu.yaml"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_an_overlay_over_params_yaml_builds_every_section(overlay: str) -> None:
    build_all(merged(overlay), overlay)


def test_the_paper_overlays_merged_together_build() -> None:
    build_all(merged(*PAPER), "+".join(PAPER))


@pytest.mark.parametrize(("text", "key"), [
    ("sft:\n  train:\n    learning_rat: 1.0e-5\n", "typo.yaml:sft.train: unknown key(s) learning_rat"),
    ("ruler:\n  lenghts: [1000]\n", "typo.yaml:ruler: unknown key(s) lenghts"),
    ("eval:\n  sampling: {temperature: hot}\n", "typo.yaml:eval.sampling.temperature: expected float"),
    ("wirte:\n  mode: parallel\n", "typo.yaml: unknown section(s) wirte"),
    ("train:\n  lauch: accelerate launch\n", "typo.yaml:train: only launch"),
])
def test_a_typo_in_an_overlay_fails_naming_file_and_key(text: str, key: str, tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(text, encoding="utf-8")
    params = deep_merge(load("params.yaml"), yaml.safe_load(text))
    with pytest.raises(ConfigError) as info:
        build_all(params, path.name)
    assert str(info.value).startswith(key), str(info.value)


def test_paper_data_is_longwriter_6k() -> None:
    built = build_all(merged("configs/params/paper-data.yaml"), "paper-data.yaml")
    select, plan, write = one(built, "select"), one(built, "plan"), one(built, "write")
    assert select.per_lang == 3000 and select.max_required_words is None  # 3,000 zh + 3,000 en
    assert select.selector.model == "gpt-4o" and select.selector.api_key_env == "OPENAI_API_KEY"
    assert (plan.min_words, plan.max_words) == (200, 1000)  # paragraphs of 200-1,000 words
    assert plan.max_paragraphs <= one(built, "postprocess").max_sections
    assert write.mode == "sequential" and write.history_words is None
    assert write.sampling.max_tokens == 32768
    assert (write.sampling.frequency_penalty, write.sampling.presence_penalty) == (0.0, 0.0)
    for spec in (select.selector, plan.generator, write.generator):
        assert spec.provider == "openai" and spec.price_input_per_mtok == 2.5 and spec.price_output_per_mtok == 10.0


def test_paper_train_is_thudms_recipe() -> None:
    params = merged("configs/params/paper-train.yaml")
    built = build_all(params, "paper-train.yaml")
    sft, dpo = one(built, "sft"), one(built, "dpo")
    t = sft.train
    assert (t.num_train_epochs, t.per_device_train_batch_size, t.gradient_accumulation_steps) == (4, 1, 1)
    assert (t.learning_rate, t.lr_scheduler_type, t.warmup_steps) == (1e-5, "cosine", 0.03)
    assert (t.weight_decay, t.adam_beta2, t.bf16, t.gradient_checkpointing) == (0.1, 0.95, True, True)
    assert t.max_length == 32768 and sft.packing and sft.padding_free and sft.loss_averaging == "token"
    assert sft.assistant_turns == "all" and t.save_steps == 400  # every assistant turn; THUDM's checkpoints
    assert dpo.train.max_steps == 250 and dpo.train.max_length == 32768
    assert one(built, "base").dtype == "bfloat16"
    assert "deepspeed_zero3" in params["train"]["launch"]


def test_paper_eval_is_the_papers_benchmarks_and_sampling() -> None:
    built = build_all(merged("configs/params/paper-eval.yaml"), "paper-eval.yaml")
    ev, ruler, longbench, judge = (one(built, k) for k in ("eval", "ruler", "longbench", "judge"))
    s = ev.sampling
    assert (s.temperature, s.top_p, s.top_k, s.max_tokens) == (0.5, 0.8, 50, 32768)
    assert ruler.input == "data/eval/longwrite_ruler.jsonl" and ruler.per_length is None
    assert ruler.lengths == (1000, 2000, 5000, 10000, 20000, 30000) and ruler.max_tokens == 32768
    assert longbench.input == "data/eval/longbench_write.jsonl" and longbench.per_lang is None
    assert judge.model.model == "gpt-4o" and judge.model.api_key_env == "OPENAI_API_KEY"
    assert judge.model.price_input_per_mtok == 2.5 and judge.sampling.temperature == 0.5
    names = {m.name for m in ev.models}
    assert {a for pair in one(built, "compare").pairs for a in pair} <= names


def test_a_todo_names_a_known_section() -> None:
    """`# TODO(key): value` lines stand for settings no key holds yet (the lead switches them on)."""
    todos = [(p, m) for p in PAPER for m in re.findall(r"^\s*#\s*TODO\(([^)]+)\):",
                                                       (ROOT / p).read_text(encoding="utf-8"), re.MULTILINE)]
    for path, key in todos:
        assert key.split(".")[0] in SECTIONS, f"{path}: TODO({key}) names no params section"


@pytest.mark.parametrize("overlay", PAPER)
def test_a_paper_overlay_says_how_to_apply_it(overlay: str) -> None:
    head = (ROOT / overlay).read_text(encoding="utf-8").split("\n\n")[0]
    assert "How to apply" in head and "docs/scale.md" in head
