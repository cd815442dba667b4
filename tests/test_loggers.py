"""Experiment loggers (`--log`): one run logged by all four, and each store read back with its own
reader (TensorBoard's event reader, the W&B offline run file, MLflow's local store, the JSON lines)
must hold the values of the run's metrics.json."""
import importlib.util
import json
import struct
from pathlib import Path

import pytest

from bench import loggers

ALL = ["jsonl", "tensorboard", "wandb", "mlflow"]
MISSING = [n for n in ("tensorboard", "wandb", "mlflow") if importlib.util.find_spec(n) is None]


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, cache_dir):
    """finetune on the toy backbone, 3 steps per task, logged by every logger."""
    if MISSING:
        pytest.skip(f"logger packages not installed: {', '.join(MISSING)} ({loggers.EXTRA_HINT})")
    from conftest import run_method
    out = tmp_path_factory.mktemp("logged") / "results"
    mp = pytest.MonkeyPatch()
    mp.setenv(loggers.LOG_ENV, ",".join(ALL))
    try:  # reuse_stages off: every stage is trained here, so every step is logged
        metrics = run_method("finetune", out, cache_dir, steps=3, reuse_stages=False)
    finally:
        mp.undo()
    return out, out / "runs" / metrics["run_id"], json.loads((out / "runs" / metrics["run_id"] / "metrics.json").read_text())


def expected_scores(metrics) -> dict:
    """{task name: [(after task i, A[i][j]) ...]} from metrics.json."""
    out = {}
    for i, row in enumerate(metrics["matrix"]):
        for name, value in zip(metrics["tasks"], row):
            if value is not None:
                out.setdefault(name, []).append((i, value))
    return out


def total_steps(metrics) -> int:
    return sum(stage["steps"] for stage in metrics["stages"])


def check_lr(lrs: list, metrics):
    """Per task of 3 steps: warm-up of round(0.3) -> 1 step, then linear decay: base, base, base/2."""
    assert len(lrs) == total_steps(metrics) == 3 * len(metrics["tasks"])
    for t in range(len(metrics["tasks"])):
        base = lrs[3 * t]
        assert lrs[3 * t:3 * t + 3] == pytest.approx([base, base, base / 2], rel=1e-6)
        assert base == pytest.approx(1e-4) or base == pytest.approx(1e-3)


def read_jsonl(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_jsonl_holds_the_metrics(logged_run):
    _, run_dir, metrics = logged_run
    events = read_jsonl(run_dir)
    assert events[0]["event"] == "start" and events[0]["config"] == metrics["provenance"]["config"]
    assert events[0]["provenance"]["versions"] == metrics["provenance"]["versions"]
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, total_steps(metrics) + 1))
    check_lr([e["lr"] for e in steps], metrics)
    assert all(isinstance(e["loss"], float) and e["loss"] > 0 for e in steps)
    tasks = [e for e in events if e["event"] == "task"]
    assert [e["scores"] for e in tasks] == metrics["matrix"]
    assert [e["train_s"] for e in tasks] == metrics["time"]["train_s_per_task"]
    assert events[-1]["event"] == "finish" and events[-1]["summary"] == metrics["summary"]
    assert events[-1]["matrix"] == metrics["matrix"]


def test_tensorboard_events_hold_the_metrics(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    _, run_dir, metrics = logged_run
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    loss = acc.Scalars("train/loss")
    jsonl_loss = [e["loss"] for e in read_jsonl(run_dir) if e["event"] == "step"]
    assert [e.step for e in loss] == list(range(1, total_steps(metrics) + 1))
    assert [e.value for e in loss] == pytest.approx(jsonl_loss, rel=1e-6)
    check_lr([e.value for e in acc.Scalars("train/lr")], metrics)
    for name, want in expected_scores(metrics).items():
        got = [(e.step, e.value) for e in acc.Scalars(f"score/{name}")]
        assert [s for s, _ in got] == [i for i, _ in want]
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)
    for key in ("final_avg", "avg_incremental", "bwt", "forgetting"):
        assert acc.Scalars(f"summary/{key}")[0].value == pytest.approx(metrics["summary"][key], rel=1e-6)
    assert "text_negation" in acc.Tensors("matrix/text_summary")[0].tensor_proto.string_val[0].decode()


