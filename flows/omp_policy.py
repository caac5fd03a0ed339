"""How torch's OpenMP threads wait between parallel regions: spin or sleep, chosen before torch loads.

Idle OpenMP threads spin by default, which pays on free cores (each of the many small tensor ops
of the alignment stage starts at once) and costs a great deal on shared ones (spinning threads
starve the process that holds the core, and each other). Measured on the 2-core project machine,
one demo model pair (23 x 7 layers, three metrics, 50 permutations, 200 bootstrap replicates):
quiet, spinning 14-16 s and sleeping (``OMP_WAIT_POLICY=passive``) 25 s; with one busy process
beside it, spinning 44-63 s and sleeping 21-24 s (``BENCHMARKS.md``). So ``prh`` spins when the
cores are free as it starts and sleeps when other work is using them. A value the user set is
never changed.
"""

from __future__ import annotations

import os
import time
from collections.abc import MutableMapping

#: cores' worth of work by other processes from which idle threads sleep instead of spinning
BUSY_CORES = 0.5


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from ``/proc/stat``; None where unavailable."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    total = sum(ticks)
    return total - ticks[3] - ticks[4], total


def busy_cores(window_s: float = 0.2) -> float | None:
    """Cores' worth of CPU time used over the next ``window_s`` seconds (this process is idle
    meanwhile, so it is other work); None where ``/proc/stat`` cannot be read."""
    first = _cpu_times()
    time.sleep(window_s)
    second = _cpu_times()
    if first is None or second is None or second[1] <= first[1]:
        return None
    return (second[0] - first[0]) / (second[1] - first[1]) * (os.cpu_count() or 1)


def choose_omp_wait_policy(environ: MutableMapping[str, str] | None = None) -> str:
    """Set ``OMP_WAIT_POLICY=passive`` in ``environ`` (default ``os.environ``) when other work
    uses at least ``BUSY_CORES`` cores (or the load cannot be read); leave the default (spin)
    when the cores are free. Returns the policy in effect, ``'user'`` when already set.

    In lower case: libgomp compares the value with ``strncasecmp``, which follows the locale, and
    in a Turkish one (``LC_ALL=tr_TR.UTF-8``) the ``I`` of ``PASSIVE`` is no capital ``i``: torch
    warned ``libgomp: Invalid value for environment variable OMP_WAIT_POLICY`` and spun."""
    environ = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in environ:
        return "user"
    busy = busy_cores()
    if busy is None or busy >= BUSY_CORES:
        environ["OMP_WAIT_POLICY"] = "passive"
        return "passive"
    return "spin"
