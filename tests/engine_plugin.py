"""Plugin of the engine tests (tests/test_engines.py): `paused_finetune` is `finetune` that waits
MMCL_TEST_PAUSE_S seconds (0 when unset) before each task after the first, when the previous task is
checkpointed. The tests set it for the engines' jobs only, so that a run lasts long enough in wall
time to be killed, requeued or lose its node between tasks, for almost no CPU, and gives the
numbers of an unpaused local run (same run id: the pause is not a setting)."""
import os
import time

from bench.registry import METHODS
from methods.finetune import Finetune


class PausedFinetune(Finetune):
    def begin_task(self, t: int):
        if t:
            time.sleep(float(os.environ.get("MMCL_TEST_PAUSE_S", "0")))
        super().begin_task(t)


if "paused_finetune" not in METHODS:  # imported by the tests and again as a plugin (MMCL_PLUGINS)
    METHODS.register("paused_finetune")(PausedFinetune)
