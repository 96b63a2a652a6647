"""params.yaml sections become typed dataclasses strictly, with errors that name the key."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from longwriter.agentwrite.plan import PlanConfig
from longwriter.agentwrite.select import SelectConfig
from longwriter.config import build, read_params, section
from longwriter.errors import ConfigError
from longwriter.llm.spec import ClientSettings, ModelSpec, Sampling

WHERE = "params.yaml:select"


def config_error(data, cls=SelectConfig, where=WHERE) -> str:
    with pytest.raises(ConfigError) as info:
        build(cls, data, where)
    return str(info.value)


# --- build: success -------------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [None, {}])
def test_defaults_when_no_data(data) -> None:
    cfg = build(SelectConfig, data, WHERE)
    assert cfg == SelectConfig()
    assert cfg.pools == ("data/pool/instructions.jsonl",)
    assert cfg.per_lang == 4
    assert cfg.selector == ModelSpec()
    assert cfg.sampling == Sampling(temperature=0.0, top_p=1.0, max_tokens=96)


def test_nested_dataclasses_built_from_dicts() -> None:
    cfg = build(SelectConfig, {
        "selector": {"provider": "openai", "model": "gpt-4o", "base_url": "https://api.example/v1",
                     "api_key_env": "KEY"},
        "sampling": {"temperature": 0.2, "top_p": 0.9, "max_tokens": 50, "seed": 7},
    }, WHERE)
    assert cfg.selector == ModelSpec(provider="openai", model="gpt-4o", base_url="https://api.example/v1",
                                     api_key_env="KEY")
    assert isinstance(cfg.selector, ModelSpec)
    assert cfg.sampling == Sampling(temperature=0.2, top_p=0.9, max_tokens=50, seed=7)
    assert isinstance(cfg.sampling, Sampling)


def test_int_accepted_for_float_field() -> None:
    cfg = build(SelectConfig, {"sampling": {"temperature": 1, "top_p": 1, "max_tokens": 96}}, WHERE)
    assert cfg.sampling.temperature == 1.0
    assert type(cfg.sampling.temperature) is float
    assert type(cfg.sampling.top_p) is float


def test_list_becomes_tuple() -> None:
    cfg = build(SelectConfig, {"pools": ["a.jsonl", "b.parquet"]}, WHERE)
    assert cfg.pools == ("a.jsonl", "b.parquet")
    assert isinstance(cfg.pools, tuple)


def test_optional_field_accepts_null() -> None:
    cfg = build(SelectConfig, {"per_lang": None, "max_required_words": 3000}, WHERE)
    assert cfg.per_lang is None
    assert cfg.max_required_words == 3000


def test_built_config_is_frozen() -> None:
    cfg = build(SelectConfig, {}, WHERE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]


def test_partial_nested_section_keeps_field_defaults() -> None:
    cfg = build(SelectConfig, {"sampling": {"seed": 1}}, WHERE)
    assert cfg.sampling == Sampling(temperature=0.0, top_p=1.0, max_tokens=96, seed=1)


# --- build: errors --------------------------------------------------------------------------------------

def test_unknown_key_named() -> None:
    msg = config_error({"max_concurrancy": 4, "seed": 1})
    assert msg.startswith("params.yaml:select:")
    assert "max_concurrancy" in msg
    assert "unknown key" in msg


def test_unknown_nested_key_named_with_path() -> None:
    msg = config_error({"sampling": {"temprature": 0.1}})
    assert msg.startswith("params.yaml:select.sampling:")
    assert "temprature" in msg


def test_wrong_type_names_dotted_key() -> None:
    msg = config_error({"per_lang": "three"})
    assert msg.startswith("params.yaml:select.per_lang:")
    assert "'three'" in msg
    assert "expected int" in msg


@pytest.mark.parametrize(("data", "key"), [
    ({"per_lang": True}, "params.yaml:select.per_lang"),  # bool is not an int here
    ({"seed": 1.5}, "params.yaml:select.seed"),
    ({"sampling": {"temperature": "hot"}}, "params.yaml:select.sampling.temperature"),
    ({"sampling": {"temperature": True}}, "params.yaml:select.sampling.temperature"),
    ({"pools": "a.jsonl"}, "params.yaml:select.pools"),
    ({"pools": ["a.jsonl", 3]}, "params.yaml:select.pools[1]"),
    ({"selector": "embedded"}, "params.yaml:select.selector"),
])
def test_wrong_types_rejected(data, key: str) -> None:
    assert config_error(data).startswith(key + ":")


@pytest.mark.parametrize(("data", "key"), [
    ({"per_lang": -1}, "per_lang"), ({"per_lang": 0}, "per_lang"), ({"max_required_words": 0}, "max_required_words"),
    ({"min_prompt_chars": 50, "max_prompt_chars": 10}, "min_prompt_chars"), ({"max_attempts": 0}, "max_attempts"),
    ({"pools": []}, "pools"),
])
def test_select_values_out_of_range_are_refused_naming_the_key(data, key: str) -> None:
    msg = config_error(data)
    assert msg.startswith("params.yaml:select") and key in msg, msg


def test_literal_violation() -> None:
    msg = config_error({"selector": {"provider": "azure"}})
    assert msg.startswith("params.yaml:select.selector.provider:")
    assert "'azure'" in msg
    assert "'embedded'" in msg and "'openai'" in msg


def test_structured_output_literal_violation() -> None:
    msg = config_error({"selector": {"structured_output": "xml"}})
    assert msg.startswith("params.yaml:select.selector.structured_output:")


@pytest.mark.parametrize("selector", [
    {"provider": "openai", "model": "gpt-4o"},
    {"provider": "openai", "base_url": "https://api.example/v1"},
])
def test_openai_needs_base_url_and_model(selector) -> None:
    msg = config_error({"selector": selector})
    assert msg.startswith("params.yaml:select.selector:")
    assert "base_url" in msg


def test_post_init_validation_becomes_config_error() -> None:
    msg = config_error({"min_paragraphs": 5, "max_paragraphs": 2}, cls=PlanConfig, where="params.yaml:plan")
    assert msg.startswith("params.yaml:plan:")
    assert "min_paragraphs" in msg
    msg = config_error({"max_concurrency": 0}, cls=ClientSettings, where="params.yaml:llm")
    assert msg.startswith("params.yaml:llm:")
    assert "max_concurrency" in msg


def test_n_ctx_lower_bound() -> None:
    assert "n_ctx" in config_error({"selector": {"n_ctx": 10}})


# --- read_params / section ------------------------------------------------------------------------------

def test_read_params_ok(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("select:\n  per_lang: 5\n  pools: [a.jsonl]\n", encoding="utf-8")
    params = read_params(path)
    assert params == {"select": {"per_lang": 5, "pools": ["a.jsonl"]}}
    cfg = build(SelectConfig, section(params, "select"), WHERE)
    assert (cfg.per_lang, cfg.pools) == (5, ("a.jsonl",))


def test_read_params_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="params file not found") as info:
        read_params(path)
    assert str(path) in str(info.value)


def test_read_params_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("select: [unclosed\n  per_lang: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_params(path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n", ""],
                         ids=["list", "str", "int", "empty"])
def test_read_params_non_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_params(path)


def test_read_params_refuses_a_misspelt_section(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("write:\n  mode: parallel\nwirte:\n  mode: sequential\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown section") as info:
        read_params(path)
    assert str(path) in str(info.value) and "wirte" in str(info.value) and "write" in str(info.value)


def test_the_shipped_params_files_have_only_known_sections() -> None:
    root = Path(__file__).parent.parent
    for path in [root / "params.yaml", *sorted((root / "configs" / "params").glob("*.yaml"))]:
        read_params(path)


def test_section_missing_is_empty_and_non_mapping_rejected() -> None:
    assert section({}, "select") == {}
    assert section({"select": None}, "select") == {}
    with pytest.raises(ConfigError, match="'select' must be a mapping"):
        section({"select": [1, 2]}, "select")


# --- ModelSpec ------------------------------------------------------------------------------------------

def test_resolved_structured_output() -> None:
    assert ModelSpec().resolved_structured_output() == "json_object"
    openai = ModelSpec(provider="openai", model="m", base_url="http://localhost:1/v1")
    assert openai.resolved_structured_output() == "json_schema"
    assert ModelSpec(structured_output="none").resolved_structured_output() == "none"
    assert dataclasses.replace(openai, structured_output="none").resolved_structured_output() == "none"
    assert ModelSpec(structured_output="json_schema").resolved_structured_output() == "json_schema"
    assert dataclasses.replace(openai, structured_output="json_object").resolved_structured_output() == "json_object"


# --- one default per param: params.yaml's value is the dataclass's default -----------------------------------
#
# params.yaml holds the run's value of every key it lists, and the dataclass a stage builds from that section has
# the same value as the key's default, so there is one default per param and a reader of either file sees it.
# Which dataclass a section builds is read from the stage scripts (`build(Cls, section(params, "x"), ...)`). A
# nested mapping (sampling, sft.train, a model spec put in place by a YAML anchor such as `selector: *embedded`) is
# compared key by key with the field's own default, the way build() reads a partial mapping; anything else (a
# scalar, a list such as eval.models or compare.pairs) as a whole, after build()'s conversions (list -> tuple, int
# -> float). The `models` section holds the specs the anchors name: candidates, not values (a stage reads one only
# where an anchor puts it, and is compared there), so each is only checked to build as a ModelSpec. `train`
# (train.launch) builds no dataclass: dvc.yaml writes it into the training stages' cmd.

ROOT = Path(__file__).parent.parent
NO_DATACLASS = {"models", "train"}


def section_classes() -> dict[str, set[type]]:
    """Each params section and the dataclasses the stage scripts build from it."""
    found: dict[str, set[type]] = {}
    for script in sorted((ROOT / "stages").glob("*.py")):
        pairs = re.findall(r'build\((\w+),\s*section\(params,\s*"(\w+)"', script.read_text(encoding="utf-8"))
        if pairs:
            module = importlib.import_module(f"stages.{script.stem}")
            for cls_name, key in pairs:
                found.setdefault(key, set()).add(getattr(module, cls_name))
    return found


def _differences(built: Any, default: Any, data: dict[str, Any], where: str, owner: str) -> list[str]:
    out = []
    for key, value in data.items():
        got, want = getattr(built, key), getattr(default, key)
        if isinstance(value, dict) and dataclasses.is_dataclass(want):
            out += _differences(got, want, value, f"{where}.{key}", owner)
        elif got != want:
            out.append(f"{where}.{key}: params.yaml has {value!r}, the {owner} default is {want!r}")
    return out


def default_mismatches(params: dict[str, Any]) -> list[str]:
    """Every params key whose value differs from its dataclass default, as ``section.key: both values``."""
    classes = section_classes()
    problems: list[str] = []
    for key, value in params.items():
        if key == "models":
            for name, spec in (value or {}).items():
                build(ModelSpec, spec, f"params.yaml:models.{name}")
            continue
        for cls in sorted(classes.get(key, ()), key=lambda c: c.__name__):
            built = build(cls, value, f"params.yaml:{key}")
            problems += _differences(built, cls(), value or {}, key, cls.__name__)
    return problems


def test_params_yaml_values_are_the_dataclass_defaults() -> None:
    problems = default_mismatches(read_params(ROOT / "params.yaml"))
    assert not problems, "params.yaml and a dataclass default disagree:\n" + "\n".join(problems)


def test_every_params_section_but_models_and_train_builds_a_dataclass() -> None:
    assert set(read_params(ROOT / "params.yaml")) - set(section_classes()) == NO_DATACLASS


# a numeric param's bad value is -1, except where -1 is legal: there the value below (out of its range), or none
# at all for a key that takes any integer (a seed; max_steps, where -1 is the Trainer's "train by epochs")
BAD_VALUE = {"frequency_penalty": 3.0, "presence_penalty": 3.0, "min_spearman": 2.0}
ANY_INTEGER = ("seed", "max_steps")


def numeric_keys(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The key paths of every number in a params mapping (lists, such as eval.models, are not walked)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from numeric_keys(value, (*path, key))
    elif isinstance(node, int | float) and not isinstance(node, bool):
        yield path


def test_a_bad_value_of_every_numeric_param_is_refused_naming_it() -> None:
    """Every number in params.yaml, set out of its range, stops the stage that reads it with an error naming the
    key: a bad value must never run (select.per_lang -1 once selected nothing and overwrote its table)."""
    params, classes = read_params(ROOT / "params.yaml"), section_classes()
    tried = 0
    for name, value in params.items():
        for path in numeric_keys(value):
            if path[-1] in ANY_INTEGER:
                continue
            data = copy.deepcopy(value)
            node = data
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = BAD_VALUE.get(path[-1], -1)
            for cls in classes[name]:
                with pytest.raises(ConfigError, match=rf"params\.yaml:{name}.*{path[-1]}"):
                    build(cls, data, f"params.yaml:{name}")
            tried += 1
    assert tried >= 100


def test_a_default_that_differs_is_named_with_both_values() -> None:
    params = read_params(ROOT / "params.yaml")
    params["select"] = {**params["select"], "sampling": {**params["select"]["sampling"], "max_tokens": 5}}
    params["write"] = {**params["write"], "max_attempts": 7}
    params["eval"] = {**params["eval"], "models": params["eval"]["models"][:1]}
    problems = default_mismatches(params)
    assert problems[:2] == ["select.sampling.max_tokens: params.yaml has 5, the SelectConfig default is 96",
                            "write.max_attempts: params.yaml has 7, the WriteConfig default is 3"]
    assert len(problems) == 3 and problems[2].startswith("eval.models: params.yaml has [{'name': 'base'")
