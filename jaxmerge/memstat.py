"""Host memory of this process, for the benchmarks and memory plans (Linux ``/proc``; elsewhere
``getrusage``): current RSS, the kernel's peak-RSS mark (VmHWM) and its reset."""

from __future__ import annotations

import os
import resource


def peak_rss_since_start() -> int:
    """Peak resident set size of this process since it started, bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss() -> int:
    """Resident set size now, bytes."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_since_start()


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak RSS since the last ``reset_peak_rss`` (VmHWM), else since the start, bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return peak_rss_since_start()
