"""A run's own peak memory. `ru_maxrss` is no good for it: the kernel carries it across fork and
exec (a worker reports its parent's high-water mark) and never resets it (a worker's second run
reports its first). Here: the process's resident high-water mark VmHWM (Linux, /proc/self/status;
exec starts it afresh), reset after each reading by writing 5 to /proc/self/clear_refs, so each
reading covers the process since its start or since the previous reading. On CUDA, the allocator's
peak, reset the same way."""
import ctypes
import re
import resource

import torch


def host_peak_mb(reset: bool = True) -> float:
    """Peak resident memory (MiB) of this process since it started or since the last reset."""
    try:
        with open("/proc/self/status") as f:
            peak = int(re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M).group(1)) / 1024
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        return peak
    except (OSError, AttributeError):  # not Linux: the lifetime maximum is the best there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_peak_mb(device: str) -> float:
    """The peak of the run that ends now: device memory on CUDA, else host memory (MiB)."""
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
        torch.cuda.reset_peak_memory_stats()
        host_peak_mb()  # the next run's host peak starts here too
        return peak
    return host_peak_mb()


def release_freed_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim). Encoding images frees
    its pixel buffers in pieces the allocator keeps resident: 220 MB after 64 images for the tiny
    ViLT at 384 and ~0.8 GB after perf g's 500, held for the rest of the process otherwise."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass
