"""What a process has used: its peak resident memory and when it started.

Reported by the workers and the driver into ``metrics.json`` so that the benchmarks read them
rather than estimate them from outside.
"""

from __future__ import annotations

import os
import resource
import sys
import time


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (``getrusage``'s ``ru_maxrss``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def process_start_unix() -> float:
    """When this process started (Unix time): from /proc on Linux, else psutil, else now."""
    try:
        with open("/proc/self/stat") as f:
            # Field 22 (after the parenthesised command, which may hold spaces): start time in
            # clock ticks after boot; /proc/stat's btime is the boot time.
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        try:
            import psutil

            return psutil.Process().create_time()
        except ImportError:
            return time.time()


def rss_parts_mib() -> dict[str, float]:
    """This process's resident memory now, by kind (Linux /proc/self/status; empty elsewhere):
    ``anon`` (private: Python objects, tensors), ``shmem`` (shared memory it touched, such as
    Ray's object store) and ``file`` (mapped files: libraries, model weights)."""
    parts = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("RssAnon", "RssFile", "RssShmem"):
                    parts[name[3:].lower()] = int(value.split()[0]) / 1024  # kB
    except OSError:
        pass
    return parts
