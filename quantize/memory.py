"""Peak memory of this process, for the quantizer's summary and the streaming benchmark."""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def peak_rss_bytes() -> int:
    """Highest resident set size of this process so far."""
    status = Path("/proc/self/status")
    if status.exists():
        # Linux: getrusage's ru_maxrss survives exec, so a child would inherit its parent's peak; VmHWM does not.
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, the BSDs kilobytes
