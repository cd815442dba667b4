"""`local`: a process pool on this machine (the default)."""
import multiprocessing as mp
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

from tqdm import tqdm

from bench.executors import EXECUTORS, Executor, record_failure, run_one
from bench.status import mark_submitted


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """Runs in a pool of `workers` processes with `threads` torch threads each (default: one
    process per core, no oversubscription). Every split the runs read is encoded into the cache
    first, in this process with every core. The waves go through one queue in order, so the
    single-task references start first and no worker idles at the end of a wave (a run that
    finishes before its reference waits for it, bench/runner.py `reference_metrics`). A run that
    another process is training (a second suite on the same results directory) is set aside, and
    waited for once the rest is done, so the two suites share the work instead of queueing behind
    each other."""

    def run(self, waves):
        from bench.runner import encode_suite_data, resolve_device
        resolve_device(self.opts.device)  # an unavailable device fails before any run starts
        workers = self.opts.workers or max(1, (os.cpu_count() or 1) // max(1, self.opts.threads))
        outcomes = []
        queue = [cfg for wave in waves for cfg in wave]
        if not queue:
            return []
        mark_submitted(self.opts.out, [cfg.run_id for cfg in queue], "local")  # `status` lists them as pending
        # with every core, before any run: parallel runs would each encode the same images, and
        # an unreadable image fails the suite with its one line instead of each run
        encode_suite_data(queue, self.opts.cache_dir, os.cpu_count())
        with tqdm(total=len(queue), desc="runs", disable=None, position=1, leave=False) as bar:  # below the suite bar
            finished = self._run_wave(queue, workers, wait=False, bar=bar)
            busy = {o.run_id for o in finished if o.status == "busy"}
            outcomes += [o for o in finished if o.status != "busy"]
            if busy:
                outcomes += self._run_wave([c for c in queue if c.run_id in busy], workers, wait=True, bar=bar)
        return outcomes

    def _run_wave(self, wave, workers, *, wait, bar):
        outcomes = []
        if workers == 1 or len(wave) == 1:
            for cfg in wave:
                outcomes.append(self._count(run_one(cfg, self.opts, wait), bar))
            return outcomes
        pool = self._pool(min(workers, len(wave)))
        futures = {pool.submit(run_one, cfg, self.opts, wait): cfg for cfg in wave}
        try:
            for fut in as_completed(futures):
                try:
                    outcome = fut.result()
                except BrokenProcessPool as e:  # a worker was killed (out of memory, signal)
                    outcome = record_failure(self.opts, futures[fut].run_id, f"worker process died: {e}")
                outcomes.append(self._count(outcome, bar))
        finally:  # on a storage error or Ctrl-C, start nothing new
            pool.shutdown(wait=True, cancel_futures=True)
        return outcomes

    def _pool(self, size: int) -> ProcessPoolExecutor:
        """`size` worker processes that die with this one, each on its own GPU where there are several."""
        ctx = mp.get_context("spawn")
        devices = worker_devices(self.opts.device, size)
        queue = None
        if devices:
            queue = ctx.Queue()
            for device in devices:
                queue.put(device)
        return ProcessPoolExecutor(size, mp_context=ctx, initializer=_init_worker, initargs=(os.getpid(), queue))

    @staticmethod
    def _count(outcome, bar):
        if outcome.status != "busy":
            bar.update(1)
        if outcome.error:
            tqdm.write(f"FAILED {outcome.run_id}: {outcome.error}")
        return outcome


def worker_devices(device: str, workers: int) -> list[str] | None:
    """The CUDA_VISIBLE_DEVICES of each of `workers` pool workers: on a host with several GPUs
    (the ones visible to this process), one each, round robin when workers outnumber GPUs; None
    when the runs do not pick a GPU themselves (cpu, an explicit cuda:N, or at most one GPU)."""
    from bench.runner import resolve_device
    if resolve_device(device) != "cuda":
        return None
    import torch
    count = torch.cuda.device_count()
    if count < 2:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",")[:count] if visible else [str(i) for i in range(count)]
    return [ids[i % count] for i in range(workers)]


def _init_worker(parent_pid: int, devices) -> None:
    """In each pool worker, first: die with the suite's process, take this worker's GPU."""
    _die_with_parent(parent_pid)
    if devices is not None:  # before anything initialises CUDA in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = devices.get()


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this worker when the suite's process dies, however it dies (the OOM killer's SIGKILL
    included): an orphaned worker would hold its memory and go on training for nobody, while its
    run resumes from its checkpoint when the suite is run again. Linux's parent-death signal fires
    when the thread that started the worker ends; the pool starts its workers from the thread
    that submits the runs, which outlives the pool."""
    if sys.platform.startswith("linux"):
        import ctypes
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the suite died before the signal was armed
        os._exit(1)
