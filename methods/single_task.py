"""Single-task reference: a fresh pretrained backbone fine-tuned on each task alone. Its diagonal
gives S_j, the reference of CLiMB's knowledge-transfer metric; only the current task is scored."""
import copy

from bench.method import Method, n_params
from bench.registry import METHODS


@METHODS.register("single_task")
class SingleTask(Method):
    trains_as = "finetune"  # the first task is `finetune`'s: the first task from the pretrained backbone
    evaluates_seen_tasks = False

    def setup(self):
        self._pretrained = copy.deepcopy(self.backbone.state_dict())
        # in class- / domain-IL tasks share a head (bench/settings.py): each task starts it afresh too
        self._fresh_heads = [copy.deepcopy(h.state_dict()) for h in self.heads]

    def begin_task(self, ctx):
        self.backbone.load_state_dict(self._pretrained)
        self.heads[ctx.task].load_state_dict(self._fresh_heads[ctx.task])

    def param_report(self):
        report = super().param_report()
        backbone = n_params(self.backbone.parameters())
        report["stored"] += backbone * (len(self.tasks) - 1)  # one fine-tuned backbone per task
        return report
