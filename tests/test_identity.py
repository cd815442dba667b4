"""A run's identity sees its method's code and its tasks' files: an edited plugin method is
retrained, an edited CSV re-encoded and retrained, an unchanged one is found done. The CSV task is
the README's "Writing a task" example, run as written."""
import importlib.util
import re
import sys
from types import SimpleNamespace
from pathlib import Path

import pytest

import bench.cache
import bench.identity
from bench.registry import TASKS
from conftest import plugin, run_method

ROOT = Path(__file__).resolve().parent.parent
SEQUENCE = "tasks: [csv_sentiment]\noptions: {steps: 2, val_size: 4}\n"
PLUGIN = '''from bench.method import Method


class Scaled(Method):
    """Fine-tuning with a scaled loss."""
    factor = {factor}

    def loss(self, batch, t, ctx):
        return self.factor * super().loss(batch, t, ctx)
'''


@pytest.fixture(scope="module")
def csv_task():
    if "csv_sentiment" not in TASKS:
        code = re.search(r"```python\n# my_tasks/csv_sentiment.py\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
        exec(compile(code, "README.md", "exec"), {})
    return "csv_sentiment"


def write_csv(path: Path, flip: bool = False):
    rows = [(f"{word} film number {k}", int(word == "good") ^ flip) for k in range(20) for word in ("good", "bad")]
    path.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows))


def test_an_edited_csv_is_re_encoded_and_retrained(csv_task, tmp_path):
    folder = tmp_path / "data" / "csv_sentiment"
    folder.mkdir(parents=True)
    write_csv(folder / "train.csv")
    write_csv(folder / "test.csv")
    sequence = tmp_path / "csv.yaml"
    sequence.write_text(SEQUENCE)
    cache = tmp_path / "cache"
    splits = cache / "splits" / "toy-8px" / "csv_sentiment"

    def run():
        return run_method("finetune", tmp_path / "out", cache, sequence=str(sequence), sets=[f"data_root={tmp_path / 'data'}"])
    first = run()
    assert len(list(splits.iterdir())) == 3  # train, val, test
    assert run()["run_id"] == first["run_id"]  # unchanged files: the same run, found done
    write_csv(folder / "train.csv", flip=True)
    bench.identity.folder_digest.cache_clear()  # a new process reads the edited folder afresh
    edited = run()
    assert edited["run_id"] != first["run_id"]
    assert len(list(splits.iterdir())) == 6  # every split of the task encoded again


def load_plugin(path: Path, monkeypatch):
    """Import the plugin file as MMCL_PLUGINS does (bench/registry.py), as a new process would."""
    bench.cache._file_digest.cache_clear()  # a new process reads the edited file afresh
    spec = importlib.util.spec_from_file_location(f"zz_scaled_{path.stat().st_mtime_ns}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module.Scaled


def test_an_edited_plugin_method_is_retrained(monkeypatch, tmp_path, cache_dir):
    path = tmp_path / "scaled.py"
    path.write_text(PLUGIN.format(factor=1.0))
    plugin(monkeypatch, "zz_scaled", load_plugin(path, monkeypatch))
    first = run_method("zz_scaled", tmp_path / "out", cache_dir, steps=1)
    plugin(monkeypatch, "zz_scaled", load_plugin(path, monkeypatch))
    assert run_method("zz_scaled", tmp_path / "out", cache_dir, steps=1)["run_id"] == first["run_id"]
    path.write_text(PLUGIN.format(factor=2.0))
    plugin(monkeypatch, "zz_scaled", load_plugin(path, monkeypatch))
    assert run_method("zz_scaled", tmp_path / "out", cache_dir, steps=1)["run_id"] != first["run_id"]


def test_rerun_trains_a_finished_run_again(tmp_path, cache_dir):
    from bench.config import resolve
    from bench.registry import METHODS
    from bench.runner import execute_run
    cfg = resolve("frozen", METHODS.get("frozen"), [("steps", "1")], backbone="toy", quick=True)
    statuses = [execute_run(cfg, tmp_path, cache_dir=cache_dir, log=lambda *_: None, rerun=rerun)[0]
                for rerun in (False, False, True)]
    assert statuses == ["trained", "done", "trained"]


def test_the_rerun_flag_reaches_every_run(tmp_path, monkeypatch):
    import bench.suite
    import run_bench
    seen = []
    monkeypatch.setattr(bench.suite, "execute_suite", lambda waves, executor: seen.append(executor.opts.rerun) or [])
    empty = SimpleNamespace(to_string=lambda **_: "")
    monkeypatch.setattr("bench.report.write_report", lambda out, options=None: {"table": empty, "paths": ["", ""], "page": ""})
    for extra in ([], ["--rerun"]):
        run_bench.main(["run", "--quick", "--backbone", "toy", "--methods", "frozen", "--out", str(tmp_path)] + extra)
    assert seen == [False, True]


TASK_PLUGIN = '''from tasks.digits import DigitsTask


class Digits{version}(DigitsTask):
    """The digits task; a loader edit is simulated by a new class body."""
'''


def test_an_edited_task_module_is_a_new_run(monkeypatch, tmp_path):
    from bench.config import resolve
    from bench.registry import METHODS
    TASKS.names()  # load the registry before adding to it
    path = tmp_path / "zz_task.py"
    sequence = tmp_path / "seq.yaml"
    sequence.write_text("tasks: [zz_digits]\noptions: {steps: 1}\n")

    def run_id(version: str) -> str:
        path.write_text(TASK_PLUGIN.format(version=version))
        bench.cache._file_digest.cache_clear()  # a new process reads the edited file afresh
        spec = importlib.util.spec_from_file_location(f"zz_task_{version}", path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
        cls = getattr(module, f"Digits{version}")
        monkeypatch.setitem(TASKS._items, "zz_digits", lambda: cls("zz_digits", "image", [str(k) for k in range(10)]))
        return resolve("finetune", METHODS.get("finetune"), [], sequence=str(sequence)).run_id

    assert run_id("A") == run_id("A")
    assert run_id("A") != run_id("B")
