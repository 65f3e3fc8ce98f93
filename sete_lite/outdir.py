"""Output directories that are sete_lite's own: a marker saying what wrote them, and one writer at a time.

`claim(directory, kind, key)` is what train, score and eval do before they write anything:
- a directory sete_lite did not write is refused when it holds anything (a model folder, a user's
  README.md or config.json), so nothing of the user's is overwritten; an empty or new directory is
  marked (`MARKER`, with the kind of output: train, score, eval) and is sete_lite's from then on;
- an exclusive lock is taken for as long as the command runs. It is an flock on `LOCK`, which the
  kernel releases when the process ends in any way (kill -9 included), so a dead holder never wedges
  a directory; the file keeps the holder's pid and command for the refusal message.
Export builds its output beside the target and swaps it in (sete_lite.export), so it locks a sibling
file instead (`lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

MARKER = ".sete_lite.json"
LOCK = ".sete_lite.lock"
# What a directory may hold before sete_lite marks it: a semantic-entropy cache placed there to be
# reused (its producer record is checked before use), sete_lite's own lock or write probes, and logs
# the user sends there (`... > runs/x/train.log`: sete_lite writes no *.log file).
ALLOWED_BEFORE_MARKING = {"se_scores", LOCK}


def may_precede_marking(name: str) -> bool:
    return name in ALLOWED_BEFORE_MARKING or name.endswith(".log") or name.startswith(".sete_lite_write_check.")


class DirectoryBusyError(RuntimeError):
    """Another sete_lite process holds the directory's lock."""


def owner(directory: Path) -> str | None:
    """The kind of output sete_lite wrote into `directory` (train, score, eval), or None."""
    marker = Path(directory) / MARKER
    return json.loads(marker.read_text())["kind"] if marker.is_file() else None


def check_own(directory: Path, kind: str, key: str) -> None:
    """Refuse `directory` (config key or flag `key`) unless it is new, empty, or sete_lite's `kind` output."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    found = owner(directory)
    if found == kind:
        return
    if found is not None:
        raise ValueError(f"{key} '{directory}' holds sete_lite {found} output, not {kind} output: give another one")
    foreign = sorted(p.name for p in directory.iterdir() if not may_precede_marking(p.name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ValueError(
            f"{key} '{directory}' holds files sete_lite did not write ({shown}); give a new or empty directory "
            "(sete_lite never writes over files it did not make)"
        )


@contextlib.contextmanager
def lock(path: Path, what: str, remove: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created) for the block; refuse at once if another
    process holds it, naming that process. `what` says what is locked, for the message. `remove`
    deletes the file at the end, while still holding it (for a lock beside a directory that should
    not keep a stray file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 (held open for the whole block)
    held = False
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise DirectoryBusyError(
                f"{what} is in use by {holder}; wait for it to finish, or give another directory"
            ) from None
        held = True
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} ({' '.join(sys.argv)[:200]})")
        handle.flush()
        yield
    finally:
        if held and remove:
            path.unlink(missing_ok=True)
        handle.close()  # releases the lock


def mark(directory: Path, kind: str) -> None:
    """Mark `directory` as sete_lite's `kind` output (when it is not marked yet)."""
    if owner(directory) is None:
        (Path(directory) / MARKER).write_text(json.dumps({"kind": kind}) + "\n")


@contextlib.contextmanager
def claim(directory: Path, kind: str, key: str) -> Iterator[None]:
    """Check, lock and mark `directory` as sete_lite's `kind` output for the block (see the module doc)."""
    directory = Path(directory)
    check_own(directory, kind, key)
    with lock(directory / LOCK, f"{key} '{directory}'"):
        check_own(directory, kind, key)  # again under the lock: another process may have written meanwhile
        mark(directory, kind)
        yield