def wandb_records(path: Path):
    """The records of a W&B run file (`run-<id>.wandb`): a 7-byte header, then LevelDB-log
    framing (32 KiB blocks; each chunk: crc32 4 bytes, length 2, type 1: full/first/middle/last)
    around protobuf `Record`s. Read here independently of wandb's own (Go) writer."""
    from wandb.proto import wandb_internal_pb2
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the block's tail is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 2):
            pending = chunk
        else:
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def test_wandb_offline_run_holds_the_metrics(logged_run):
    _, run_dir, metrics = logged_run
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    history, summary, config = {}, {}, {}
    for record in wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            for key, value in items.items():
                history.setdefault(key, []).append((items.get("_step"), value))
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update})
        elif kind in ("run", "config"):
            updates = record.run.config.update if kind == "run" else record.config.update
            config.update({i.key: json.loads(i.value_json) for i in updates})
    jsonl_loss = [e["loss"] for e in read_jsonl(run_dir) if e["event"] == "step"]
    assert [s for s, _ in history["train/loss"]] == list(range(1, total_steps(metrics) + 1))
    assert [v for _, v in history["train/loss"]] == pytest.approx(jsonl_loss, rel=1e-6)
    check_lr([v for _, v in history["train/lr"]], metrics)
    after = dict(history["after_task"])  # step -> task index
    for name, want in expected_scores(metrics).items():
        assert [(after[s], v) for s, v in history[f"score/{name}"]] == want
    assert summary["matrix"] == metrics["matrix"]
    for key in ("final_avg", "avg_incremental", "bwt", "forgetting"):
        assert summary[f"summary/{key}"] == pytest.approx(metrics["summary"][key])
    config_values = {k: v.get("value", v) if isinstance(v, dict) else v for k, v in config.items()}
    assert config_values["method"] == "finetune" and config_values["hparams"] == metrics["provenance"]["config"]["hparams"]
    assert config_values["provenance"]["git"] == metrics["provenance"]["git"]


def test_mlflow_local_store_holds_the_metrics(logged_run):
    from mlflow.tracking import MlflowClient
    out, run_dir, metrics = logged_run
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("default")
    (run,) = client.search_runs([experiment.experiment_id])
    rid = run.info.run_id
    assert run.info.run_name == metrics["run_id"] and run.info.status == "FINISHED"
    loss = client.get_metric_history(rid, "train_loss")
    jsonl_loss = [e["loss"] for e in read_jsonl(run_dir) if e["event"] == "step"]
    loss = sorted((m.step, m.value) for m in loss)
    assert [s for s, _ in loss] == list(range(1, len(jsonl_loss) + 1))
    assert [v for _, v in loss] == pytest.approx(jsonl_loss, rel=1e-9)
    check_lr([m.value for m in sorted(client.get_metric_history(rid, "train_lr"), key=lambda m: m.step)], metrics)
    for name, want in expected_scores(metrics).items():
        got = sorted((m.step, m.value) for m in client.get_metric_history(rid, f"score/{name}"))
        assert [s for s, _ in got] == [i for i, _ in want]
        assert [v for _, v in got] == pytest.approx([v for _, v in want])
    for key in ("final_avg", "forgetting"):
        assert run.data.metrics[f"summary/{key}"] == pytest.approx(metrics["summary"][key])
    assert run.data.params["lr"] == json.dumps(metrics["provenance"]["config"]["lr"])
    artifact = Path(client.download_artifacts(rid, "metrics.json", str(out.parent / "artifact")))
    assert json.loads(artifact.read_text()) == metrics


def test_bad_logger_names_and_missing_packages_are_one_line_errors(monkeypatch, capsys):
    from run_bench import main
    assert main(["run", "--log", "tensorbord", "--methods", "finetune"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown logger 'tensorbord'" in err[0] and "tensorboard" in err[0]
    real = importlib.util.find_spec
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    assert main(["run", "--log", "jsonl,wandb", "--methods", "finetune"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --log wandb needs the package 'wandb': " + loggers.EXTRA_HINT]


def test_no_logger_reads_nothing_per_step(monkeypatch, run):
    """With no logger on, the loop never hands a loss over (so never reads one to the host)."""
    monkeypatch.delenv(loggers.LOG_ENV, raising=False)

    def fail(*_):
        raise AssertionError("a loss was logged with no logger on")
    monkeypatch.setattr(loggers.RunLog, "on_step", fail)
    run("finetune", steps=2, reuse_stages=False)


def test_run_log_hands_each_step_over_in_order_with_one_read_per_task():
    """RunLog alone, with known losses: every logger gets (step, loss, lr) of each step, in order,
    read once per task (the losses stay tensors until then)."""
    import torch

    class Recorder(loggers.Logger):
        def __init__(self):
            self.events = []

        def on_step(self, step, loss, lr):
            self.events.append(("step", step, loss, lr))

        def on_task(self, row):
            self.events.append(("task", row["task"], row["scores"], row["step"]))

    a, b = Recorder(), Recorder()
    log = loggers.RunLog([a, b])
    losses = [torch.tensor(v, dtype=torch.bfloat16) for v in (3.0, 2.5, 2.0)]
    for loss, lr in zip(losses, (0.1, 0.2, 0.3)):
        log.on_step(loss, lr)
    assert a.events == []  # nothing read yet
    log.on_task(0, ["x", "y"], [50.0, None], 1.5)
    log.on_step(torch.tensor(1.0), 0.4)
    log.on_task(1, ["x", "y"], [40.0, 60.0], 1.0)
    want = [("step", 1, 3.0, 0.1), ("step", 2, 2.5, 0.2), ("step", 3, 2.0, 0.3), ("task", 0, [50.0, None], 3),
            ("step", 4, 1.0, 0.4), ("task", 1, [40.0, 60.0], 4)]
    assert a.events == want and b.events == want
