"""Several processes of one run (`torchrun`, `accelerate launch`): which process does what.

A launch with N processes is one data-parallel training: TRL/accelerate's DDP gives each process its
slice of every generation batch and all-reduces the gradients. What sete_lite adds around it is
owned here: `Processes` names this process's place in the launch (index, count, a barrier), and the
rule every module follows with it: work is shared out (the semantic-entropy pass scores its batches
round-robin), but only the main process writes the run directory.

One process (plain `python -m ...`) is `Processes()`: index 0 of 1, and waiting is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Processes:
    """This process's place in the launch."""

    index: int = 0
    count: int = 1
    wait_for_everyone: Callable[[], None] = field(default=lambda: None, compare=False)

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def owns(self, position: int) -> bool:
        """Whether this process does the `position`-th piece of work shared out round-robin."""
        return position % self.count == self.index


ONE_PROCESS = Processes()


def launched_processes() -> Processes:
    """The launch this process belongs to (joining its process group on first use, as TRL's
    TrainingArguments do), or one process when started without a launcher."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ONE_PROCESS
    import torch
    from accelerate import PartialState

    # cpu: accelerate sets up no process group for a CPU launch unless told (TrainingArguments' use_cpu).
    state = PartialState(cpu=not torch.cuda.is_available())
    return Processes(state.process_index, state.num_processes, state.wait_for_everyone)


def launcher_note() -> str | None:
    """What to say when a launch asked for several processes but started one: `accelerate launch
    --cpu` runs a single process whatever --num_processes says (accelerate's several-CPU mode is MPI)."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") and "WORLD_SIZE" not in os.environ:
        return (
            "accelerate launch --cpu starts one process whatever --num_processes says; for several CPU processes "
            "use torchrun --nproc_per_node N -m sete_lite.train ..."
        )
    return None


def refuse_several_processes(command: str) -> None:
    """For the commands that run as one process (evaluation, export): a launch of several would
    repeat the same work in each and write the same files."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            f"{command} runs as one process: start it with python, not a torchrun or accelerate launch of several "
            "(a training run evaluates on its main process)"
        )
