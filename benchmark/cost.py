"""What a run costs: wall time and peak memory, measured the same way for every method.

On CUDA the peak is the caching allocator's high-water mark of allocated memory. A CPU has
no such counter, so there the peak is how far the process's resident memory rose above its
level at the start of training, sampled every 10 ms (after returning freed heap pages to the
system, so an earlier run in the same process does not hide this one's growth). The two are
different quantities and records say which one they hold (`cost.memory_kind`).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import threading
import time

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return None


def _trim_heap() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (a CUDA device; nothing to wait for elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Context manager; `.mb` holds the peak in MiB afterwards (None if not measurable).

    `exclude_bytes` (CUDA) is memory allocated for the whole block that is not the model's:
    the training data kept on the GPU, left out so that the peak is comparable between runs
    whose data did and did not fit there.
    """

    def __init__(self, device: torch.device, exclude_bytes: int = 0):
        self.device = device
        self.exclude_bytes = exclude_bytes
        self.mb: float | None = None
        self.kind = "cuda_allocated" if device.type == "cuda" else "cpu_rss_increase"
        self._stop = threading.Event()
        self._peak = 0
        self._base = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        _trim_heap()
        base = _rss_bytes()
        if base is None:
            return self
        self._base = self._peak = base
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            rss = _rss_bytes() or 0
            self._peak = max(self._peak, rss)

    def current_mb(self) -> float | None:
        """The peak so far."""
        if self.device.type == "cuda":
            return self._cuda_peak_mb()
        if not hasattr(self, "_thread"):
            return None
        return (max(self._peak, _rss_bytes() or 0) - self._base) / 2**20

    def _cuda_peak_mb(self) -> float:
        return (torch.cuda.max_memory_allocated(self.device) - self.exclude_bytes) / 2**20

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
        self.mb = self.current_mb()


class Stopwatch:
    """Wall time of a block, waiting for queued CUDA work at both ends."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - self._start


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"
