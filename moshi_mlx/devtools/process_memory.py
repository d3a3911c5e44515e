"""This process's resident memory: now, its peak, and forgetting the peak (for summaries and benchmarks)."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")


def _status_bytes(field: str) -> int | None:
    """A `/proc/self/status` field in bytes (Linux), or None where there is no such file."""
    try:
        lines = _STATUS.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def peak_rss_bytes() -> int:
    """Highest resident set size of this process so far (since `reset_peak_rss` on Linux)."""
    # Linux: getrusage's ru_maxrss survives exec, so a child would inherit its parent's peak; VmHWM does not.
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # macOS reports bytes, the BSDs kilobytes


def current_rss_bytes() -> int:
    """Resident memory now (Linux); elsewhere the peak, the best there is without a dependency."""
    now = _status_bytes("VmRSS")
    return peak_rss_bytes() if now is None else now


def reset_peak_rss() -> None:
    """Forget the peak so far (Linux only; elsewhere the peak counts from the start)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
