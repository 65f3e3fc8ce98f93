"""Build the one folder of wheels the GPU check carries to the device machine: .whl/gpu_check.

    python3 scripts/gpu_check_wheels.py             # download the pins, slim them, check what one call carries
    python3 scripts/gpu_check_wheels.py --verify    # then install them into a scratch folder and import Unsloth

1. `pip download` every pin of benchmarks/gpu_check_wheels.txt for the machine (Python 3.12, manylinux
   x86_64, no dependencies) into .whl/download (kept: a second build downloads nothing).
2. Rewrite each wheel into .whl/gpu_check without the files the check never imports (SLIM below):
   Unsloth's web UI and CLI, and bitsandbytes' native libraries for every CUDA but the machine's.
   The rewritten wheel lists in its RECORD exactly the files it holds, so pip installs it as usual.
3. Add up what one device call carries (.whl/gpu_check + the tracked files + the untracked files git
   does not ignore: the device tool sends all three) and fail if it passes 64 MiB.

--verify installs the folder with the machine's own command (pip --no-index --no-deps --target) into
a scratch folder, with a Python 3.12 pip when one is found here, and imports `unsloth`,
`FastLanguageModel`, bitsandbytes and peft from it with this interpreter (the project venv's torch
and transformers, Unsloth's CPU path: no GPU needed).
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHEEL_LIST = REPO / "benchmarks" / "gpu_check_wheels.txt"
DOWNLOADS = REPO / ".whl" / "download"
CARRIED = REPO / ".whl" / "gpu_check"  # the folder the device call names in `carry`
CALL_LIMIT_BYTES = 64 << 20  # what one device call may carry: working tree + carried paths
# pip matches each manylinux tag exactly: name the glibc versions these wheels are published for.
PLATFORMS = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"] + [
    f"manylinux_2_{n}_x86_64" for n in (24, 27, 28, 31, 34, 35)
]
# The machine's torch is 2.11.0+cu130: bitsandbytes loads libbitsandbytes_cuda130.so there (exact match
# on torch.version.cuda) and libbitsandbytes_cpu.so without CUDA.
BNB_LIBRARIES_KEPT = {"libbitsandbytes_cuda130.so", "libbitsandbytes_cpu.so"}


def drop_unsloth_ui(path: str) -> bool:
    """studio/ (the web UI, 26 MB of the 28.6 MB wheel) and unsloth_cli/: nothing under unsloth/ imports them."""
    return path.split("/", 1)[0] in ("studio", "unsloth_cli")


def drop_other_bnb_libraries(path: str) -> bool:
    """Every native library but CUDA 13.0's and the CPU one (CUDA 11.8-13.2, ROCm, XPU: 39.5 of 43 MB)."""
    name = path.rsplit("/", 1)[-1]
    return path.startswith("bitsandbytes/") and name.startswith("libbitsandbytes_") and name not in BNB_LIBRARIES_KEPT


# Per distribution (as pinned in the list): which files of its wheel to leave out.
SLIM: dict[str, Callable[[str], bool]] = {
    "unsloth": drop_unsloth_ui,
    "bitsandbytes": drop_other_bnb_libraries,
}


def read_pins(path: Path = WHEEL_LIST) -> dict[str, str]:
    """{distribution name: version} from the list: one `name==version` per line, `#` starts a comment."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
        if not match:
            raise ValueError(f"{path.name}:{number}: '{line}' is not an exact pin NAME==VERSION")
        name = normalize(match.group(1))
        if name in pins:
            raise ValueError(f"{path.name}:{number}: {name} is pinned twice (two versions stop the whole install)")
        pins[name] = match.group(2)
    return pins


def normalize(name: str) -> str:
    """A distribution's canonical name (PEP 503), as wheel file names spell it after escaping."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_distribution(path: Path) -> str:
    return normalize(path.name.split("-", 1)[0])


