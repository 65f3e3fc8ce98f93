"""Write the Colab and Kaggle notebooks from one list of cells.

    python notebooks/build_notebooks.py

writes notebooks/sete_lite_colab.ipynb and notebooks/sete_lite_kaggle.ipynb. The two share every cell
but the introduction, the parameters and (Colab only) the Google Drive cell; edit the cells here, never
the .ipynb files: tests/test_notebooks.py checks that the committed notebooks are exactly what this
script writes, and runs both end to end in smoke mode (SETE_LITE_SMOKE=1: CPU, a tiny model, a few steps).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Platform:
    """What differs between the notebooks: where they run, where outputs go, how to get a GPU there."""

    name: str  # file name part: sete_lite_{name}.ipynb
    title: str
    runtime: str  # markdown: how to get the right hardware and settings
    setup: tuple[str, ...]  # code lines that must run before anything imports torch
    parameters: tuple[str, ...]  # parameter lines of this platform only
    clone_dir: str  # where the repository is cloned when the notebook is not opened from a checkout
    output_default: str  # where outputs go outside smoke mode
    extra_cells: tuple[tuple[str, str], ...]  # platform cells placed before the preset is chosen
    metadata: dict = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return NOTEBOOKS_DIR / f"sete_lite_{self.name}.ipynb"


def md(text: str) -> tuple[str, str]:
    return "markdown", textwrap.dedent(text).strip()


def code(text: str) -> tuple[str, str]:
    return "code", textwrap.dedent(text).strip()


INTRO = md(
    """
    # SENT with sete_lite on PLATFORM: score, train, evaluate, export

    **SENT** (semantic- and token-entropy RLVR, [arXiv 2512.04359](https://arxiv.org/abs/2512.04359)) is
    reinforcement learning with verifiable rewards (GRPO with a math-answer checker) that keeps the model
    from collapsing onto one way of answering, which is what stalls plain GRPO. It works on two sides:

    - **data**: before training, every prompt gets the *semantic entropy* (SE) of the base model's answers:
      sample M responses, group them by final answer, take the entropy of the groups. Training then goes
      stage by stage from low SE (the model answers consistently: easier) to high SE (harder).
    - **loss**: a KL penalty to the base model on the low-entropy tokens only, heavier on the few whose
      probability moves most with the advantage (high covariance). The high-entropy "forking" tokens,
      where the reasoning branches, stay free to explore.

    sete_lite runs it on one GPU: a 4-bit base model with LoRA adapters, vLLM rollouts on the same weights
    (Unsloth), and the reference model = the same model with the adapters switched off.

    **Smoke mode** (`SETE_LITE_SMOKE=1` in the environment, used by the project's tests): every cell runs on
    CPU with a tiny built-in model and a few steps in about a minute, without installing anything; only the
    GGUF export, which needs a GPU, is skipped with a printed reason.
    """
)


def intro(platform: Platform) -> list[tuple[str, str]]:
    kind, text = INTRO
    return [(kind, text.replace("PLATFORM", platform.title)), md(platform.runtime)]


def parameters(platform: Platform) -> tuple[str, str]:
    lines = [
        "import os",
        "",
        *platform.setup,
        'SMOKE = os.environ.get("SETE_LITE_SMOKE") == "1"  # CPU smoke test: tiny model, a few steps, no installs',
        'PRESET = "t4"  # "t4": 16 GB (T4); "24gb": 24 GB or more (L4, A10, RTX 3090/4090, A100)',
        "RESUME = False  # True: continue the run in RUN_DIR from its last checkpoint (after a disconnect)",
        *platform.parameters,
        '# Where to get sete_lite when this notebook is not opened from a checkout: its git URL (cloned), e.g.',
        '# "https://github.com/<you>/sete_lite.git", or the path of a checkout. Required then; unused otherwise.',
        'SETE_LITE_SOURCE = ""',
        f'CLONE_DIR = "{platform.clone_dir}"',
        f'OUTPUT_DEFAULT = "{platform.output_default}"  # SETE_LITE_OUTPUT_DIR in the environment overrides it',
    ]
    return "code", "\n".join(lines)


HELPERS = code(
    '''
    import codecs
    import json
    import shlex
    import subprocess
    import sys
    import time
    from pathlib import Path

    from IPython.display import Image, Markdown, clear_output, display


    def sh(*command: str | Path) -> None:
        """Run a command with its output streamed into the cell; raise if it fails."""
        args = [str(part) for part in command]
        print("$", shlex.join(args), flush=True)
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for chunk in iter(lambda: process.stdout.read1(65536), b""):
            print(decoder.decode(chunk), end="", flush=True)
        if process.wait():
            raise RuntimeError(f"exit status {process.returncode}: {shlex.join(args)}")


    def start(*command: str | Path, log: Path) -> subprocess.Popen:
        """Start a command in the background, its output appended to `log`."""
        args = [str(part) for part in command]
        print("$", shlex.join(args), ">>", log)
        with open(log, "ab") as out:
            return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


    def log_tail(log: Path, lines: int = 1) -> str:
        """The last lines of a log, each progress bar shown at its latest redraw."""
        text = log.read_text(errors="replace") if log.exists() else ""
        latest = [line.rstrip("\\r").rsplit("\\r", 1)[-1] for line in text.rstrip("\\n").split("\\n")]
        return "\\n".join(latest[-lines:])


    def wait_for(path: Path, process: subprocess.Popen, log: Path, poll_s: float) -> None:
        """Wait until the background run writes `path`; raise with the end of its log if it stops first."""
        while not path.exists():
            if process.poll() is not None:
                raise RuntimeError(f"the run stopped (exit status {process.returncode}):\\n{log_tail(log, 30)}")
            time.sleep(poll_s)


    def markdown_table(rows: list[dict], keys: list[str]) -> str:
        """The given keys of `rows` as a markdown table, numbers to 4 significant digits."""

        def cell(value: object) -> str:
            return f"{value:.4g}" if isinstance(value, float) else str(value)

        lines = [keys, ["---"] * len(keys), *([cell(row.get(key, "")) for key in keys] for row in rows)]
        return "\\n".join("| " + " | ".join(line) + " |" for line in lines)
    '''
)

INSTALL = [
    md(
        """
        ## 1. Install

        The notebook needs a checkout of the repository (the presets in `configs/`): it uses the one it was
        opened from, else `SETE_LITE_SOURCE` (set it in the first cell: a git URL to clone or a local path).
        Then it installs torch 2.13.0 first (the CUDA build vLLM 0.27.1 pins: a runtime's other torch is
        replaced, which takes a few minutes) and the package with its pinned `gpu` extra (Unsloth and vLLM;
        transformers, TRL and peft at the versions the project tests), as README's GPU section does. Outside
        a notebook the same install is `pip install torch==2.13.0 "sete_lite[gpu] @ git+URL"`. If pip says the runtime must be restarted, restart it and run
        all cells again: finished steps are skipped.
        """
    ),
    code(
        '''
        import importlib.util


        def find_checkout() -> Path | None:
            """A sete_lite checkout: the working directory or one above it, else CLONE_DIR."""
            for directory in (Path.cwd(), *Path.cwd().parents, Path(CLONE_DIR)):
                if (directory / "sete_lite" / "train.py").is_file():
                    return directory
            return None


        REPO_DIR = find_checkout()
        if REPO_DIR is None:
            if not SETE_LITE_SOURCE:
                raise SystemExit(
                    "This notebook is not inside a sete_lite checkout: set SETE_LITE_SOURCE in the first cell to the "
                    "project's git URL (it is cloned to CLONE_DIR) or to the path of a checkout, then run all cells."
                )
            if Path(SETE_LITE_SOURCE).is_dir():
                REPO_DIR = Path(SETE_LITE_SOURCE)
            else:
                sh("git", "clone", "--depth", "1", SETE_LITE_SOURCE, CLONE_DIR)
                REPO_DIR = Path(CLONE_DIR)
        os.chdir(REPO_DIR)  # the presets in configs/ are read from here
        if SMOKE:
            print("smoke mode: nothing to install (sete_lite is installed)")
        elif importlib.util.find_spec("unsloth") and importlib.util.find_spec("sete_lite"):
            print("sete_lite[gpu] is installed")
        else:
            sh(sys.executable, "-m", "pip", "install", "torch==2.13.0")  # the build the gpu extra's vllm pins
            sh(sys.executable, "-m", "pip", "install", ".[gpu]")
        print("checkout:", REPO_DIR)
        '''
    ),
]

COLAB_DRIVE = (
    code(
        """
        if USE_DRIVE:  # off by default; does nothing outside Colab
            try:
                from google.colab import drive
            except ImportError:
                print("USE_DRIVE: not on Colab, the outputs stay in", OUTPUT_DEFAULT)
            else:
                drive.mount("/content/drive")
                OUTPUT_DEFAULT = "/content/drive/MyDrive/sete_lite_runs"
        """
    ),
)

PRESET = [
    md(
        """
        ## 2. Pick a preset

        A preset is one YAML file of settings (every key is documented in the README's configuration reference).

        | `PRESET` | config | model (4-bit + LoRA), data | GPU |
        |---|---|---|---|
        | `t4` | `configs/t4_qwen2.5_1.5b_instruct.yaml` | Qwen2.5-1.5B-Instruct, GSM8K | 16 GB: T4 |
        | `24gb` | `configs/qwen2.5_math_1.5b_dapo.yaml` | Qwen2.5-Math-1.5B, DAPO-Math-17k | 24 GB: L4, A10, A100 |

        Their memory figures are estimates, not measurements (see the comments at the top of each file). To
        change a setting without editing the file, add `"key=value"` strings to `OVERRIDES`: they are passed to
        the trainer as `--set key=value`. The `24gb` preset has no evaluation of its own, so the notebook adds a
        quick one (100 MATH500 problems, 4 samples each) before and after training.
        """
    ),
    code(
        """
        import tempfile

        QUICK_EVAL = [  # for the 24gb preset: 100 MATH500 problems, 4 samples each, before and after training
            "eval_before_training=true",
            "eval_at_stage_end=true",
            "eval_benchmarks=[MATH500]",
            "eval_max_problems=100",
            "eval_num_samples=4",
            "eval_k=[1,4]",
            "eval_max_tokens=2048",
            "eval_batch_size=64",
            "eval_use_chat_template=true",
        ]
        PRESETS = {  # name: (config file, --set overrides)
            "t4": ("configs/t4_qwen2.5_1.5b_instruct.yaml", []),
            "24gb": ("configs/qwen2.5_math_1.5b_dapo.yaml", QUICK_EVAL),
            "smoke": ("configs/smoke_cpu.yaml", []),  # CPU: a tiny built-in model, 4 steps
        }
        CONFIG, OVERRIDES = PRESETS["smoke" if SMOKE else PRESET]
        OUTPUT_ROOT = Path(os.environ.get("SETE_LITE_OUTPUT_DIR") or (tempfile.mkdtemp() if SMOKE else OUTPUT_DEFAULT))
        from sete_lite.rundir import RunDir

        RUN_DIR = OUTPUT_ROOT / Path(CONFIG).stem  # the run directory: scores, metrics, plots, adapters, eval
        RUN = RunDir(RUN_DIR)  # its layout: RUN.se_scores, RUN.metrics, RUN.plots, RUN.evaluation(name), ...
        EXPORT_DTYPE = "float32" if SMOKE else "bfloat16"  # a tiny model's small update could round away in 16 bits
        REFRESH_S = 1 if SMOKE else 30  # seconds between refreshes of the live metrics
        print("run directory:", RUN_DIR)
        print(Path(CONFIG).read_text())
        """
    ),
]

TRAIN = [
    md(
        """
        ## 3. Score and train

        One command runs the whole method: `python -m sete_lite.train --config CONFIG --output-dir RUN_DIR`.
        In order, it evaluates the base model on the held-out problems (`RUN_DIR/eval/before`); scores every
        training prompt's semantic entropy with the adapters off (`RUN_DIR/se_scores`, cached and resumable);
        cuts the prompts into stages by SE; trains stage by stage with the SENT loss; and after each stage
        saves the adapter (`RUN_DIR/adapter/stage-K`) and evaluates it (`RUN_DIR/eval/stage-K`).

        It runs in the background, writing its output to `RUN_DIR/train.log`, so that the next cells can show
        the scores as soon as they exist, then the metrics as they come. Interrupting a cell does not stop the
        run (`TRAINING.terminate()` does); after a disconnect, set `RESUME = True` and run all again.
        """
    ),
    code(
        """
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        LOG = RUN_DIR / "train.log"
        COMMAND = [sys.executable, "-m", "sete_lite.train", "--config", CONFIG, "--output-dir", RUN_DIR]
        COMMAND += ["--resume"] if RESUME else []
        COMMAND += [arg for override in OVERRIDES for arg in ("--set", override)]
        TRAINING = start(*COMMAND, log=LOG)
        """
    ),
    md(
        """
        ### Semantic entropy of the training prompts

        For each prompt the base model answered M times; SE is 0 when all M final answers agree and log M
        (2.08 for M = 8) when they all differ. The histogram shows both estimators: `discrete` counts answers,
        `likelihood` (the paper's, which orders the curriculum) weighs them by their probability.

        What to look at: a spread of values (a curriculum needs easy and hard prompts); in the table, stage 0
        (lowest SE) usually has the higher pass rate. If nearly every prompt sits at log M, the model rarely
        finishes an answer: check the prompt format and `se_max_tokens`.
        """
    ),
    code(
        """
        SCORES = RUN.se_scores
        wait_for(SCORES / "stages.md", TRAINING, LOG, REFRESH_S)
        display(Image(str(SCORES / "se_histogram.png")))
        display(Markdown(f"**Curriculum stages**\\n\\n{(SCORES / 'stages.md').read_text()}"))
        """
    ),
    md(
        """
        ### Live metrics

        The cell below refreshes until the run ends: the progress line, the last logged steps and the curves,
        with the curriculum's stage switch as a dashed vertical line. What to look at:

        - `entropy` (mean token entropy of the rollouts): with plain GRPO it collapses towards 0 within tens of
          steps. Under SENT it should stay roughly level: a slow drift is fine, a collapse or a blow-up is not.
        - `reward` (mean accuracy of the rollouts): rises within a stage; a dip right after the stage switch is
          expected, since the prompts of the next stage are harder.
        - `frac_reward_zero_std`: the share of prompts whose completions all got the same reward, so no learning
          signal. Close to 1 means the prompts are too easy or too hard for the model, and a `loss` of 0 then
          is normal. `kl` (to the base model) grows slowly from 0.
        """
    ),
    code(
        """
        from sete_lite.atomic import read_jsonl
        from sete_lite.plots import plot_training_curves

        WATCH = ["step", "curriculum/stage", "reward", "frac_reward_zero_std", "entropy", "kl"]  # per logged step
        WATCH += ["completions/mean_length", "step_time"]
        while True:
            running = TRAINING.poll() is None
            rows = read_jsonl(RUN.metrics)
            clear_output(wait=True)
            if running:
                print(log_tail(LOG))  # the progress bar: step, reward, entropy, kl, stage
            if rows:
                display(Markdown(markdown_table(rows[-5:], WATCH)))
                for png in plot_training_curves(rows, RUN.plots):
                    display(Image(str(png)))
            if not running:
                break
            time.sleep(REFRESH_S)
        if TRAINING.returncode:
            raise RuntimeError(f"the run failed (exit status {TRAINING.returncode}):\\n{log_tail(LOG, 30)}")
        print(log_tail(LOG, 14))  # the run's summary
        """
    ),
]

EVALUATE = [
    md(
        """
        ## 4. Evaluate before and after

        The run evaluated the base model before training and the adapter after each stage on held-out problems,
        the paper's way: n samples per problem at temperature 1.0, top-p 0.9; Avg@n is the mean accuracy, Pass@k
        the chance that at least one of k samples is right. A larger evaluation of the final adapter, e.g. on
        the paper's benchmarks: `python -m sete_lite.eval --adapter RUN_DIR/adapter --benchmarks MATH500 --n 16`.
        """
    ),
    code(
        """
        EVALUATIONS = RUN.evaluations()  # (name, results.json): before, then stage-0, stage-1, ...
        (_, BEFORE), (LAST, AFTER) = EVALUATIONS[0], EVALUATIONS[-1]
        for label, results in (("before training", BEFORE), (f"after training ({LAST})", AFTER)):
            display(Markdown(f"**{label}**\\n\\n{(results.parent / 'results.md').read_text()}"))
        before, after = (json.loads(path.read_text())["average"] for path in (BEFORE, AFTER))
        print(f"Avg@n: {before['avg']:.3f} -> {after['avg']:.3f}")
        """
    ),
]

EXPORT = [
    md(
        """
        ## 5. Export

        `merged_16bit` loads the base model unquantized, merges the adapter into it and saves a plain
        transformers checkpoint (vLLM, llama.cpp's converter and the hub load it as is). It is checked before it
        is written: the merge really changed the weights by the adapter's update, and the saved files reload to
        the same logits. `--method lora` exports the adapter alone.
        """
    ),
    code(
        """
        EXPORT = [sys.executable, "-m", "sete_lite.export", "--run-dir", RUN_DIR]
        MERGED = RUN_DIR / "export" / "merged"
        sh(*EXPORT, "--method", "merged_16bit", "--dtype", EXPORT_DTYPE, "--output", MERGED)
        """
    ),
    md(
        """
        **GGUF** (for llama.cpp, Ollama, LM Studio) goes through Unsloth's `save_pretrained_gguf` and needs a CUDA
        GPU with the `gpu` extra installed; elsewhere the cell says why it skips, and the merged export above
        converts with llama.cpp's `convert_hf_to_gguf.py`. `q8_0` needs no llama.cpp build; `q4_k_m` builds
        llama.cpp first (minutes).
        """
    ),
    code(
        """
        import importlib.util

        import torch

        if torch.cuda.is_available() and importlib.util.find_spec("unsloth"):
            GGUF = RUN_DIR / "export" / "gguf"
            sh(*EXPORT, "--method", "gguf", "--dtype", "float16", "--quantization", "q8_0", "--output", GGUF)
        else:
            print("GGUF skipped: it needs a CUDA GPU and Unsloth (the gpu extra). Convert the merged export instead:")
            print(f"  python llama.cpp/convert_hf_to_gguf.py {MERGED} --outtype f16")
        """
    ),
]

MEMORY = md(
    """
    ## When memory runs out

    Change one setting at a time, roughly in this order (the `t4` preset's values in brackets), in the YAML
    file or as overrides at the end of the preset cell, e.g.
    `OVERRIDES += ["per_device_train_batch_size=4", "gradient_accumulation_steps=8"]`.

    - `per_device_train_batch_size` (8): completions per training micro-batch. Halve it and double
      `gradient_accumulation_steps` to keep the same optimizer step.
    - `num_generations` (8): completions per prompt; at least 2, fewer gives noisier advantages.
    - `max_completion_length` (512): the KV cache and the activations grow with it; lower `se_max_tokens`
      and `eval_max_tokens` with it.
    - `gpu_memory_utilization` (0.45): vLLM's share of the card. Lower it when a training step runs out of
      memory, raise it when vLLM finds no room for its KV cache.
    - `gradient_checkpointing` (true): recomputes activations in the backward pass instead of storing them;
      keep it on.
    - `lora_r` (16): the adapter's rank, which sizes its weights, gradients and optimizer state.

    An out-of-memory error during loading points at `gpu_memory_utilization` or `max_seq_length`; during a
    training step, at the first three items.
    """
)


def cells(platform: Platform) -> list[tuple[str, str]]:
    """The notebook's cells, top to bottom, as (kind, source) pairs."""
    return [
        *intro(platform),
        parameters(platform),
        HELPERS,
        *INSTALL,
        *platform.extra_cells,
        *PRESET,
        *TRAIN,
        *EVALUATE,
        *EXPORT,
        MEMORY,
    ]


def build(platform: Platform) -> nbformat.NotebookNode:
    """The notebook of `platform`, with fixed cell ids so that rebuilding gives the same file."""
    makers = {"markdown": new_markdown_cell, "code": new_code_cell}
    notebook = new_notebook(
        cells=[makers[kind](source, id=f"cell-{i:02d}") for i, (kind, source) in enumerate(cells(platform))],
        metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
            **platform.metadata,
        },
    )
    nbformat.validate(notebook)
    return notebook


def render(platform: Platform) -> str:
    """The .ipynb text of `platform`, exactly as written to its file."""
    return nbformat.writes(build(platform)) + "\n"


COLAB = Platform(
    name="colab",
    title="Colab",
    runtime="""
    **Before you start**: Runtime > Change runtime type > **T4 GPU** (free) or L4 / A100, then Runtime > Run all.
    The `t4` preset takes roughly an hour on a T4 (an estimate). Outputs go to `/content/sete_lite_runs`, which
    disappears with the session: set `USE_DRIVE = True` to keep them on Google Drive.
    """,
    setup=(),
    parameters=("USE_DRIVE = False  # True: write the outputs to Google Drive, so they outlive the session",),
    clone_dir="/content/sete_lite",
    output_default="/content/sete_lite_runs",
    extra_cells=COLAB_DRIVE,
    metadata={"accelerator": "GPU", "colab": {"gpuType": "T4", "provenance": []}},
)

KAGGLE = Platform(
    name="kaggle",
    title="Kaggle",
    runtime="""
    **Before you start**: in the notebook's settings choose Accelerator **GPU T4 x2** (the method uses one of
    them; the first cell hides the other) and turn **Internet on** (pip, git and the model hub need it), then
    Run all. The `t4` preset takes roughly an hour on a T4 (an estimate). Outputs go to
    `/kaggle/working/sete_lite_runs` and are kept with the notebook's saved version (the Output tab).
    """,
    setup=('os.environ["CUDA_VISIBLE_DEVICES"] = "0"  # two T4s, the method uses one: set before torch is imported',),
    parameters=(),
    clone_dir="/kaggle/working/sete_lite",
    output_default="/kaggle/working/sete_lite_runs",
    extra_cells=(),
    metadata={"kaggle": {"accelerator": "nvidiaTeslaT4", "isGpuEnabled": True, "isInternetEnabled": True}},
)

PLATFORMS = (COLAB, KAGGLE)


def main() -> None:
    for platform in PLATFORMS:
        platform.path.write_text(render(platform))
        print(f"wrote {platform.path}")


if __name__ == "__main__":
    main()
