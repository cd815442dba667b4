"""Incremental settings, with Mammoth's names (van de Ven & Tolias's three scenarios):

- `task`: the task id is given at test time and each task has its own head (the harness's original
  setting; the default).
- `class`: no task id at test time. One output space over every label of the sequence, the labels
  merged by their string (after the sequence's optional `label_map`) in sequence order, as VQA
  answer vocabularies are merged (VQACL, CLOVE); a prediction is the argmax over every class seen
  so far.
- `domain`: the tasks share one label space and differ in their inputs; one head, no task id.

In `class` and `domain` every method sees each task as a `UnionTask` (the union's labels, so the
base class builds union-wide heads) and its heads are one module per input format (the same module
at every task index of that format: methods written against `self.heads[t]` run unchanged). The
training loss is over the whole union; the classes not seen yet are masked only in predictions
(validation and test). Which task's modules predict an example is chosen without its task id
(bench/task_id.py).
"""
import dataclasses

import torch

from bench.errors import BenchError, did_you_mean
from bench.task import Task

SETTINGS = ("task", "class", "domain")


def setting_of(cfg) -> str:
    """The run's setting: `--set setting=`, else the sequence file's `setting:`, else `task`."""
    from bench.config import load_sequence
    value = cfg.setting or load_sequence(cfg.sequence).get("setting") or "task"
    if value not in SETTINGS:
        raise did_you_mean(value, SETTINGS, "setting")
    return value


def label_map(sequence: str) -> dict[str, str]:
    """The sequence file's `label_map:` (a label string -> the union label it is merged into)."""
    from bench.config import load_sequence, sequence_path
    table = load_sequence(sequence).get("label_map") or {}
    if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
        raise BenchError(f"sequence file {sequence_path(sequence)}: 'label_map' must map label strings to label "
                         "strings (quote yes/no/true/false, which YAML reads as booleans)")
    return table


def setting_identity(cfg) -> dict:
    """What the setting adds to the run id: nothing for `task` (run ids as before settings existed)."""
    setting = setting_of(cfg)
    return {} if setting == "task" else {"setting": setting, "label_map": label_map(cfg.sequence)}


@dataclasses.dataclass
class UnionTask(Task):
    """Task t as a method sees it in `class` / `domain`: the union's labels (so its head is as wide),
    the task's own loss, metric, modality and chance level."""
    space: "LabelSpace | None" = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def seen(self) -> torch.Tensor:
        return self.space.seen


class LabelSpace:
    """The union label space of a `class` / `domain` run and which tasks share a head."""

    def __init__(self, setting: str, tasks: list[Task], mapping: dict[str, str], widths: list[int]):
        self.setting = setting
        where: dict[str, int] = {}
        self.index: list[torch.Tensor | None] = []  # per task: the union index of each of its labels
        for task in tasks:
            if task.choices:  # its label is the index of the right choice among the example's own
                self.index.append(None)
                continue
            for name in (mapping.get(label, label) for label in task.labels):
                where.setdefault(name, len(where))
            self.index.append(torch.tensor([where[mapping.get(label, label)] for label in task.labels]))
        self.labels = list(where)
        if setting == "domain":
            spaces = [(task.name, {self.labels[k] for k in index.tolist()}) for task, index in zip(tasks, self.index)
                      if index is not None]
            for name, labels in spaces[1:]:
                if labels != spaces[0][1]:
                    differ = sorted(labels ^ spaces[0][1])
                    raise BenchError(f"setting 'domain': every task needs the same labels, and task '{name}' differs "
                                     f"from task '{spaces[0][0]}' in {len(differ)}: {', '.join(differ[:4])}"
                                     + (", ..." if len(differ) > 4 else ""))
        # tasks whose inputs have the same format (pooled width, multiple choice or not) share a head:
        # the format is visible at test time, the task is not
        formats = [(w, bool(t.choices)) for t, w in zip(tasks, widths)]
        self.group = [formats.index(f) for f in formats]
        self.seen = torch.zeros(len(self.labels), dtype=torch.bool)

    def views(self, tasks: list[Task]) -> list[Task]:
        """The tasks as the method sees them (multiple-choice tasks as they are)."""
        return [t if t.choices else UnionTask(name=t.name, kind=t.kind, labels=list(self.labels), n_images=t.n_images,
                                              loss=t.loss, metric=t.metric, chance=t.chance, space=self)
                for t in tasks]

    def share_heads(self, method) -> None:
        """One head per input format: task t's index holds its format's first task's head."""
        for t, first in enumerate(self.group):
            if first != t:
                method.heads[t] = method.heads[first]

    def through(self, i: int, device) -> None:
        """The classes seen once tasks 0..i are trained: what predictions are over."""
        seen = torch.zeros(len(self.labels), dtype=torch.bool)
        for index in self.index[:i + 1]:
            if index is not None:
                seen[index] = True
        self.seen = seen.to(device)

    def remap(self, split, t: int):
        """Task t's encoded split with its labels as union indices (soft VQA targets too)."""
        index = self.index[t]
        if index is None:
            return split
        if split.n_classes is not None:  # sparse soft targets: the scored classes move, the scores stay
            return dataclasses.replace(split, fields={**split.fields, "label_classes": index[split.fields["label_classes"]]},
                                       n_classes=len(self.labels))
        return dataclasses.replace(split, fields={**split.fields, "label": index[split.fields["label"]]})


def label_space(setting: str, sequence: str, tasks: list[Task], widths: list[int], downstream: list[Task]):
    """The run's LabelSpace, or None in the task-incremental setting."""
    if setting == "task":
        return None
    if downstream:
        raise BenchError(f"setting '{setting}': sequence '{sequence}' has downstream tasks, which are learnt "
                         "task-incrementally (each with its own head); use setting 'task'")
    return LabelSpace(setting, tasks, label_map(sequence), widths)


def seen_only(task: Task, logits: torch.Tensor) -> torch.Tensor:
    """The logits a prediction of `task` is over: in `class` / `domain` the classes seen so far."""
    if not isinstance(task, UnionTask):
        return logits
    return logits.masked_fill(~task.seen, float("-inf"))


def labelled(run: dict) -> dict:
    """A finished run's metrics as the report groups them: a run in another setting than its
    sequence file declares (`--set setting=class` on `default`) is reported under
    "<sequence> (<setting>)", apart from the sequence's own runs."""
    from bench.config import load_sequence
    setting = run.get("setting", "task")
    try:
        declared = load_sequence(run["sequence"]).get("setting") or "task"
    except BenchError:  # the file is gone: the runs still report, under the task-IL default
        declared = "task"
    return run if setting == declared else {**run, "sequence": f"{run['sequence']} ({setting})"}
