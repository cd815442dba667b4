import numpy as np


def test_toy_runs_every_method_and_fills_the_matrix(run):
    for method in ("finetune", "adapter", "frozen"):
        m = run(method)
        A = m["matrix"]
        assert len(A) == len(m["tasks"]) == 4
        for i, row in enumerate(A):
            assert all(v is not None for v in row[: i + 1]) and all(v is None for v in row[i + 1:])
        assert m["params"]["inference"] > 0
