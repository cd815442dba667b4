"""Budget-matched references: `steps_scale` scales every task's steps, and `adapter_i2i_budget`
trains as many steps per task as I2I does on the default sequence."""
from bench.config import plan_tasks, resolve
from bench.registry import METHODS, TASKS
from conftest import ToyBackbone


def configured(name: str, sets=()):
    cfg = resolve(name, METHODS.get(name), list(sets), sequence="default")
    m = METHODS.get(name)(ToyBackbone(), [TASKS.get(p.name)() for p in plan_tasks(cfg)], METHODS.get(name).HParams(**cfg.hparams))
    return cfg, m


def steps_per_task(name: str, sets=()) -> list[int]:
    """Training steps of each task, as the runner computes them (bench/runner.py train_group)."""
    cfg, m = configured(name, sets)
    return [sum(max(1, round(s.steps * p.steps)) for s in m.stages(t)) for t, p in enumerate(plan_tasks(cfg))]


def test_steps_scale_scales_every_task_and_names_a_new_run():
    plain, scaled = (resolve("adapter", METHODS.get("adapter"), sets, sequence="default") for sets in ([], [("steps_scale", "1.5")]))
    assert [p.steps for p in plan_tasks(scaled)] == [round(1.5 * p.steps) for p in plan_tasks(plain)]
    assert steps_per_task("adapter", [("steps_scale", "2")]) == [2 * s for s in steps_per_task("adapter")]
    assert plain.run_id != scaled.run_id


def test_adapter_i2i_budget_trains_as_many_steps_as_i2i():
    i2i = steps_per_task("i2i")
    assert i2i[1] > i2i[0]  # I2I trains its later tasks longer than `adapter` does
    assert steps_per_task("adapter_i2i_budget") == i2i
    _, m = configured("adapter_i2i_budget")
    assert m.stages(0)[0].shared == "adapter" and m.stages(1)[0].shared is None  # only task 0 is `adapter`'s
