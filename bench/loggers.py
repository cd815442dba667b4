"""Experiment loggers, chosen with `--log tensorboard,wandb,mlflow,jsonl` (none by default): per-step
loss and learning rate, per-task score rows, the final matrix and summary, the resolved config and
provenance. Each writes beside the run (TensorBoard: `<run>/tensorboard/`; W&B in offline mode:
`<run>/wandb/`, nothing uploaded, `wandb sync` sends it later; MLflow: the local file store
`<out>/mlruns/` unless MLFLOW_TRACKING_URI says otherwise; jsonl: `<run>/log.jsonl`).

A logger is an observer of one run, registered with `@LOGGERS.register(name)`. The training loop
hands each step's loss to the run's `RunLog` as a device tensor; the losses are read to the host
in one transfer per task, so logging adds no host-device sync per step, and with no logger on the
loop does nothing at all. The chosen names travel to every worker in the environment variable
MMCL_LOG, as plugins do in MMCL_PLUGINS."""
import importlib.util
import json
import os
from contextlib import contextmanager
from pathlib import Path

from bench.errors import BenchError
from bench.registry import Registry

LOG_ENV = "MMCL_LOG"
EXTRA_HINT = "pip install 'mmcl-bench[loggers]' (or pip install -r requirements-loggers.txt)"
LOGGERS = Registry("logger", ())


class Logger:
    """Base of the loggers: one per run. `needs` is the package it imports (checked up front)."""

    needs: str | None = None

    def __init__(self, run_id: str, run_dir: Path, config: dict, provenance: dict):
        self.run_id, self.run_dir = run_id, run_dir

    def on_step(self, step: int, loss: float, lr: float) -> None:
        """One optimizer step; `step` counts every step of the run, over tasks and stages."""

    def on_task(self, row: dict) -> None:
        """After task i = `row["task"]`: `row["scores"]` is row i of the score matrix (None for
        tasks not evaluated), `row["tasks"]` the names of its columns, `row["train_s"]` task i's
        training seconds, `row["step"]` the run's step count then."""

    def on_finish(self, metrics: dict) -> None:
        """The run's metrics.json, as written."""

    def close(self) -> None:
        pass


def parse(spec: str | None) -> list[str]:
    """Logger names from `--log a,b`: unknown names get a did-you-mean, a missing package names
    the extra that installs it; both before anything runs."""
    names = [n.strip() for n in (spec or "").split(",") if n.strip()]
    for name in names:
        cls = LOGGERS.get(name)
        if cls.needs and importlib.util.find_spec(cls.needs) is None:
            raise BenchError(f"--log {name} needs the package '{cls.needs}': {EXTRA_HINT}")
    return list(dict.fromkeys(names))


class RunLog:
    """The loggers of one run, fed by the runner and the training loop."""

    def __init__(self, loggers: list[Logger]):
        self.loggers = loggers
        self.step = 0
        self._pending = []  # (step, loss tensor, lr) not yet read to the host

    def on_step(self, loss, lr: float) -> None:
        self.step += 1
        self._pending.append((self.step, loss.detach(), lr))

    def flush(self) -> None:
        if not self._pending:
            return
        import torch
        losses = torch.stack([loss.float() for _, loss, _ in self._pending]).tolist()  # one transfer
        for (step, _, lr), loss in zip(self._pending, losses):
            for logger in self.loggers:
                logger.on_step(step, loss, lr)
        self._pending = []

    def on_task(self, task: int, tasks: list[str], scores: list, train_s: float) -> None:
        self.flush()
        row = {"task": task, "tasks": tasks, "scores": scores, "train_s": train_s, "step": self.step}
        for logger in self.loggers:
            logger.on_task(row)

    def on_finish(self, metrics: dict) -> None:
        self.flush()
        for logger in self.loggers:
            logger.on_finish(metrics)


@contextmanager
def for_run(run_id: str, run_dir: Path, config: dict, provenance):
    """The loggers named in MMCL_LOG around one run, as a RunLog (None when no logger is on) that the
    runner hands to the training loop in the task's context (`provenance` is called only when one is on)."""
    names = parse(os.environ.get(LOG_ENV))
    if not names:
        yield None
        return
    prov = provenance()
    loggers = []
    try:
        for name in names:
            loggers.append(LOGGERS.get(name)(run_id, Path(run_dir), config, prov))
        yield RunLog(loggers)
    finally:
        for logger in loggers:
            logger.close()