def record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def slim_wheel(source: Path, target_dir: Path, drop: Callable[[str], bool] | None) -> Path:
    """Copy one wheel into target_dir, leaving out the files `drop` selects.

    The dist-info is made to agree with what is left: RECORD lists exactly the kept files (with their
    hashes), top_level.txt names only packages still present, and console scripts whose module is gone
    are removed (pip would otherwise write an `unsloth` command that cannot start). Entries keep their
    original timestamps and order, so the same input gives the same bytes.
    """
    target = target_dir / source.name
    if drop is None:
        shutil.copy2(source, target)
        return target
    with zipfile.ZipFile(source) as wheel:
        infos = wheel.infolist()
        record_name = next(i.filename for i in infos if i.filename.endswith(".dist-info/RECORD"))
        dist_info = record_name.rsplit("/", 1)[0]
        kept = [i for i in infos if not drop(i.filename) and i.filename != record_name]
        tops = {i.filename.split("/", 1)[0] for i in kept}
        contents: dict[str, bytes] = {}
        for info in kept:
            data = wheel.read(info.filename)
            if info.filename == f"{dist_info}/top_level.txt":
                data = "".join(f"{name}\n" for name in data.decode().split() if name in tops).encode()
            elif info.filename == f"{dist_info}/entry_points.txt":
                data = entry_points_kept(data.decode(), tops).encode()
            contents[info.filename] = data
        record_info = next(i for i in infos if i.filename == record_name)
    rows = [[name, record_hash(data), str(len(data))] for name, data in contents.items()]
    record = io.StringIO()
    csv.writer(record, lineterminator="\n").writerows([*rows, [record_name, "", ""]])
    partial = target.with_suffix(".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as out:
        for info in kept:
            out.writestr(info, contents[info.filename], compress_type=zipfile.ZIP_DEFLATED)
        out.writestr(record_info, record.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
    partial.replace(target)
    return target


def entry_points_kept(text: str, tops: set[str]) -> str:
    """entry_points.txt without the entries whose module's top-level package was dropped."""
    lines = []
    for line in text.splitlines():
        _, sep, target = line.partition("=")
        module = target.strip().split(":", 1)[0].split(".", 1)[0]
        if sep and not line.lstrip().startswith("[") and module not in tops:
            continue
        lines.append(line)
    # A section left with no entries is harmless to pip; drop trailing blank lines only.
    return "\n".join(lines).rstrip("\n") + "\n"


def download(pins: dict[str, str], python: str) -> list[Path]:
    """pip download each pin (no deps) into DOWNLOADS; returns one wheel per pin."""
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    command = [
        python,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        *[arg for tag in PLATFORMS for arg in ("--platform", tag)],
        "-d",
        str(DOWNLOADS),
        *[f"{name}=={version}" for name, version in pins.items()],
    ]
    subprocess.run(command, check=True)
    wheels = []
    for name, version in pins.items():
        found = [
            p for p in DOWNLOADS.glob("*.whl") if wheel_distribution(p) == name and p.name.split("-")[1] == version
        ]
        if len(found) != 1:
            raise RuntimeError(f"expected one wheel of {name}=={version} in {DOWNLOADS}, found {found}")
        wheels.append(found[0])
    return wheels


def working_tree_bytes(repo: Path = REPO) -> int:
    """Bytes the device tool sends besides `carry`: tracked files and untracked files git does not ignore."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        check=True,
        capture_output=True,
    ).stdout
    total = 0
    for name in set(filter(None, listing.decode().split("\0"))):
        path = repo / name
        if path.is_file() and not path.is_symlink():  # a deleted tracked file travels as nothing
            total += path.stat().st_size
    shared = repo / "shared"  # a shared/ folder in the checkout travels too, ignored or not
    if shared.is_dir():
        total += sum(p.stat().st_size for p in shared.rglob("*") if p.is_file() and not p.is_symlink())
    return total


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.whl"))


def build(python: str) -> list[Path]:
    pins = read_pins()
    unknown = sorted(set(SLIM) - set(pins))
    if unknown:
        raise ValueError(f"SLIM names {unknown}, which {WHEEL_LIST.name} does not pin")
    sources = download(pins, python)
    if CARRIED.exists():
        shutil.rmtree(CARRIED)
    CARRIED.mkdir(parents=True)
    built = []
    for source in sources:
        target = slim_wheel(source, CARRIED, SLIM.get(wheel_distribution(source)))
        built.append(target)
        saved = source.stat().st_size - target.stat().st_size
        note = f" (slimmed from {source.stat().st_size / 1e6:.1f} MB)" if saved else ""
        print(f"  {target.stat().st_size / 1e6:6.2f} MB  {target.name}{note}")
    return built


def report_size() -> bool:
    wheels, tree = folder_bytes(CARRIED), working_tree_bytes()
    total = wheels + tree
    print(
        f"one device call carries {total / (1 << 20):.1f} MiB of {CALL_LIMIT_BYTES >> 20}: wheels "
        f"{wheels / (1 << 20):.1f} MiB ({CARRIED.relative_to(REPO)}), working tree {tree / (1 << 20):.1f} MiB "
        "(tracked + untracked not ignored)"
    )
    if total > CALL_LIMIT_BYTES:
        print("too large for one device call", file=sys.stderr)
        return False
    return True


def python312() -> str | None:
    """A Python 3.12 here with pip ($PYTHON312, else python3.12 on PATH): it installs as the machine's does."""
    path = os.environ.get("PYTHON312") or shutil.which("python3.12")
    if path and subprocess.run([path, "-m", "pip", "--version"], capture_output=True).returncode == 0:
        return path
    return None


def verify(python: str) -> None:
    """Install CARRIED as the device does, then import Unsloth (CPU path) from it."""
    site = Path(tempfile.mkdtemp(prefix="gpu-check-site-"))
    try:
        installer = python312() or python
        extra = [] if installer != python else ["--python-version", "3.12", "--only-binary=:all:"]
        wheels = [str(p) for p in sorted(CARRIED.glob("*.whl"))]
        # The machine's own install command (scripts/gpu_check.sh), into a scratch folder.
        command = [installer, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--no-deps"]
        subprocess.run([*command, "--no-compile", "--target", str(site), *extra, *wheels], check=True)
        print(f"installed {len(list(CARRIED.glob('*.whl')))} wheels into {site} with {installer}")
        probe = (
            "import os, unsloth\n"  # Unsloth first, as every section imports it
            "from unsloth import FastLanguageModel\n"
            "import bitsandbytes, peft, trl\n"
            "site = os.environ['SITE']\n"
            "for module in (unsloth, bitsandbytes, peft, trl):\n"
            "    assert module.__file__.startswith(site), module.__file__\n"
            "print('imported from the slimmed set: unsloth', unsloth.__version__, 'bitsandbytes',"
            " bitsandbytes.__version__, 'peft', peft.__version__, FastLanguageModel.__name__)\n"
        )
        env = {
            **os.environ,
            "SITE": str(site),
            "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]),
            "UNSLOTH_DISABLE_STATISTICS": "1",
            "HF_HUB_OFFLINE": "1",
        }
        # Unsloth's CPU fallback, then its GPU import path (UNSLOTH_ALLOW_CPU=1: unsloth_zoo patches
        # transformers and TRL as on the machine, which imports more of both packages).
        for allow_cpu in ("0", "1"):
            print(f"import check, UNSLOTH_ALLOW_CPU={allow_cpu}")
            subprocess.run([python, "-c", probe], check=True, env={**env, "UNSLOTH_ALLOW_CPU": allow_cpu}, cwd=site)
    finally:
        shutil.rmtree(site, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=sys.executable, help="the interpreter whose pip downloads")
    parser.add_argument("--verify", action="store_true", help="install into a scratch folder and import Unsloth")
    parser.add_argument("--size-only", action="store_true", help="only add up what one call carries")
    args = parser.parse_args(argv)
    if not args.size_only:
        print(f"building {CARRIED.relative_to(REPO)} from {WHEEL_LIST.relative_to(REPO)}")
        build(args.python)
    fits = report_size()
    if args.verify:
        verify(args.python)
    return 0 if fits else 1


if __name__ == "__main__":
    sys.exit(main())
