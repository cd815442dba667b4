import pytest

from bench.config import parse_sets, resolve
from bench.errors import BenchError
from bench.registry import BACKBONES, METHODS, TASKS


@pytest.mark.parametrize("registry,name,suggestion", [
    (METHODS, "finetun", "finetune"), (TASKS, "vqa_colour", "vqa_color"), (BACKBONES, "defualt", "default")])
def test_unknown_names_get_did_you_mean(registry, name, suggestion):
    with pytest.raises(BenchError, match=f"did you mean '{suggestion}'"):
        registry.get(name)


def test_methods_register_themselves_from_their_files():
    assert {"finetune", "frozen", "single_task", "multitask", "adapter"} <= set(METHODS.names())


def test_set_coerces_types_and_rejects_bad_values():
    cfg = resolve("adapter", METHODS.get("adapter"), parse_sets(["lr=3e-4", "steps=7", "adapter.reduction=8"]))
    assert cfg.lr == 3e-4 and cfg.steps == 7 and cfg.hparams == {"reduction": 8}
    with pytest.raises(BenchError, match="expected float"):
        resolve("adapter", METHODS.get("adapter"), parse_sets(["lr=fast"]))
    with pytest.raises(BenchError, match="did you mean 'reduction'"):
        resolve("adapter", METHODS.get("adapter"), parse_sets(["adapter.reductio=8"]))
    with pytest.raises(BenchError, match="expected key=value"):
        parse_sets(["lr"])


def test_run_id_is_deterministic_and_config_sensitive():
    a = resolve("finetune", METHODS.get("finetune"), [], seed=1)
    b = resolve("finetune", METHODS.get("finetune"), [], seed=1)
    c = resolve("finetune", METHODS.get("finetune"), [("lr", "1e-3")], seed=1)
    assert a.run_id == b.run_id != c.run_id


def test_an_edited_sequence_file_never_passes_an_old_run_off_as_done(tmp_path):
    seq = tmp_path / "short.yaml"
    seq.write_text("tasks: [vqa_color, digits]\noptions: {steps: 5}\n")
    before = resolve("finetune", METHODS.get("finetune"), [], sequence=str(seq)).run_id
    seq.write_text("tasks: [vqa_color, digits]\noptions: {steps: 6}\n")
    assert resolve("finetune", METHODS.get("finetune"), [], sequence=str(seq)).run_id != before
    seq.write_text("tasks: [vqa_color, digits]\noptions: {steps: 5}\n")
    assert resolve("finetune", METHODS.get("finetune"), [], sequence=str(seq)).run_id == before


def test_precision_auto_is_resolved_before_it_names_a_run():
    cfg = resolve("finetune", METHODS.get("finetune"), [])
    assert cfg.precision in ("fp32", "bf16")  # what this machine runs natively; never "auto" in an id
    assert resolve("finetune", METHODS.get("finetune"), [("precision", "fp32")]).precision == "fp32"
    with pytest.raises(BenchError, match="did you mean 'bf16'"):
        resolve("finetune", METHODS.get("finetune"), [("precision", "bf61")])


@pytest.mark.parametrize("amx, avx512_bf16, expected", [(True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")])
def test_precision_auto_picks_bf16_only_on_cpus_that_run_it_natively(monkeypatch, amx, avx512_bf16, expected):
    import torch

    from bench.precision import resolve_precision
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("fp32", "cpu") == "fp32"


def test_sequence_rescales_method_defaults_and_set_still_wins(tmp_path):
    seq = tmp_path / "short.yaml"
    seq.write_text("tasks: [vqa_color]\nhparams:\n  adapter: {reduction: 4}\n")
    assert resolve("adapter", METHODS.get("adapter"), [], sequence=str(seq)).hparams == {"reduction": 4}
    cfg = resolve("adapter", METHODS.get("adapter"), parse_sets(["adapter.reduction=32"]), sequence=str(seq))
    assert cfg.hparams == {"reduction": 32}
    seq.write_text("tasks: [vqa_color]\nhparams:\n  adapter: {reducton: 4}\n")
    with pytest.raises(BenchError, match="did you mean 'reduction'"):
        resolve("adapter", METHODS.get("adapter"), [], sequence=str(seq))
