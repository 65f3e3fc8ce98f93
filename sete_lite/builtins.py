"""`builtin:NAME`: models, datasets and configs that an installed package ships, found by name.

A package registers each one as an entry point in the group "sete_lite.builtins" whose object is the
path of what it ships (pyproject.toml: `arith-qwen2 = "sete_lite.arith:CHECKPOINT"`). Resolving a
name loads only that entry point, so the library never imports a package of built-ins itself, and
another package can add its own the same way.
"""

from __future__ import annotations

from importlib.metadata import entry_points

GROUP = "sete_lite.builtins"
PREFIX = "builtin:"


def builtin_names() -> list[str]:
    """The registered names, sorted."""
    return sorted(entry.name for entry in entry_points(group=GROUP))


def resolve_builtin(name_or_path: str) -> str:
    """The local path of `builtin:NAME`; anything else is returned as it is."""
    if not name_or_path.startswith(PREFIX):
        return name_or_path
    name = name_or_path[len(PREFIX) :]
    found = [entry for entry in entry_points(group=GROUP) if entry.name == name]
    if not found:
        raise ValueError(
            f"unknown built-in '{name_or_path}'; registered: {builtin_names() or 'none'} (built-ins are entry "
            f"points of the group '{GROUP}': is sete_lite installed, e.g. pip install -e .?)"
        )
    return str(found[0].load())
