"""What a piece of work cost: wall time, CPU time and memory of this process.

Standard library only, so that measuring a process (a benchmark's client, say) does not add
scientific libraries to the memory being measured.
"""
from __future__ import annotations

import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass


@dataclass
class Usage:
    """Cost of one phase. ``peak_rss_mb`` is the phase's own peak: sampled, and exact
    whenever the phase set a new peak for the process (read from VmHWM)."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    """User + system time of this process and of the children it waited for."""
    start_rss_mb: float | None = None
    peak_rss_mb: float | None = None
    lifetime_peak_rss_mb: float | None = None
    """Highest RSS of the process since it started (``lifetime_peak_rss_mb()``), for reference."""

    @property
    def cores(self) -> float:
        """CPU time over wall time: how many cores were busy on average."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, float | None]:
        return {**asdict(self), "cores": self.cores}


@contextmanager
def measure_usage(interval_s: float = 0.02) -> Iterator[Usage]:
    """``with measure_usage() as usage: ...``; ``usage`` is filled in on exit.

    RSS is sampled from /proc/self/status by a background thread, so a spike shorter
    than ``interval_s`` between samples may be missed unless it is the process's
    highest yet. Where /proc is missing, only the lifetime peak is known.
    """
    usage = Usage()
    start_wall, start_cpu = time.perf_counter(), _cpu_seconds()
    usage.start_rss_mb, start_hwm = _proc_status_mb("VmRSS"), _proc_status_mb("VmHWM")
    peak = [usage.start_rss_mb]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval_s):
            rss = _proc_status_mb("VmRSS")
            if rss is not None and rss > peak[0]:
                peak[0] = rss

    sampler = threading.Thread(target=sample, name="unmask-rss-sampler", daemon=True)
    sampler.start()
    try:
        yield usage
    finally:
        stop.set()
        sampler.join()
        usage.wall_s = time.perf_counter() - start_wall
        usage.cpu_s = _cpu_seconds() - start_cpu
        end_rss, end_hwm = _proc_status_mb("VmRSS"), _proc_status_mb("VmHWM")
        if peak[0] is not None:
            candidates = [peak[0], end_rss]
            if end_hwm is not None and start_hwm is not None and end_hwm > start_hwm:
                candidates.append(end_hwm)
            usage.peak_rss_mb = max(c for c in candidates if c is not None)
        usage.lifetime_peak_rss_mb = lifetime_peak_rss_mb()


def lifetime_peak_rss_mb() -> float:
    """Highest RSS of this process since it started, in MB.

    VmHWM where /proc has it, not ``ru_maxrss``: Linux carries ru_maxrss over fork and exec, so a
    freshly started child process reports its parent's peak (measured: 305 MB for a 126 MB client
    started by a benchmark that had loaded torch).
    """
    hwm = _proc_status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None
