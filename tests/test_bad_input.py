"""The bad-input catalogue (docs/errors.md): each mistake gets exactly one line on stderr that
starts with "error:" and names the problem, exit code 2, and leaves no partial results behind."""
import errno
import os
import shutil
import sys
from pathlib import Path

import pytest

import run_bench
from bench.backbones.base import Backbone
from bench.registry import BACKBONES

ROOT = Path(__file__).resolve().parent.parent
PIQA = ROOT / "tests" / "fixtures" / "official" / "piqa"
QUICK = ["run", "--quick", "--backbone", "toy", "--workers", "1"]
PIQA_SEQUENCE = "tasks: [piqa]\noptions: {steps: 1, val_size: 4}\n"


@BACKBONES.register("text_only")
class TextOnlyBackbone(Backbone):
    """A backbone with a text encoder and no image encoder (never built: the check comes first)."""

    def encode_texts(self, texts):
        raise AssertionError("not reached")


def full_disk_at_checkpoint(monkeypatch):
    """The disk fills up while the first checkpoint is written."""
    import torch
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if hasattr(f, "fileno") and ".checkpoint.pt." in os.readlink(f"/proc/self/fd/{f.fileno()}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, "save", save)


def break_line(text: str, n: int) -> str:
    lines = text.splitlines(keepends=True)
    lines[n - 1] = lines[n - 1].replace('"goal"', "goal")  # no longer JSON
    return "".join(lines)


def no_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)


def no_wandb(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)


def no_sbatch(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)


