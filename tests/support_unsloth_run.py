"""One short training run, on plain TRL or on Unsloth's patched trainer, recorded step by step.

    python tests/support_unsloth_run.py --backend unsloth --run-dir D --out record.json
    python tests/support_unsloth_run.py --backend unsloth --config builtin:smollm2-cpu --set max_prompts=4 ...

Run in a process of its own: `--backend unsloth` imports Unsloth and applies its GRPO rewrite
(`PatchFastRL`), which on a GPU happens at `import unsloth` and rebinds `trl.GRPOTrainer` to a generated
`UnslothGRPOTrainer` for the whole process. tests/test_unsloth_contract.py compares the two records.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["transformers", "unsloth"], required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", default=str(REPO / "configs" / "smoke_cpu.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    if args.backend == "unsloth":
        from unsloth import FastLanguageModel
        from unsloth.models.rl import PatchFastRL

        PatchFastRL("GRPO", FastLanguageModel)

    import torch
    import trl
    from transformers import TrainerCallback

    from sete_lite.logprobs import completion_logprobs
    from sete_lite.train import parse_train_config, run
    from sete_lite.trainer import SENTTrainer

    settings = [
        f"backend={args.backend}",
        "fast_inference=false",
        "eval_before_training=false",
        "eval_at_stage_end=false",
        f"output_dir={args.run_dir}",
        *args.set,
    ]
    configs = parse_train_config(args.config, settings)
    steps: list[dict] = []

    class RecordLoss(TrainerCallback):
        """The tensors each step's loss was computed from (one micro-batch per step in the smoke config)."""

        trainer: SENTTrainer | None = None

        def on_pre_optimizer_step(self, train_args, state, control, **kwargs):
            seen = self.trainer.last_loss_inputs
            mask = seen["mask"].bool()
            # Each row alone, without padding: what the batch's left-padded rows must reproduce.
            alone = []
            with torch.no_grad():
                for ids, row_mask, keep in zip(seen["input_ids"], seen["attention_mask"], mask, strict=True):
                    ids = ids[row_mask.bool()][None]  # the prompt without its left pads, the valid completion
                    logp, _ = completion_logprobs(
                        self.trainer.model,
                        ids,
                        torch.ones_like(ids),
                        int(keep.sum()),
                        temperature=self.trainer.temperature,
                    )
                    alone.extend(logp[0].tolist())
            steps.append(
                {
                    "loss": seen["loss"].item(),
                    "logp": seen["logp"][mask].tolist(),
                    "logp_rows_alone": alone,
                    "ref_logp": seen["ref_logp"][mask].tolist(),
                    "entropy": seen["entropy"][mask].tolist(),
                    "advantages": seen["advantages"].tolist(),
                }
            )

    original_init = SENTTrainer.__init__

    def init_with_recorder(self, *a, **kw):
        recorder = RecordLoss()
        kw["callbacks"] = [*kw.get("callbacks", []), recorder]
        original_init(self, *a, **kw)
        recorder.trainer = self

    SENTTrainer.__init__ = init_with_recorder
    _, trainer = run(configs)
    metrics = [json.loads(line) for line in (args.run_dir / "metrics.jsonl").read_text().splitlines()]
    decoder = trainer.model.get_base_model().get_decoder()
    record = {
        "trainer_base": f"{SENTTrainer.__mro__[1].__module__}.{SENTTrainer.__mro__[1].__qualname__}",
        "trl_grpo_trainer_is_base": SENTTrainer.__mro__[1] is trl.GRPOTrainer,
        "unsloth_model": type(trainer.model.get_base_model()).__module__,
        "decoder_max_seq_length": getattr(decoder, "max_seq_length", None),
        "rewards": [row["reward"] for row in metrics if "reward" in row],
        "metrics_loss": [row["loss"] for row in metrics if "loss" in row],
        "steps": steps,
    }
    args.out.write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1:])
