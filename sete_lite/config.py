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

import argparse
import dataclasses
import difflib
import functools
import inspect
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sete_lite.builtins import resolve_builtin


def setting(default: Any, help: str, *, shown: str | None = None) -> Any:
    """A config key's dataclass field: its default and one line of meaning, which `--help` and README's
    configuration reference show (`reference_markdown`). `shown` is how that table writes the default
    where the value alone does not say it all ("mode's", "`42` (TRL's)"). A list default is copied per
    instance."""
    metadata = {"help": help, **({"shown": shown} if shown else {})}
    if isinstance(default, list):
        return dataclasses.field(default_factory=functools.partial(list, default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# The values of rollout_engine (besides "auto") and answer_extraction; the modules that implement them
# import these, so that this module imports none of them.
ROLLOUT_ENGINES = ("transformers", "vllm", "unsloth")
ANSWER_EXTRACTIONS = ("boxed", "math_verify")


@dataclass
class SharedConfig:
    """Keys every command reads (train, score, eval)."""

    seed: int = setting(42, "LoRA init, SE sampling, rollouts, evaluation sampling, data order", shown="`42` (TRL's)")
    rollout_engine: str = setting(
        "auto",
        "`unsloth`, `vllm`, `transformers`; `auto` = the fastest available: Unsloth's vLLM when loaded, else a "
        "separate vLLM on a GPU where vllm is installed, else transformers",
    )
    answer_timeout_s: float = setting(1.0, "time bound per answer parse or comparison (rewards, SE, evaluation)")
    # How a response's final answer is found, for rewards, SE clustering and evaluation alike:
    # "boxed" (the paper's: the last \boxed{}, else ####) or "math_verify" (math-verify's own extraction:
    # a box first, then LaTeX, then the last expression; for models that answer in prose).
    answer_extraction: str = setting(
        "boxed",
        "how a response's final answer is found, for rewards, SE clustering and evaluation alike: `boxed` (the "
        "paper's strict rule: the last `\\boxed{}`, else `#### x`) or `math_verify` (math-verify's own extraction: a "
        "box first, then LaTeX, then the last number or expression; for models that answer in prose)",
    )
    num_threads: int | None = setting(None, "torch CPU threads (1 is fastest for tiny models on a busy CPU)")

    def __post_init__(self) -> None:
        if self.rollout_engine not in ("auto", *ROLLOUT_ENGINES):
            raise ValueError(f"rollout_engine must be 'auto' or one of {ROLLOUT_ENGINES}, got '{self.rollout_engine}'")
        check_answer_extraction(self.answer_extraction)
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), as torch and numpy take it, got {self.seed}")
        if self.answer_timeout_s <= 0:
            raise ValueError(f"answer_timeout_s must be positive, got {self.answer_timeout_s}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be at least 1, got {self.num_threads}")

    def apply_num_threads(self) -> None:
        """Give torch `num_threads` CPU threads (when set); every command calls it before loading."""
        if self.num_threads:
            import torch

            torch.set_num_threads(self.num_threads)


def check_answer_extraction(method: str) -> None:
    if method not in ANSWER_EXTRACTIONS:
        raise ValueError(f"answer_extraction must be one of {ANSWER_EXTRACTIONS}, got '{method}'")


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
        raise ValueError("; ".join(problems) + ". --help lists every key (README.md: Configuration reference).")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key '{key}' is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` from the command line; the value is read as YAML (numbers, bools, lists)."""
    if "=" not in text:
        raise ValueError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ValueError(f"--set {text}: the value is not valid YAML ({str(error).splitlines()[0]})") from None


def refuse_repeated_keys(overrides: typing.Sequence[str]) -> None:
    """A key given twice on a command line (--set or a flag) is refused, as one given twice in a YAML
    file is: which value was meant? (Library callers may stack overrides: the last one wins.)"""
    keys = [parse_override(text)[0] for text in overrides]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        raise ValueError(f"{', '.join(twice)} given twice on the command line (--set or a flag); give each key once")


def load_yaml(path: str | Path | None) -> dict[str, Any]:
    """The mapping in a YAML file or builtin:NAME ({} for None); a clear error, with the line, for a
    missing file, malformed YAML, a key given twice or a non-mapping."""
    if path is None:
        return {}
    path = Path(resolve_builtin(str(path)))
    if not path.is_file():
        raise FileNotFoundError(f"config file '{path}' does not exist")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"config file '{path}'{where}: {problem}") from None
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


# The sections of a config file: the class that declares each one's keys, in the order train reads
# them. Named here rather than imported, so that any command can know every key of a config file
# without the modules that declare them importing each other.
SECTIONS = {
    "shared": "sete_lite.config:SharedConfig",
    "model": "sete_lite.model:ModelConfig",
    "data": "sete_lite.data:DataConfig",
    "score": "sete_lite.score:ScoreConfig",
    "curriculum": "sete_lite.curriculum:CurriculumConfig",
    "run": "sete_lite.train:RunConfig",
    "eval": "sete_lite.eval:EvalConfig",
    "train": "sete_lite.trainer:SENTConfig",  # TRL's GRPOConfig + the loss keys: imports TRL
}


# The title of each part of README's configuration reference (and of --help's key listing).
SECTION_TITLES = {
    "shared": "**shared** (`sete_lite.config.SharedConfig`: train, score, eval)",
    "model": "**model** (`sete_lite.model.ModelConfig`)",
    "data": "**data** (`sete_lite.data.DataConfig`)",
    "score": "**semantic-entropy scoring** (`sete_lite.score.ScoreConfig`)",
    "curriculum": "**curriculum** (`sete_lite.curriculum.CurriculumConfig`)",
    "run": "**run** (`sete_lite.train.RunConfig`)",
    "eval": "**evaluation** (`sete_lite.eval.EvalConfig`)",
    "loss": "**loss** (`sete_lite.loss.LossConfig`, inherited by `SENTConfig`; [docs/method.md](docs/method.md#loss))",
    "train": "**training** (`sete_lite.trainer.SENTConfig` = TRL's `GRPOConfig` + the loss keys)",
}
REFERENCE_START = "<!-- configuration reference: written by `python -m sete_lite.config`, do not edit -->"
REFERENCE_END = "<!-- end of the configuration reference -->"


def section_class(section: str) -> type:
    """The config class that declares a section's keys."""
    import importlib

    module, _, name = SECTIONS[section].partition(":")
    return getattr(importlib.import_module(module), name)


def declared_here(cls: type) -> list[dataclasses.Field]:
    """The fields a class declares itself, in order (not those it inherits)."""
    own = set(inspect.get_annotations(cls))
    return [f for f in dataclasses.fields(cls) if f.name in own]


def reference_sections() -> list[tuple[str, list[dataclasses.Field]]]:
    """(title, the keys sete_lite declares) per part of the configuration, in the order train reads them;
    SENTConfig's keys come as its LossConfig base's, then its own (TRL documents the rest). The base is
    read off SENTConfig rather than imported, as sete_lite.loss imports this module."""
    parts = []
    for section in SECTIONS:
        cls = section_class(section)
        if section == "train":
            loss_config = next(base for base in cls.__mro__ if base.__name__ == "LossConfig")
            parts.append((SECTION_TITLES["loss"], declared_here(loss_config)))
        parts.append((SECTION_TITLES[section], declared_here(cls)))
    return parts


def shown_default(item: dataclasses.Field) -> str:
    """How the configuration reference writes a key's default."""
    if "shown" in item.metadata:
        return item.metadata["shown"]
    value = item.default_factory() if item.default is dataclasses.MISSING else item.default
    return f"`{json.dumps(value) if not isinstance(value, str) else value}`".replace('"', "")


def reference_markdown() -> str:
    """README's configuration reference: every key sete_lite declares, its default and meaning, from the
    config classes' own field metadata (so README and --help cannot drift apart)."""
    lines = [REFERENCE_START, "", "| key | default | meaning |", "|---|---|---|"]
    for title, items in reference_sections():
        lines.append(f"| {title} | | |")
        lines += [f"| `{f.name}` | {shown_default(f)} | {f.metadata['help']} |" for f in items]
    return "\n".join([*lines, "", REFERENCE_END]) + "\n"


def describe_keys(sections: typing.Sequence[str]) -> str:
    """--help's listing: each key of these sections with its default and meaning, TRL's too."""
    from trl import GRPOConfig

    lines = ["config keys (in a --config file, as --key value, or --set key=value):"]
    ours: set[str] = set()
    for title, items in reference_sections():
        section = next(name for name, text in SECTION_TITLES.items() if text == title)
        if section not in sections and not (section == "loss" and "train" in sections):
            continue
        lines.append("\n" + title.replace("**", "").replace("`", ""))
        for item in items:
            ours.add(item.name)
            meaning = item.metadata["help"].replace("`", "")
            lines.append(f"  --{item.name} (default {shown_default(item).replace('`', '')}): {meaning}")
    if "train" in sections:
        lines.append("\nTRL's GRPOConfig and transformers' TrainingArguments, with their meaning:")
        for item in dataclasses.fields(GRPOConfig):
            if item.name in ours or item.name.startswith("_") or not item.init:
                continue
            meaning = " ".join(str(item.metadata.get("help", "")).split())
            meaning = meaning.split(". ")[0][:150]
            default = item.default if item.default is not dataclasses.MISSING else "(computed)"
            lines.append(f"  --{item.name} (default {default}): {meaning}")
    return "\n".join(lines)


class KeysHelp(argparse.Action):
    """-h/--help: the command's usage, then every config key it reads (imported only when asked)."""

    def __init__(self, option_strings: list[str], dest: str, sections: typing.Sequence[str] = (), **kwargs: Any):
        super().__init__(
            option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="show this help, every config key"
        )
        self.sections = sections

    def __call__(self, parser, namespace, values, option_string=None):
        parser.print_help()
        print("\n" + describe_keys(self.sections))
        parser.exit()


def key_flags(tokens: typing.Sequence[str], valid: typing.Sequence[str]) -> list[str]:
    """TRL-style flags for config keys, as `key=value` overrides: `--key value`, `--key=value`, several
    values for a list key (`--eval_k 1 8`), a bare `--flag` for a boolean (true); dashes or underscores.
    An unknown flag is an error naming the closest keys."""
    overrides: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or token == "--":
            raise ValueError(f"unexpected argument '{token}': config keys are given as --key value")
        name, _, inline = token[2:].partition("=")
        key = name.replace("-", "_")
        check_known_keys([key], valid, "the command line")
        values = [inline] if inline else []
        i += 1
        while not inline and i < len(tokens) and not tokens[i].startswith("--"):
            values.append(tokens[i])
            i += 1
        if not values:
            overrides.append(f"{key}=true")
        elif len(values) == 1:
            overrides.append(f"{key}={values[0]}")
        else:
            overrides.append(f"{key}=[{', '.join(values)}]")
    return overrides


def training_keys() -> list[str]:
    """Every key a training config may hold (the score and eval commands accept and skip the others)."""
    return field_names(*(section_class(section) for section in SECTIONS))


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` is a write that failed for lack of space: an OSError ENOSPC, or what torch's and
    safetensors' writers raise instead (torch: "[enforce fail at inline_container.cc ...]", no errno)."""
    import errno

    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    text = str(error)
    return "No space left on device" in text or "inline_container.cc" in text or "PytorchStreamWriter" in text


# Set by the command line's SIGINT handler. Python drops a KeyboardInterrupt raised inside a garbage
# collector callback ("Exception ignored in ..."), so long loops also check this flag at safe points.
INTERRUPT_REQUESTED = False


def _on_sigint(signum: int, frame: Any) -> None:
    global INTERRUPT_REQUESTED
    INTERRUPT_REQUESTED = True
    raise KeyboardInterrupt


def _quiet_lost_interrupt(unraisable: Any) -> None:
    """sys.unraisablehook: a Ctrl-C that landed in a garbage-collector callback is not lost (the flag
    stops the run at its next safe point), so Python's "Exception ignored ... Traceback" is not printed."""
    import sys

    if not (INTERRUPT_REQUESTED and unraisable.exc_type is KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


def stop_if_interrupted() -> None:
    """Raise KeyboardInterrupt when Ctrl-C was pressed (see INTERRUPT_REQUESTED); a long loop calls it
    at each step, batch or save."""
    if INTERRUPT_REQUESTED:
        raise KeyboardInterrupt


def run_cli(main: typing.Callable[[list[str]], Any], interrupted: str = "") -> None:
    """A command's entry point: an error the user can fix prints one line (what is wrong, which key or
    file, the fix) instead of a traceback, which SETE_LITE_DEBUG=1 brings back. A full disk is said as
    such, whoever raised it. Ctrl-C ends in one line, `interrupted` (what to do next), and exit code 130."""
    import os
    import signal
    import sys

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when Ctrl-C is ignored
        signal.signal(signal.SIGINT, _on_sigint)
        sys.unraisablehook = _quiet_lost_interrupt
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:
        if os.environ.get("SETE_LITE_DEBUG") == "1":
            raise
        print(f"interrupted{': ' + interrupted if interrupted else ''}", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as error:
        if os.environ.get("SETE_LITE_DEBUG") == "1":
            raise
        if is_disk_full(error):
            message = (
                f"no space left on the device ({str(error).strip().splitlines()[0][:200]}); free some space and rerun"
                + (f" ({interrupted})" if interrupted else "")
            )
        elif isinstance(error, (ValueError, KeyError, OSError, RuntimeError, ImportError)):
            message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        else:
            raise
        print(f"error: {message}\n(SETE_LITE_DEBUG=1 shows the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


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
    *,
    also_valid: typing.Sequence[str] = (),
) -> tuple:
    """Read a flat YAML file plus `--set key=value` overrides into one instance of each dataclass.

    `defaults` are applied first, then the file, then the overrides. Every key must be a field of
    one of `dataclass_types` (or in `also_valid`: keys another command reads, accepted and unused,
    so that one config file serves train, score and eval), and every value of its field's type.
    """
    valid = list(dict.fromkeys([*field_names(*dataclass_types), *also_valid]))
    check_known_keys(load_yaml(path), valid, f"config file '{path}'")
    check_known_keys((parse_override(text)[0] for text in overrides), valid, "--set")
    values = read_values(path, overrides, defaults)
    return tuple(build(cls, values) for cls in dataclass_types)


if __name__ == "__main__":
    print(reference_markdown(), end="")