# (case, command-line arguments, expected message after "error: ", files to write, patch)
# {out}: a fresh results directory, {tmp}: the test's folder, {data}: a copy of the PIQA fixture.
CASES = [
    ("unknown method", ["run", "--methods", "finetun"], "unknown method 'finetun'; did you mean 'finetune'?", {}, None),
    ("unknown sequence", ["run", "--sequence", "defualt"], "unknown sequence 'defualt'; did you mean 'default'?", {},
     None),
    ("unknown task in a sequence file", [*QUICK, "--sequence", "{tmp}/seq.yaml"],
     "unknown task 'vqa_colour'; did you mean 'vqa_color'?", {"seq.yaml": "tasks: [vqa_colour, digits]\n"}, None),
    ("unknown backbone", ["run", "--backbone", "toyy"], "unknown backbone 'toyy'; did you mean 'toy'?", {}, None),
    ("unknown executor", [*QUICK, "--executor", "slrum"], "unknown executor 'slrum'; did you mean 'slurm'?", {}, None),
    ("unknown executor option", [*QUICK, "--executor", "slurm", "--set", "slurm.partitio=gpu"],
     "unknown slurm option 'partitio'; did you mean 'partition'?", {}, None),
    ("option of another executor", [*QUICK, "--set", "slurm.partition=gpu"],
     "--set slurm.partition=... is an option of --executor slurm, not of --executor local", {}, None),
    ("bad executor option type", [*QUICK, "--executor", "slurm", "--set", "slurm.time_min=soon"],
     "bad --set slurm.time_min=soon: expected int", {}, None),
    ("unknown --set key", [*QUICK, "--set", "stepz=3"], "unknown --set key 'stepz'; did you mean 'steps'?", {}, None),
    ("--set without a value", [*QUICK, "--set", "lr"], "bad --set 'lr': expected key=value", {}, None),
    ("bad --set type", [*QUICK, "--set", "lr=fast"], "bad --set lr=fast: expected float", {}, None),
    ("unknown hyper-parameter", [*QUICK, "--methods", "adapter", "--set", "adapter.reductio=8"],
     "unknown hyper-parameter of method 'adapter' 'reductio'; did you mean 'reduction'?", {}, None),
    ("hyper-parameter out of range", [*QUICK, "--methods", "er", "--set", "er.memory_fraction=0"],
     "bad hyper-parameter of method 'er': memory_fraction=0.0: must be in (0, 1]", {}, None),
    ("unknown method under a sequence's hparams", [*QUICK, "--methods", "er", "--sequence", "{tmp}/seq.yaml"],
     "sequence file {tmp}/seq.yaml: unknown method under 'hparams' 'err'; did you mean 'er'?",
     {"seq.yaml": "tasks: [digits]\nhparams: {err: {replay_every: 1}}\n"}, None),
    ("bad hyper-parameter type in a sequence file", [*QUICK, "--methods", "er", "--sequence", "{tmp}/seq.yaml"],
     "sequence file {tmp}/seq.yaml: bad hparams.er.memory_fraction=abc: expected float",
     {"seq.yaml": "tasks: [digits]\nhparams: {er: {memory_fraction: abc}}\n"}, None),
    ("--set for an unknown method", [*QUICK, "--set", "adaptr.reduction=8"],
     "unknown method in --set 'adaptr'; did you mean 'adapter'?", {}, None),
    ("value out of range", [*QUICK, "--set", "steps=0"], "bad steps=0 (task 'vqa_color'): must be an integer >= 1",
     {}, None),
    ("negative seed", [*QUICK, "--seeds", "-1"], "seeds must be integers from 0 to 4294967295, got -1", {}, None),
    ("seed out of range", [*QUICK, "--seeds", "4294967296"],
     "seeds must be integers from 0 to 4294967295, got 4294967296", {}, None),
    ("seed not a number", [*QUICK, "--seeds", "one"], "argument --seeds: invalid int value: 'one'", {}, None),
    ("zero workers", [*QUICK, "--set", "workers=0"], "bad workers=0: must be an integer >= 1", {}, None),
    ("unknown device", [*QUICK, "--set", "device=gpu"], "unknown device 'gpu' (expected auto, cpu, cuda or cuda:<index>)",
     {}, None),
    ("malformed sequence YAML", [*QUICK, "--sequence", "{tmp}/seq.yaml"], "malformed sequence file {tmp}/seq.yaml: ",
     {"seq.yaml": "tasks: [vqa_color\n"}, None),
    ("sequence YAML with a python tag", [*QUICK, "--sequence", "{tmp}/seq.yaml"],
     "malformed sequence file {tmp}/seq.yaml: could not determine a constructor for the tag "
     "'tag:yaml.org,2002:python/object/apply:os.system'",
     {"seq.yaml": 'tasks: !!python/object/apply:os.system ["touch {tmp}/pwned"]\n'}, None),
    ("sequence without tasks", [*QUICK, "--sequence", "{tmp}/seq.yaml"],
     "malformed sequence file {tmp}/seq.yaml: expected a mapping with a non-empty 'tasks' list",
     {"seq.yaml": "tasks: []\n"}, None),
    ("unknown task option in a sequence file", [*QUICK, "--sequence", "{tmp}/seq.yaml"],
     "sequence '{tmp}/seq.yaml': unknown task option 'stepz'",
     {"seq.yaml": "tasks: [{name: digits, stepz: 3}]\n"}, None),
    ("unknown held-out concept", [*QUICK, "--sequence", "{tmp}/seq.yaml"],
     "unknown concept of task 'vqa_color' in its holdout 'circel'; did you mean 'circle'?",
     {"seq.yaml": "tasks: [{name: vqa_color, holdout: [circel]}]\n"}, None),
    ("probe task that is not single-label", [*QUICK, "--sequence", "{tmp}/seq.yaml"],
     "probe task 'vqav2' must be single-label classification (not soft VQA scores or multiple choice)",
     {"seq.yaml": "tasks: [digits]\nprobe: [vqav2]\n"}, None),
    ("sequence based on itself", [*QUICK, "--sequence", "{tmp}/seq.yaml"],
     "sequence file {tmp}/seq.yaml: 'base' must name another sequence, without a cycle",
     {"seq.yaml": "base: {tmp}/seq.yaml\ntasks: [digits]\n"}, None),
    ("data_root not given", [*QUICK, "--sequence", "{tmp}/seq.yaml"],
     "task 'piqa': reads the dataset's files: pass --set data_root=<dir>", {"seq.yaml": PIQA_SEQUENCE}, None),
    ("missing data root", [*QUICK, "--sequence", "{tmp}/seq.yaml", "--set", "data_root={tmp}/nowhere"],
     "task 'piqa': data_root {tmp}/nowhere is not a directory", {"seq.yaml": PIQA_SEQUENCE}, None),
    ("malformed annotation line", [*QUICK, "--sequence", "{tmp}/seq.yaml", "--set", "data_root={data}"],
     "task 'piqa': {data}/piqa/train.jsonl line 3: malformed JSON",
     {"seq.yaml": PIQA_SEQUENCE, "data/piqa/train.jsonl": lambda text: break_line(text, 3)}, None),
    ("empty task", [*QUICK, "--sequence", "{tmp}/seq.yaml", "--set", "data_root={data}"],
     "task 'piqa' has no test examples",
     {"seq.yaml": PIQA_SEQUENCE, "data/piqa/valid.jsonl": "", "data/piqa/valid-labels.lst": ""}, None),
    ("backbone without the task's modality", ["run", "--quick", "--backbone", "text_only"],
     "backbone 'text_only' cannot encode images for task 'vqa_color' (kind 'vl')", {}, None),
    ("output directory is a file", [*QUICK, "--out", "{tmp}/file"], "output directory {tmp}/file is a file",
     {"file": "x"}, None),
    ("output directory cannot be created", [*QUICK, "--out", "{tmp}/file/results"],
     "cannot create output directory {tmp}/file/results: Not a directory", {"file": "x"}, None),
    ("disk full during a run", [*QUICK, "--methods", "frozen"],
     "cannot write {out}/runs/default-single_task-s0-", {}, full_disk_at_checkpoint),
    ("ray not installed", [*QUICK, "--methods", "frozen", "--executor", "ray"],
     "executor 'ray' needs the ray package", {}, no_ray),
    ("logger package not installed", [*QUICK, "--log", "wandb"],
     "--log wandb needs the package 'wandb': pip install 'mmcl-bench[loggers]'", {}, no_wandb),
    ("unknown logger", [*QUICK, "--log", "tensorbord"], "unknown logger 'tensorbord'; did you mean 'tensorboard'?", {},
     None),
    ("figure width out of range", [*QUICK, "--set", "figure_width=100"],
     "bad figure_width=100.0: must be inches from 2 to 20 (3.3 for one column, 7 for two)", {}, None),
    ("unknown report --set key", ["report", "--set", "figure_widht=3"],
     "unknown report --set key 'figure_widht'; did you mean 'figure_width'?", {}, None),
    ("slurm executor without Slurm", [*QUICK, "--methods", "frozen", "--executor", "slurm"],
     "executor 'slurm': no Slurm on this machine (sbatch/srun not found)", {}, no_sbatch),
    ("report without runs", ["report"], "no finished runs under {out}/runs", {}, None),
    ("status of a missing results directory", ["status", "--out", "{out}"], "no results directory {out} (the --out of",
     {}, None),
    ("unknown list", ["list", "method"], "argument what: invalid choice: 'method'", {}, None),
]


