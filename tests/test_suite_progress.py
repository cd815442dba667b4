"""The suite-level progress bar counts a run once the results store shows it finished (DONE, or a
FAILED written during this suite), whichever executor ran it."""
import io
import os
import time

from bench.suite import SuiteProgress
from fake_runs import write_run


def wait_for(progress, n, timeout=10.0):
    end = time.time() + timeout
    while progress.bar.n != n and time.time() < end:
        time.sleep(0.02)
    return progress.bar.n


def test_suite_bar_counts_done_and_newly_failed_runs(tmp_path):
    out = tmp_path / "results"
    ids = ["default-finetune-s0-fake", "default-adapter-s0-fake", "default-ewc-s0-fake"]
    stale = out / "runs" / ids[2]
    stale.mkdir(parents=True)
    (stale / "FAILED").write_text("an earlier suite's failure\n")
    os.utime(stale / "FAILED", (time.time() - 3600, time.time() - 3600))
    stream = io.StringIO()
    with SuiteProgress(out, ids, done=1, interval=0.02, file=stream, disable=False, mininterval=0) as progress:
        assert progress.bar.total == 4 and progress.bar.n == 1  # runs done before the suite count at once
        time.sleep(0.1)
        assert progress.bar.n == 1  # the stale FAILED is not this suite's
        write_run(out, "finetune", 0, [[50.0]])
        assert wait_for(progress, 2) == 2
        (out / "runs" / ids[1]).mkdir(parents=True)
        (out / "runs" / ids[1] / "FAILED").write_text("non-finite loss\n")
        assert wait_for(progress, 3) == 3
    assert "suite:" in stream.getvalue() and "3/4" in stream.getvalue().splitlines()[-1].split("\r")[-1]
