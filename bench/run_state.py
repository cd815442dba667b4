"""A run's progress and its checkpoint, for resuming from the last finished task.

The checkpoint holds the weights and the progress together (one atomic file, so they always
agree); progress.json is a copy for people to read and is never read back. Its weights are the
tensors that differ from the model as built (which a resumed run rebuilds identically: it is
seeded), with the built model's digest, so it is never applied to another build: a frozen
backbone is not written after every task."""
import os
from pathlib import Path

import torch

from bench.examples import RunExamples
from bench.store import load_tensors, save_tensors, state_digest, write_json


class RunState:
    def __init__(self, run_dir: Path, method, log, name: str):
        self.method, self.log, self.name = method, log, name
        self.run_dir, self.progress_path, self.ckpt_path = run_dir, run_dir / "progress.json", run_dir / "checkpoint.pt"
        # per-example test scores of every scored cell (bench/examples.py), for the report's statistics
        self.examples = RunExamples()
        # rows of the score matrix, per task: training seconds, trainable parameters; per stage: costs;
        # per downstream task: its result
        self.progress = {"rows": [], "train_s": [], "trainable": [], "fit": [], "downstream": []}
        self.resumed = False
        self.built = {k: v.detach().clone() for k, v in method.state_dict().items()}
        self.built_digest = state_digest(self.built)

    def resume(self, n_tasks: int) -> None:
        """Load the checkpoint, if there is a readable one of this build of the model."""
        if not self.ckpt_path.exists():
            return
        try:
            state = load_tensors(self.ckpt_path)
            if state["finished"] != len(state["progress"]["rows"]):
                raise ValueError("progress does not match the weights")
            if state.get("built") != self.built_digest:
                raise ValueError("it was made from another build of the model")
            self.method.load_state_dict({**self.built, **state["method"]})
            self.progress, self.resumed = state["progress"], True
            self.examples = RunExamples.load(self.run_dir) or RunExamples()
            self.progress.setdefault("downstream", [])
            self.log(f"[{self.name}] resuming after task {len(self.progress['rows'])}/{n_tasks}")
        except Exception as e:  # a partial or corrupt checkpoint is redone, not read
            self.method.load_state_dict(self.built)  # undo a load that failed half-way
            self.log(f"[{self.name}] ignoring unreadable checkpoint ({type(e).__name__}: {e}); starting over")

    def save(self) -> None:
        """Checkpoint after a task; not fsynced: a checkpoint damaged by a power cut is detected and redone."""
        self.examples.save(self.run_dir)  # first: every checkpointed row has its per-example scores
        changed = {k: v for k, v in self.method.state_dict().items()
                   if k not in self.built or not torch.equal(v, self.built[k])}
        save_tensors(self.ckpt_path, {"finished": len(self.progress["rows"]), "method": changed,
                                      "built": self.built_digest, "progress": self.progress}, durable=False)
        write_json(self.progress_path, self.progress)

    def finished(self) -> None:
        """The run's metrics are written: drop the checkpoint where MMCL_KEEP_CHECKPOINT=0 asks to."""
        if os.environ.get("MMCL_KEEP_CHECKPOINT", "1") == "0":
            self.ckpt_path.unlink(missing_ok=True)
