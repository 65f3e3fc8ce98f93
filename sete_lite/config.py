"""Configuration files: one flat YAML namespace dispatched to several dataclasses.

Like TRL's and open-r1's parsers, a config file is a flat mapping whose keys are the fields of a
few dataclasses (model, data, scoring, training). A key that belongs to none of them is an error
that lists the closest valid names, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

import yaml


def field_names(*dataclass_types: type) -> list[str]:
    """All field names of the given dataclasses, in declaration order."""
    return [f.name for cls in dataclass_types for f in dataclasses.fields(cls)]


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
    """The mapping in a YAML file ({} for None); a clear error for a missing file or a non-mapping."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file '{path}' does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file '{path}' must hold a mapping of key: value, got {type(data).__name__}")
    return data


def as_field_type(key: str, value: Any, annotation: Any) -> Any:
    """A string given to a float field becomes that float: YAML 1.1 reads `1e-4` (no dot) as a string."""
    if not isinstance(value, str) or float not in (annotation, *typing.get_args(annotation)):
        return value
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"config key '{key}' expects a number, got '{value}'") from None


def build(cls: type, values: dict[str, Any]):
    """Instantiate dataclass `cls` from the keys of `values` that are its fields."""
    types = typing.get_type_hints(cls)
    own = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: as_field_type(k, v, types.get(k)) for k, v in values.items() if k in own})


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
    one of `dataclass_types`.
    """
    values = read_values(path, overrides, defaults)
    check_known_keys(values, field_names(*dataclass_types), str(path) if path else "overrides")
    return tuple(build(cls, values) for cls in dataclass_types)
