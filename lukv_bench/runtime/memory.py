"""Peak-memory measurement: of the whole process (:class:`PeakMemory`) and of one block (:class:`AllocationPeak`)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator

import torch


class PeakMemory:
    """Context manager measuring peak memory of a block, in bytes (``.peak``).

    On CUDA it resets and reads ``torch.cuda.max_memory_allocated``. On CPU a daemon thread samples
    the process RSS every ``interval`` seconds (the block's start and end are always sampled).
    ``idle`` (CPU only) returns bytes the process holds resident but does not use, such as a
    :class:`~lukv_bench.runtime.arena.BufferArena`'s buffers not lent to a live cache: each sample
    is the RSS minus them, so the peak reads what it would if they had been freed.
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.005,
                 idle: Callable[[], int] | None = None):
        self.device = torch.device(device)
        self.interval = interval
        self.idle = idle
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss(self) -> int:
        import psutil

        if self.idle is None:
            return psutil.Process().memory_info().rss
        # idle before and after the RSS: memory freed or lent in between is subtracted while the RSS held it
        before = self.idle()
        rss = psutil.Process().memory_info().rss
        return rss - max(before, self.idle())

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak = max(self.peak, self._rss())


class AllocationPeak:
    """Context manager measuring the peak of *torch tensor memory* a block adds, in bytes (``.peak``).

    Unlike :class:`PeakMemory` it leaves out the model weights and everything else allocated before
    the block, so it shows what the block itself needs (activations, new cache rows):

    * CUDA: ``torch.cuda.max_memory_allocated`` (peak stats reset on entry) minus
      ``torch.cuda.memory_allocated`` on entry;
    * CPU: torch's CPU allocator reports every allocation and free to ``torch.profiler``
      (``profile_memory=True``); the peak of their running sum (allocated minus freed bytes, in time
      order) is the block's peak. Profiling slows the block down, so never time a block measured here.
    """

    #: how the figure is measured, per device type (recorded with results)
    METHOD = {
        "cuda": "torch.cuda.max_memory_allocated (reset on entry) minus torch.cuda.memory_allocated on entry",
        "cpu": "torch.profiler(profile_memory=True): peak running sum of the CPU allocator's allocated minus "
        "freed bytes",
    }

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.peak = 0
        self._start = 0
        self._prof = None

    @property
    def method(self) -> str:
        """How :attr:`peak` was measured on this device."""
        return self.METHOD["cuda" if self.device.type == "cuda" else "cpu"]

    def __enter__(self) -> AllocationPeak:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            from torch.profiler import ProfilerActivity, profile

            self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            with _quiet_stderr():
                self._prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._start
            return
        prof, self._prof = self._prof, None
        with _quiet_stderr():
            prof.__exit__(*exc)
        if exc[0] is not None:
            return
        events = sorted(
            (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
        )
        live = peak = 0
        for _, nbytes in events:
            live += nbytes
            peak = max(peak, live)
        self.peak = peak


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Hide file descriptor 2 for a moment: the profiler's C++ side prints lines on every start and stop."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