def fill(text: str, subst: dict) -> str:
    for key, value in subst.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def write_files(tmp_path, files, subst):
    if any(name.startswith("data/") for name in files):
        shutil.copytree(PIQA, tmp_path / "data" / "piqa")
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = content(path.read_text()) if callable(content) else fill(content, subst)
        path.write_text(text)


DOC_SUBST = {"out": "<out>", "tmp": "<dir>", "data": "<data_root>"}  # how docs/errors.md shows the paths


def cli(argv) -> int:
    try:
        return run_bench.main(argv)
    except SystemExit as e:  # argparse mistakes exit from inside the parser
        return e.code


@pytest.mark.parametrize("case,args,message,files,patch", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_leaves_nothing_behind(tmp_path, cache_dir, monkeypatch, capsys, case, args,
                                                         message, files, patch):
    monkeypatch.setenv("MMCL_CACHE", str(cache_dir))
    out = tmp_path / "out"
    subst = {"out": out, "tmp": tmp_path, "data": tmp_path / "data"}
    write_files(tmp_path, files, subst)
    if patch:
        patch(monkeypatch)
    argv = [fill(a, subst) for a in args]
    if argv[0] in ("run", "report") and "--out" not in argv:
        argv += ["--out", str(out)]
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: " + fill(message, subst)), err
    leftovers = list(out.rglob("*")) if out.exists() else []
    assert not [p for p in leftovers if p.name in ("DONE", "metrics.json", "checkpoint.pt") or p.suffix == ".tmp"]
    if case != "disk full during a run":
        assert not (out / "runs").exists(), "nothing ran"
    assert not (tmp_path / "pwned").exists(), "no code named in a file is executed"


def test_the_catalogue_in_docs_lists_every_case():
    doc = (ROOT / "docs" / "errors.md").read_text()
    for case, _, message, _, _ in CASES:
        assert case in doc and fill(message, DOC_SUBST) in doc, case
