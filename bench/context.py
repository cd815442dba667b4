"""What the runner tells a method about the task it is training: `TaskContext`, the one argument of
every training hook. Nothing is written into a method from outside; per-task settings (learning
rates, the seed) live here, so they apply to their task and cannot leak into the next one."""
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

from bench.precision import autocast

if TYPE_CHECKING:
    from bench.data import EncodedSplit


@dataclass(frozen=True)
class TaskContext:
    task: int                          # the task being trained (joint training: the last of `tasks`)
    tasks: tuple[int, ...]             # the tasks trained together: (task,), or every task for a joint method
    train_data: "Sequence[EncodedSplit]"  # every task's training split, by task index (replay memories, Fishers)
    seed: int                          # this task's seed; torch is seeded with it before `begin_task`
    lr: float                          # this task's learning rate for the backbone / adapters
    head_lr: float                     # ... and for its head
    precision: str                     # "fp32" or "bf16": what the loop's autocast applies
    stage: object = None               # the bench.method.Stage being trained; None in `begin_task` / `end_task`
    run_log: object = None             # the run's loggers (bench.loggers.RunLog) the loop reports steps to; None: none on

    def at(self, stage) -> "TaskContext":
        return replace(self, stage=stage)

    def autocast(self):
        """The training loop's autocast, for a hook that runs a forward of its own (after_backward)."""
        return autocast(self.precision, self.train_data[self.task].fields["label"].device.type)
