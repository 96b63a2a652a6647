"""Turning a params.yaml section into typed dataclasses, strictly.

An unknown or misspelt key is an error naming the key: a silently ignored `max_concurrancy` would run a
sweep with the wrong setting and nobody would know. The same holds for a whole section: `wirte:` would run
`write` on all its defaults.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from longwriter.errors import ConfigError

T = TypeVar("T")

# The top-level sections a params file may have: one per stage with settings, the shared ones (llm, eval, judge,
# train) and ``models``, where model specs are written once as YAML anchors. tests/test_dvc_yaml.py checks this
# against what the stage scripts read.
SECTIONS = frozenset({
    "llm", "models", "select", "plan", "write", "postprocess", "base", "general", "mix", "train", "sft",
    "dpo_pairs", "dpo", "grpo", "eval", "ruler", "longbench", "judge", "compare", "export", "segments", "nll",
    "agreement", "criteria", "length_target",
})


def read_params(path: str | Path) -> dict[str, Any]:
    """Load a params file (YAML mapping)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    unknown = sorted(set(data) - SECTIONS, key=str)
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(map(str, unknown))}; "
                          f"known: {', '.join(sorted(SECTIONS))}")
    return data


def section(params: dict[str, Any], key: str, where: str = "params.yaml") -> dict[str, Any]:
    """``params[key]`` as a mapping (a missing section is empty: every field has a default)."""
    value = params.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: '{key}' must be a mapping")
    return value


def build(cls: type[T], data: dict[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from ``data``; nested dataclass fields are built recursively.

    ``where`` is the dotted key path used in error messages, e.g. ``params.yaml:plan``.
    """
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    # a field with metadata param=False is run-time state, never set from params.yaml
    fields = {f.name: f for f in dataclasses.fields(cls)  # type: ignore[arg-type]
              if f.metadata.get("param", True)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{where}.{name}", _default(fields[name]))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _convert(hint: Any, value: Any, where: str, default: Any = None) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where) if len(inner) == 1 else value
    if dataclasses.is_dataclass(hint):
        nested = build(hint, value, where)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            # a partial nested section overrides the field's own default (select's sampling keeps
            # temperature 0 when params set only its seed), not the nested class's defaults
            try:
                return dataclasses.replace(default, **{k: getattr(nested, k) for k in value})
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{where}: {e}") from None
        return nested
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        items = [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else value
        return tuple(items) if origin is tuple else items
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not (
            hint is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value
