"""Where a named model, dataset or config comes from: `builtin:NAME`, a local path, or the hub.

`builtin:NAME` is something an installed package ships: a package registers each one as an entry
point in the group "sete_lite.builtins" whose object is the path of what it ships (pyproject.toml:
`arith-qwen2 = "sete_lite.arith:CHECKPOINT"`), or a function returning that path, for a file whose
finding can fail with a message (`smollm2-135m-instruct`: a package that may not be installed).
Resolving a name loads only that entry point, so the library never imports a package of built-ins
itself, and another package can add its own.

`check_hub_name` asks the Hugging Face Hub once, without retries, whether a name that is not a
local path exists there, so that a typo fails in a second instead of after a minute of retries.
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
    target = found[0].load()
    return str(target() if callable(target) else target)


def check_hub_name(name: str, repo_type: str, key: str) -> None:
    """Fail at once when `name` (config key `key`) is neither a local path nor a `repo_type` ("model" or
    "dataset") repository the hub has or the local hub cache holds."""
    import os
    from pathlib import Path

    from huggingface_hub import HfApi, try_to_load_from_cache

    if Path(name).exists():
        return
    marker = "config.json" if repo_type == "model" else "README.md"
    if isinstance(try_to_load_from_cache(name, marker, repo_type=repo_type), str):
        return  # downloaded before: usable offline
    example = "Qwen/Qwen2.5-1.5B-Instruct" if repo_type == "model" else "open-r1/DAPO-Math-17k-Processed"
    advice = f"give an existing local directory or file, or a hub name such as '{example}'"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(f"{key} '{name}' is not a local path nor in the hub cache (HF_HUB_OFFLINE=1); {advice}")
    try:
        info = HfApi().model_info if repo_type == "model" else HfApi().dataset_info
        info(name, timeout=10)
    except Exception as error:  # not found, private, malformed name, or no network: the hub cannot give it
        reason = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
        raise FileNotFoundError(
            f"{key} '{name}' is not a local path, and the Hugging Face Hub was tried: {reason}; {advice}"
        ) from None
