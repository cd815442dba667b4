"""`slurm`: one Slurm job array per wave, through submitit. A job that is preempted or reaches its
time limit is requeued by submitit (its `checkpoint`), and the run resumes from its last finished
task; a run is never trained by two jobs at once (the runner's per-run lock, which needs a
shared filesystem with working flock, as NFSv4 and Lustre mounted with `flock` have)."""
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import submitit

from bench.errors import BenchError
from bench.executors import EXECUTORS, Executor, record_failure, run_one
from bench.status import mark_submitted


class SlurmRun(submitit.helpers.Checkpointable):
    """The job's callable. Its inherited `checkpoint` resubmits the same run on preemption or
    timeout; nothing else needs saving because the runner checkpoints after every task."""

    def __init__(self, opts):
        self.opts = opts

    def __call__(self, cfg):
        return run_one(cfg, self.opts)


@EXECUTORS.register("slurm")
class SlurmExecutor(Executor):
    @dataclass
    class Options:
        partition: str | None = None
        time_min: int = 240            # time limit of one run's job, minutes
        cpus_per_task: int | None = None  # default: --threads
        gpus_per_node: int = 0
        mem_gb: float | None = None
        array_parallelism: int = 256   # jobs of one array running at once
        account: str | None = None
        qos: str | None = None
        constraint: str | None = None
        setup: list | None = None      # shell lines run first in every job, e.g. ["source .venv/bin/activate"]
        additional: dict = field(default_factory=dict)  # any other sbatch option: {exclude: node3, mail_type: END}
        max_requeue: int = 3           # preemptions / timeouts after which a job is not requeued again
        cluster: str = "slurm"         # "local" or "debug": submitit's stand-ins on this machine (tests, dry runs)
        folder: str | None = None      # submitit's job files and logs; default <out>/slurm
        poll_s: float = 10.0           # how often the driver checks the jobs

    def run(self, waves):
        executor, folder = self.submitit_executor()
        job_fn = SlurmRun(self.opts)
        outcomes = []
        for wave in waves:
            jobs = executor.map_array(job_fn, wave)
            ids = " ".join(dict.fromkeys(job.job_id.split("_")[0] for job in jobs))  # a Slurm array is one id
            print(f"submitted {len(jobs)} run(s) as {self.options.cluster} job {ids}; logs in {folder}", flush=True)
            mark_submitted(self.opts.out, [cfg.run_id for cfg in wave], "slurm", [job.job_id for job in jobs])
            by_job = {job.job_id: cfg for job, cfg in zip(jobs, wave)}
            for job in submitit.helpers.as_completed(jobs, poll_frequency=self.options.poll_s):
                outcomes.append(self._outcome(job, by_job[job.job_id]))
        return outcomes

    def submitit_executor(self):
        """submitit's executor with this suite's job parameters, and its folder."""
        o = self.options
        if o.cluster not in ("slurm", "local", "debug"):
            raise BenchError(f"slurm.cluster must be slurm, local or debug, got '{o.cluster}'")
        if o.cluster == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
            raise BenchError("executor 'slurm': no Slurm on this machine (sbatch/srun not found); run on a login node, "
                             "or try it here with --set slurm.cluster=local")
        folder = Path(o.folder) if o.folder else Path(self.opts.out) / "slurm"
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=o.cluster, slurm_max_num_timeout=o.max_requeue)
        params = dict(name="mmcl-bench", timeout_min=o.time_min, cpus_per_task=o.cpus_per_task or self.opts.threads,
                      gpus_per_node=o.gpus_per_node, mem_gb=o.mem_gb, slurm_partition=o.partition,
                      slurm_array_parallelism=o.array_parallelism, slurm_account=o.account, slurm_qos=o.qos,
                      slurm_constraint=o.constraint, slurm_setup=o.setup,
                      slurm_additional_parameters=o.additional or None)
        try:
            executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        except (AssertionError, NameError, ValueError, TypeError) as e:
            raise BenchError(f"executor 'slurm': {str(e).splitlines()[0]}") from None
        return executor, folder

    def _outcome(self, job, cfg):
        try:
            return job.result()
        except submitit.core.utils.FailedJobError as e:
            if "StorageError" in str(e):
                raise BenchError(_last_line(str(e))) from None
            return record_failure(self.opts, cfg.run_id, f"job {job.job_id} failed: {_last_line(str(e))}")
        except submitit.core.utils.UncompletedJobError as e:  # killed, cancelled, or out of requeues
            return record_failure(self.opts, cfg.run_id, f"job {job.job_id} did not finish: {_last_line(str(e))}")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text
