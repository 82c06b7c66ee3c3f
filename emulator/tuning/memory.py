"""Peak memory of a block of work (a client's local training), as a data owner would observe it.

What is measured:
- CUDA: ``torch.cuda.max_memory_allocated`` over the block (reset at entry): the peak of memory held by
  tensors (weights, activations, gradients, optimiser state), exact, without the caching allocator's slack.
- CPU: the peak resident set size (RSS) of the whole process during the block: weights, activations,
  gradients, optimiser state, plus the Python / torch runtime the process already holds (a few hundred MB),
  which every method pays alike. On Linux the kernel's high-water mark is reset at entry (``5`` written to
  ``/proc/self/clear_refs``) and read at exit (``VmHWM``): exact, even for an allocation that lives a few
  milliseconds while the GIL is held. Elsewhere (or where the reset is refused) a daemon thread samples RSS
  every ``interval`` seconds, and the lifetime high-water mark (``ru_maxrss``) counts if the block raised it.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from pathlib import Path
from types import TracebackType

import torch

_KIB = 1024


def current_rss() -> int:
    """Resident set size of this process, in bytes."""
    try:
        import psutil  # a dependency of Ray (flwr[simulation]); imported lazily, only clients need it
    except ImportError:  # a machine without Ray (the benchmark alone): Linux's own account
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return int(psutil.Process().memory_info().rss)


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark of this process (Linux >= 4.0); False where that is refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_since_reset() -> int:
    """``VmHWM`` of /proc/self/status, in bytes: the peak RSS since the last ``_reset_peak_rss``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * _KIB
    raise OSError("no VmHWM in /proc/self/status")


def max_rss() -> int:
    """The process's lifetime peak RSS (``ru_maxrss``), in bytes (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * _KIB)


class PeakMemory:
    """Context manager measuring the peak memory in bytes (``.peak``) of the block it wraps.

    Args:
        device: where the work runs; CUDA devices use the allocator's statistics, anything else RSS.
        interval: seconds between RSS samples (CPU only).

    Example::

        with PeakMemory(device) as memory:
            train(...)
        log.info("peak %.0f MB", memory.peak / 1e6)
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.005) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rusage_before = 0
        self._exact = False  # the kernel's high-water mark was reset at entry (Linux)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self.peak = current_rss()
        self._exact = _reset_peak_rss()
        if not self._exact:
            self._rusage_before = max_rss()
            self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
            return
        if self._exact:
            self.peak = max(self.peak, _peak_rss_since_reset())
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, current_rss())
        rusage_after = max_rss()
        if rusage_after > self._rusage_before:  # the block set a new high-water mark: that one is exact
            self.peak = max(self.peak, rusage_after)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, current_rss())
