"""Writes that a crash cannot leave half done: whole files, whole jsonl lines, whole directories.

Nothing is lost is a rule of the project: caches, logs, checkpoints, adapters and exports all go
through these functions.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path


@contextlib.contextmanager
def naming_full_disk(path: Path) -> Iterator[None]:
    """A full disk is reported with the file that could not be written (the OSError alone names none)."""
    try:
        yield
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC, f"no space left on the device writing {path}; free some space and rerun"
            ) from None
        raise


def write_text(path: Path, text: str) -> None:
    """Write a whole file or nothing: a synced temp file in the same directory, then os.replace."""
    tmp = path.with_name(path.name + ".tmp")
    with naming_full_disk(path):
        try:
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            tmp.unlink(missing_ok=True)  # never leave a half-written temp file behind
            raise
        os.replace(tmp, path)


def jsonl_lines(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """A whole jsonl file or nothing (write_text)."""
    write_text(path, jsonl_lines(rows))


def cut_torn_tail(path: Path) -> None:
    """Drop a last line without its newline: what a write killed mid-line leaves (never a whole row)."""
    if not path.exists():
        return
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        data = path.read_bytes()
        f.truncate(data.rfind(b"\n") + 1)


def append_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Append whole lines in one write, synced before returning: a crash leaves at most a torn last line,
    which the next append cuts off first (so the rows always start on a fresh line)."""
    cut_torn_tail(path)
    with naming_full_disk(path), open(path, "a") as f:
        f.write(jsonl_lines(rows))
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a jsonl file; [] for a missing file. A torn last line (no newline: a write killed
    mid-line) is skipped; any other line that is not a JSON object is an error naming the file and line."""
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 text; the file is damaged: fix or delete that line") from None
    lines = text.split("\n")
    lines.pop()  # "" when the file ends with a newline, else a torn line: skipped (cut_torn_tail cuts it)
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            row = error
        if not isinstance(row, dict):
            raise ValueError(
                f"{path}, line {number}: not a JSON object ({str(row)[:80]}); the file is damaged: fix or delete "
                "that line (only a torn last line, from a killed write, is skipped)"
            )
        rows.append(row)
    return rows


def check_writable_dir(path: Path, key: str) -> None:
    """Fail before any work when `path` (config key or flag `key`) cannot take the outputs: a file
    where a directory is needed, or a directory this process may not write to."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{key} '{path}' is a file, not a directory; give a directory (it is created)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".sete_lite_write_check.{os.getpid()}"  # one per process of a launch
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise PermissionError(f"{key} '{path}' is not writable ({error.strerror}); give a writable directory") from None


def replace_dir(target: Path, build: Callable[[Path], None]) -> Path:
    """Run `build(partial)` on a fresh hidden sibling of `target`, then swap it in for `target`.

    A build that fails, or a process killed mid-build, leaves `target` as it was. A swap killed
    between its two renames is completed by the next call (the old directory is restored first).
    """
    target = Path(target)
    partial = target.with_name(f".{target.name}.partial")
    old = target.with_name(f".{target.name}.old")
    if not target.exists() and old.exists():
        old.rename(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(partial, ignore_errors=True)  # left by a killed build
    partial.mkdir()
    try:
        build(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    partial.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target
