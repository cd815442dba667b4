"""Multitask reference: one backbone trained on all tasks at once (batches drawn from every task
in proportion to its size), the usual upper bound. It fills only the last row of the matrix."""
from bench.method import Method
from bench.registry import METHODS


@METHODS.register("multitask")
class Multitask(Method):
    joint = True
