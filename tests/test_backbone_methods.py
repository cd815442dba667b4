"""Every registered method on a dual encoder whose towers differ in width (tiny transformers CLIP:
vision 48, text 32): each either runs the default sequence through the runner, or -- where it
stacks one tensor over all adapter sites -- refuses at setup with a one-line error."""
import pytest

from bench.errors import BenchError
from bench.registry import METHODS
from conftest import run_method
from test_prompts import shallow
from tiny_models import tiny  # noqa: F401  (session fixture)

SINGLE_WIDTH = {"atlas", "scalearn", "scalearn_pp"}  # [sites, ..., d] tensors: need one width at every site


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_runs_on_clip_or_refuses_clearly(tmp_path, cache_dir, tiny, method):  # noqa: F811
    def run():
        return run_method(method, tmp_path / "results", cache_dir, backbone=tiny["hf_clip"], steps=2,
                          sets=["train_cap=48", "test_cap=32", "val_size=16", *shallow(method)])
    if method in SINGLE_WIDTH:
        with pytest.raises(BenchError, match="differ in width") as err:
            run()
        assert "\n" not in str(err.value)
        return
    m = run()
    scores = [v for row in m["matrix"] for v in row if v is not None]  # single_task/multitask fill fewer cells
    assert m["matrix"][-1][-1] is not None and all(0 <= v <= 100 for v in scores)
