"""`adapter` trained for I2I's step budget: the reference that separates what I2I's improvised
initialisation brings from what its extra training brings. I2I trains task 0 for one task budget
and every later task for 1 + 2 x `improvise_data` budgets (improvise, initialize, then train);
`adapter_i2i_budget` trains the same adapter + head, from the same zero-initialised start, for
`later_steps` budgets on every task after the first, so both see the same number of steps and
examples per task. Set `later_steps` to I2I's 1 + 2 x improvise_data (3 by default; the default
sequence sets improvise_data 0.5, hence later_steps 2 there). For other budgets, `--set
steps_scale=` scales every task of any method."""
from dataclasses import dataclass

from bench.method import Stage, require
from bench.registry import METHODS
from methods.adapter import Adapter, AdapterHParams


@dataclass
class AdapterBudgetHParams(AdapterHParams):
    later_steps: float = 3.0  # tasks 1.. train this many task budgets (I2I's 1 + 2 x improvise_data)

    def __post_init__(self):
        super().__post_init__()
        require(self.later_steps > 0, "later_steps", self.later_steps, "> 0")


@METHODS.register("adapter_i2i_budget")
class AdapterI2IBudget(Adapter):
    HParams = AdapterBudgetHParams
    trains_as = "adapter"  # its first task is `adapter`'s
    isolates_tasks = True

    def stages(self, t):
        return [self.alone()] if t == 0 else [Stage("train", steps=self.hp.later_steps)]
