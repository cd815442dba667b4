"""`ray`: one Ray task per run, on a running Ray cluster or on a local instance started for the
suite. A run whose worker or node dies is retried by Ray (`max_retries`) and resumes from its last
finished task. (This module is `bench.executors.ray`; `import ray` below is the Ray package.)"""
import os
from dataclasses import dataclass

from bench.errors import BenchError
from bench.executors import EXECUTORS, Executor, record_failure, run_one
from bench.registry import PLUGINS_ENV
from bench.status import mark_submitted
from bench.store import StorageError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FORWARDED_ENV = (PLUGINS_ENV, "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM", "MMCL_KEEP_CHECKPOINT")


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    @dataclass
    class Options:
        address: str | None = None   # a running cluster ("auto": the one this node belongs to); None: RAY_ADDRESS or a new local instance
        num_cpus: float | None = None  # per run; default: --threads
        num_gpus: float | None = None  # per run; default: 1 when runs use a GPU (`gpus_per_run`), else 0
        max_retries: int = 3           # retries of a run whose worker or node died
        working_dir: str | None = None  # ship this directory to the workers (when the repo is not on a shared filesystem)

    def run(self, waves):
        try:
            import ray
        except ImportError:
            raise BenchError("executor 'ray' needs the ray package: pip install ray==2.60.0 (pinned in requirements.txt)") from None
        o = self.options
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
        runtime_env = {"env_vars": env, **({"working_dir": o.working_dir} if o.working_dir else {})}
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=o.address, runtime_env=runtime_env, include_dashboard=False, log_to_driver=True)
        outcomes = []
        try:
            num_gpus = o.num_gpus if o.num_gpus is not None else gpus_per_run(self.opts.device, ray.cluster_resources())
            mark_submitted(self.opts.out, [cfg.run_id for wave in waves for cfg in wave], "ray")  # pending in `status`
            remote = ray.remote(run_one).options(num_cpus=o.num_cpus or self.opts.threads, num_gpus=num_gpus,
                                                 max_retries=o.max_retries, retry_exceptions=False)
            for wave in waves:
                by_ref = {remote.remote(cfg, self.opts): cfg for cfg in wave}
                pending = list(by_ref)
                while pending:
                    ready, pending = ray.wait(pending, num_returns=1)
                    outcomes.append(self._outcome(ray, ready[0], by_ref[ready[0]]))
        finally:
            if started_here:
                ray.shutdown()
        return outcomes

    def _outcome(self, ray, ref, cfg):
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, StorageError):
                raise e.cause from None
            return record_failure(self.opts, cfg.run_id, f"{type(e.cause).__name__}: {e.cause}")
        except ray.exceptions.RayError as e:  # worker or node died more than max_retries times
            return record_failure(self.opts, cfg.run_id, f"{type(e).__name__}: {str(e).splitlines()[0]}")


def gpus_per_run(device: str, cluster_resources: dict) -> int:
    """GPUs a run asks Ray for when `ray.num_gpus` is not set: one when the runs train on a GPU
    (device=cuda, or auto on a cluster that has GPUs). Ray then gives each running task its own GPU
    (it sets the task's CUDA_VISIBLE_DEVICES), where tasks asking for none would all share GPU 0."""
    gpus = cluster_resources.get("GPU", 0)
    if device == "cuda" and not gpus:  # the runs would wait for a GPU forever
        raise BenchError("device=cuda but the Ray cluster has no GPUs (ray start --num-gpus=N on its GPU nodes)")
    return int(device == "cuda" or (device == "auto" and gpus > 0))
