"""`local`: a process pool on this machine (the default)."""
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

from tqdm import tqdm

from bench.executors import EXECUTORS, Executor, record_failure, run_one


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
        if workers > 1 and len(queue) > 1:  # with every core: no worker runs yet
            encode_suite_data(queue, self.opts.cache_dir, os.cpu_count())
        with tqdm(total=len(queue), desc="runs", disable=None) as bar:
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
        pool = ProcessPoolExecutor(min(workers, len(wave)), mp_context=mp.get_context("spawn"))
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

    @staticmethod
    def _count(outcome, bar):
        if outcome.status != "busy":
            bar.update(1)
        if outcome.error:
            tqdm.write(f"FAILED {outcome.run_id}: {outcome.error}")
        return outcome
