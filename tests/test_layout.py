"""The package's shape: no import cycle, the library never imports the toy world, and a non-editable
install runs the default command from any directory (its config, model and data ship inside)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "sete_lite"
NOT_SOURCE = (".git", ".venv", ".whl", "build", "runs", "*.egg-info", "__pycache__", "unsloth_compiled_cache")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every sete_lite module -> the sete_lite modules it imports anywhere in its file, the imports
    inside functions (lazy ones) included."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from sete_lite import train` imports the module sete_lite.train
                imported |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
        graph[name] = {target for target in imported if target in paths and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_no_import_cycle_even_through_lazy_imports():
    graph = import_graph()
    assert len(graph) > 20 and "sete_lite.trainer" in graph["sete_lite.train"]  # the graph is really read
    assert find_cycle(graph) is None, find_cycle(graph)


def test_the_library_never_imports_the_toy_world():
    toy = "sete_lite.arith"
    importers = {
        module: sorted(t for t in targets if t == toy or t.startswith(toy + "."))
        for module, targets in import_graph().items()
        if not (module == toy or module.startswith(toy + "."))
    }
    assert {module: found for module, found in importers.items() if found} == {}
    # ... and finds what the toy world ships by name, through the entry points it registers.
    from sete_lite.builtins import builtin_names, resolve_builtin

    names = set(builtin_names())
    assert {"arith-qwen2", "arith-train", "arith-test", "arith-cpu"} <= names
    assert {"sums-qwen2", "sums-train", "sums-test", "sums-cpu"} <= names
    assert Path(resolve_builtin("builtin:arith-cpu")).is_file()
    with pytest.raises(ValueError, match="unknown built-in 'builtin:nope'"):
        resolve_builtin("builtin:nope")


@pytest.mark.slow
def test_a_non_editable_install_runs_the_default_from_another_directory(tmp_path: Path) -> None:
    """pip install of the built wheel into a fresh virtualenv (its dependencies borrowed from the test
    environment through a path file, so nothing is downloaded), then the default command, shortened
    by overrides, from a directory that is not the repository."""
    # Built from a copy: setuptools writes build/ into the tree it builds.
    source = shutil.copytree(REPO, tmp_path / "source", ignore=shutil.ignore_patterns(*NOT_SOURCE))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), source],
        check=True,
        capture_output=True,
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # The test environment's packages (torch, transformers, ...), but not its editable sete_lite: a path
    # in a .pth file is added to sys.path without running that directory's own .pth files.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    [wheel] = wheels.glob("sete_lite-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    where = subprocess.run(
        [python, "-c", "import sete_lite; print(sete_lite.__file__)"],
        cwd=elsewhere,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip().startswith(str(site))  # the installed copy, not the checkout

    short = ["max_prompts=4", "epochs_per_stage=1", "se_num_samples=2", "eval_num_samples=2", "eval_k=[1,2]",
             "eval_max_problems=2", "num_generations=2", "per_device_train_batch_size=4"]  # fmt: skip
    done = subprocess.run(
        [python, "-m", "sete_lite.train", *(arg for item in short for arg in ("--set", item))],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = elsewhere / "runs" / "tiny"  # the default config's output_dir, under the working directory
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((run / "adapter" / "sete_lite_base.json").read_text()) == {"base_model": "builtin:arith-qwen2"}
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["before", "stage-0", "stage-1"]
    assert "held-out accuracy (mean over samples): before" in done.stdout
