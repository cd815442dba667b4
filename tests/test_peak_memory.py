"""metrics.json's `peak_mem_mb`: the run's own peak, not its parent's nor an earlier run's."""
import subprocess
import sys

import numpy as np

from bench.peak_memory import host_peak_mb

MB = 2 ** 20


def test_a_reading_covers_only_the_time_since_the_previous_one():
    host_peak_mb()
    before = host_peak_mb()
    block = np.ones(300 * MB // 8)  # 300 MiB touched
    del block
    first = host_peak_mb()
    second = host_peak_mb()
    assert first >= before + 290  # the block counted once ...
    assert second < first - 250  # ... and not again in the next reading (ru_maxrss would repeat it)


def test_a_child_process_does_not_report_its_parents_peak():
    block = np.ones(300 * MB // 8)
    parent = host_peak_mb(reset=False)
    child = subprocess.run([sys.executable, "-c", "from bench.peak_memory import host_peak_mb; print(host_peak_mb())"],
                           capture_output=True, text=True, check=True)
    del block
    assert parent > 300 and float(child.stdout) < parent - 250
