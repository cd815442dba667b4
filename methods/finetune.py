"""Sequential fine-tuning: the whole backbone and the current head train on each task in turn.
The lower bound of continual learning: nothing protects earlier tasks."""
from bench.method import Method
from bench.registry import METHODS


@METHODS.register("finetune")
class Finetune(Method):
    trains_as = "finetune"  # its first task is shared with ewc, er, lwf and single_task