def _numbers(d: dict) -> dict:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _flat(d: dict, prefix: str = "") -> dict:
    """Nested config as `a.b` keys (MLflow params are flat)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def matrix_markdown(metrics: dict) -> str:
    tasks = metrics["tasks"]
    lines = ["| after \\ on | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for name, row in zip(tasks, metrics["matrix"]):
        lines.append(f"| {name} | " + " | ".join("–" if v is None else f"{v:.2f}" for v in row) + " |")
    return "\n".join(lines)


@LOGGERS.register("jsonl")
class JsonlLogger(Logger):
    """`<run>/log.jsonl`: one JSON object per event (start, step, task, finish), appended."""

    def __init__(self, run_id, run_dir, config, provenance):
        super().__init__(run_id, run_dir, config, provenance)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.file = open(run_dir / "log.jsonl", "a", encoding="utf-8")
        self._write({"event": "start", "run_id": run_id, "config": config, "provenance": provenance})

    def _write(self, record: dict) -> None:
        self.file.write(json.dumps(record, default=str) + "\n")

    def on_step(self, step, loss, lr):
        self._write({"event": "step", "step": step, "loss": loss, "lr": lr})

    def on_task(self, row):
        self._write({"event": "task", **row})
        self.file.flush()

    def on_finish(self, metrics):
        self._write({"event": "finish", "matrix": metrics["matrix"], "summary": metrics["summary"],
                     "downstream": metrics.get("downstream", [])})

    def close(self):
        self.file.close()


@LOGGERS.register("tensorboard")
class TensorBoardLogger(Logger):
    """`<run>/tensorboard/`: scalars train/loss and train/lr by step, score/<task> by task index,
    summary/<metric> and downstream/<task>; the config, provenance and matrix as text."""

    needs = "tensorboard"

    def __init__(self, run_id, run_dir, config, provenance):
        super().__init__(run_id, run_dir, config, provenance)
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", _code(config))
        self.writer.add_text("provenance", _code(provenance))

    def on_step(self, step, loss, lr):
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)

    def on_task(self, row):
        for name, value in zip(row["tasks"], row["scores"]):
            if value is not None:
                self.writer.add_scalar(f"score/{name}", value, row["task"])

    def on_finish(self, metrics):
        for k, v in _numbers(metrics["summary"]).items():
            self.writer.add_scalar(f"summary/{k}", v, 0)
        for d in metrics.get("downstream", []):
            self.writer.add_scalar(f"downstream/{d['task']}", d["score"], 0)
        self.writer.add_text("matrix", matrix_markdown(metrics))

    def close(self):
        self.writer.close()


def _code(d: dict) -> str:
    return "```\n" + json.dumps(d, indent=1, default=str) + "\n```"


@LOGGERS.register("wandb")
class WandbLogger(Logger):
    """A W&B run in offline mode under `<run>/wandb/` (project mmcl-bench, grouped by sequence and
    backbone, job type = method): train/loss and train/lr by step, score/<task> with after_task at
    each task's end; the summary metrics, downstream scores and the matrix in the run summary."""

    needs = "wandb"

    def __init__(self, run_id, run_dir, config, provenance):
        super().__init__(run_id, run_dir, config, provenance)
        import wandb
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project="mmcl-bench", name=run_id, dir=str(run_dir), mode="offline",
                              group=f"{config['sequence']}/{config['backbone']}", job_type=config["method"],
                              config={**config, "provenance": provenance}, reinit="create_new",
                              settings=wandb.Settings(silent=True, x_disable_stats=True))

    def on_step(self, step, loss, lr):
        self.run.log({"train/loss": loss, "train/lr": lr}, step=step)

    def on_task(self, row):
        scores = {f"score/{n}": v for n, v in zip(row["tasks"], row["scores"]) if v is not None}
        self.run.log({"after_task": row["task"], "train_s": row["train_s"], **scores}, step=row["step"])

    def on_finish(self, metrics):
        self.run.summary.update({f"summary/{k}": v for k, v in _numbers(metrics["summary"]).items()})
        self.run.summary.update({f"downstream/{d['task']}": d["score"] for d in metrics.get("downstream", [])})
        self.run.summary.update({"matrix": metrics["matrix"], "tasks": metrics["tasks"]})

    def close(self):
        self.run.finish()


@LOGGERS.register("mlflow")
class MlflowLogger(Logger):
    """An MLflow run in the local file store `<out>/mlruns` (or MLFLOW_TRACKING_URI), experiment =
    the sequence, run name = the run id: params = the flattened config, metrics train_loss and
    train_lr by step, score/<task> by task index, summary/<metric>, downstream/<task>;
    artifacts metrics.json and provenance.json."""

    needs = "mlflow"

    def __init__(self, run_id, run_dir, config, provenance):
        super().__init__(run_id, run_dir, config, provenance)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks to opt in to the file store
        from mlflow.entities import Metric, Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
        self.Metric = Metric
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir.parent.parent / "mlruns").resolve().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        name = Path(config["sequence"]).stem
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                experiment_id = self.client.create_experiment(name)
            except MlflowException:  # another worker created it first
                experiment_id = self.client.get_experiment_by_name(name).experiment_id
        else:
            experiment_id = experiment.experiment_id
        tags = {k: str(config[k]) for k in ("method", "backbone", "seed")}
        self.run_id_mlflow = self.client.create_run(experiment_id, run_name=run_id, tags=tags).info.run_id
        params = [Param(k, json.dumps(v, default=str)[:6000] if not isinstance(v, str) else v)
                  for k, v in _flat(config).items()]
        self.client.log_batch(self.run_id_mlflow, params=params)
        self.client.log_dict(self.run_id_mlflow, provenance, "provenance.json")
        self.finished = False
        self.metrics = []  # written in batches: one file append per metric per task, not per step

    def _metric(self, key, value, step):
        self.metrics.append(self.Metric(key, float(value), 0, int(step)))

    def on_step(self, step, loss, lr):
        self._metric("train_loss", loss, step)
        self._metric("train_lr", lr, step)

    def on_task(self, row):
        for name, value in zip(row["tasks"], row["scores"]):
            if value is not None:
                self._metric(f"score/{name}", value, row["task"])
        self._write()

    def _write(self):
        for i in range(0, len(self.metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id_mlflow, metrics=self.metrics[i:i + 1000])
        self.metrics = []

    def on_finish(self, metrics):
        for k, v in _numbers(metrics["summary"]).items():
            self._metric(f"summary/{k}", v, 0)
        for d in metrics.get("downstream", []):
            self._metric(f"downstream/{d['task']}", d["score"], 0)
        self._write()
        self.client.log_dict(self.run_id_mlflow, metrics, "metrics.json")
        self.finished = True  # closed without it: the run failed

    def close(self):
        self._write()
        self.client.set_terminated(self.run_id_mlflow, "FINISHED" if self.finished else "FAILED")
