"""Method sets: `--methods default` runs the sequence's `methods:` list (what `make leaderboard`
runs), `all` every registered method; names in the list are checked like command-line names."""
import pytest

from bench.errors import BenchError
from bench.registry import METHODS
from bench.suite import plan


def _sequence(tmp_path, methods_line: str):
    path = tmp_path / "seq.yaml"
    path.write_text("tasks: [vqa_color, digits]\n" + methods_line + "options: {steps: 2, train_cap: 64, test_cap: 32, val_size: 16}\n")
    return str(path)


def _methods(waves) -> set[str]:
    return {cfg.method for wave in waves for cfg in wave}


def test_default_is_the_sequences_list_plus_reference(tmp_path):
    seq = _sequence(tmp_path, "methods: [finetune, adapter]\n")
    assert _methods(plan(["default"], [0], [], sequence=seq)) == {"finetune", "adapter", "single_task"}


def test_default_without_a_list_and_all_are_every_method(tmp_path):
    seq = _sequence(tmp_path, "")
    assert _methods(plan(["default"], [0], [], sequence=seq)) == set(METHODS.names())
    assert _methods(plan(["all"], [0], [], sequence=seq)) == set(METHODS.names())


def test_the_default_sequence_names_known_methods():
    assert {"finetune", "adapter", "i2i", "adapter_i2i_budget"} <= _methods(plan(["default"], [0], []))


def test_unknown_or_malformed_method_lists_are_one_line_errors(tmp_path):
    with pytest.raises(BenchError, match="did you mean 'finetune'"):
        plan(["default"], [0], [], sequence=_sequence(tmp_path, "methods: [finetun]\n"))
    with pytest.raises(BenchError, match="'methods' must be a list of method names"):
        plan(["default"], [0], [], sequence=_sequence(tmp_path, "methods: finetune\n"))
