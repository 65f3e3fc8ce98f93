"""Configuration: one flat YAML namespace, dispatched to the dataclasses that declare its keys.

A config file is a flat mapping whose keys are the fields of a few dataclasses (shared settings,
model, data, scoring, curriculum, evaluation, training = TRL's GRPOConfig plus SENT's loss keys),
plus `key=value` overrides from the command line. Each key is declared by exactly one sete_lite
class; a key TRL declares too (seed, trust_remote_code, ...) has TRL's meaning and default.

Why not TRL's TrlParser / transformers' HfArgumentParser: they read a YAML file into argparse
defaults, which argparse never type-checks, and an unknown key gets no hint. This module is the thin
layer that adds what they lack, and nothing else:
- a key that no class declares is an error naming the closest valid keys (a typo never silently
  falls back to a default);
- every value is checked against its field's declared type before any class is built: booleans
  strictly (`maybe` or `"false"` is not a bool), integers strictly (`8.5` is not an int); a float
  field takes `1e-4`, which YAML 1.1 reads as a string.
Instantiation itself is the dataclasses' own (their __post_init__ checks ranges and choices).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sete_lite.builtins import resolve_builtin


@dataclass
class SharedConfig:
    """Keys every command reads (train, score, eval)."""

    seed: int = 42  # TRL's default: LoRA initialisation, SE sampling, rollouts, evaluation sampling
    rollout_engine: str = "auto"  # auto | transformers | vllm | unsloth: see sete_lite.rollout.make_engine
    answer_timeout_s: float = 1.0  # time bound per answer parse or comparison (rewards, SE, evaluation)
    num_threads: int | None = None  # torch CPU threads; None = torch's default

    def __post_init__(self) -> None:
        from sete_lite.rollout import ENGINES

        if self.rollout_engine not in ("auto", *ENGINES):
            raise ValueError(f"rollout_engine must be 'auto' or one of {ENGINES}, got '{self.rollout_engine}'")
        if self.answer_timeout_s <= 0:
            raise ValueError(f"answer_timeout_s must be positive, got {self.answer_timeout_s}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be at least 1, got {self.num_threads}")


def field_names(*dataclass_types: type) -> list[str]:
    """All field names of the given dataclasses, in declaration order, each once."""
    return list(dict.fromkeys(f.name for cls in dataclass_types for f in dataclasses.fields(cls)))


def check_known_keys(keys: typing.Iterable[str], valid: typing.Sequence[str], source: str) -> None:
    """Raise a ValueError naming each unknown key and its closest valid names."""
    problems = []
    for key in keys:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
            hint = f" (did you mean: {', '.join(close)}?)" if close else ""
            problems.append(f"unknown config key '{key}' in {source}{hint}")
    if problems:
        raise ValueError("; ".join(problems) + ". See the config reference in README.md.")


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` from the command line; the value is read as YAML (numbers, bools, lists)."""
    if "=" not in text:
        raise ValueError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def load_yaml(path: str | Path | None) -> dict[str, Any]:
    """The mapping in a YAML file or builtin:NAME ({} for None); a clear error for a missing file or a
    non-mapping."""
    if path is None:
        return {}
    path = Path(resolve_builtin(str(path)))
    if not path.is_file():
        raise FileNotFoundError(f"config file '{path}' does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file '{path}' must hold a mapping of key: value, got {type(data).__name__}")
    return data


def _matches(value: Any, annotation: Any) -> bool:
    """Whether `value` is an instance of the declared type (strict: a bool is no int, a float no int)."""
    if annotation is Any or annotation is object:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple, typing.Sequence):
        args = typing.get_args(annotation)
        return isinstance(value, (list, tuple)) and (not args or all(_matches(v, args[0]) for v in value))
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation) or (annotation is str and isinstance(value, str))
    return True  # an annotation this layer does not model (TRL's enums, callables): the class checks it


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def as_field_type(key: str, value: Any, annotation: Any) -> Any:
    """`value` checked against the field's declared type; a string given to a float field becomes that
    float (YAML 1.1 reads `1e-4`, without a dot, as a string). A mismatch names the key and the type."""
    if annotation is None or _matches(value, annotation):
        return value
    for arg in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(arg) is list and _matches([value], arg):
            return [value]  # one item where a list is declared: `eval_benchmarks: MATH500`
    floats = {float, *typing.get_args(annotation)} if typing.get_args(annotation) else {annotation}
    if isinstance(value, str) and float in floats:
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError(f"config key '{key}' expects {_type_name(annotation)}, got {value!r} ({type(value).__name__})")


def _field_types(cls: type) -> dict[str, Any]:
    """Each field's declared type; TRL's classes annotate some fields with names typing cannot resolve."""
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):
        hints: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            try:
                hints.update(typing.get_type_hints(klass))
            except (NameError, TypeError):
                continue
        return hints


def build(cls: type, values: dict[str, Any]):
    """Instantiate dataclass `cls` from the keys of `values` that are its fields, type-checked."""
    types_ = _field_types(cls)
    own = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: as_field_type(k, v, types_.get(k)) for k, v in values.items() if k in own})


def read_values(
    path: str | Path | None = None, overrides: typing.Sequence[str] = (), defaults: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The flat mapping a config describes: `defaults`, then the file, then `key=value` overrides."""
    values: dict[str, Any] = dict(defaults or {})
    values.update(load_yaml(path))
    for text in overrides:
        key, value = parse_override(text)
        values[key] = value
    return values


def parse_config(
    dataclass_types: typing.Sequence[type],
    path: str | Path | None = None,
    overrides: typing.Sequence[str] = (),
    defaults: dict[str, Any] | None = None,
) -> tuple:
    """Read a flat YAML file plus `--set key=value` overrides into one instance of each dataclass.

    `defaults` are applied first, then the file, then the overrides. Every key must be a field of
    one of `dataclass_types`, and every value of its field's type.
    """
    values = read_values(path, overrides, defaults)
    check_known_keys(values, field_names(*dataclass_types), str(path) if path else "overrides")
    return tuple(build(cls, values) for cls in dataclass_types)
