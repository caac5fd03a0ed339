"""How much memory a pair's alignment may still take (torch-free, so that a run can check its
environment before anything heavy is imported: ``flows.runners.check_run_environment``)."""

from __future__ import annotations

import math
from pathlib import Path

from storage.env_numbers import env_number

#: Environment variable: the memory, in MiB, the alignment of one pair may use (default: what
#: the operating system reports available, ``MemAvailable`` or the cgroup's limit).
MEMORY_ENV = "PRH_ALIGN_MEMORY_MB"
#: Where cgroup v2 tells this process's limit, usage and its reclaimable part.
CGROUP = Path("/sys/fs/cgroup")


def memory_override() -> int | None:
    """``$PRH_ALIGN_MEMORY_MB`` in bytes, None when unset; ``ValueError`` naming it when it is not
    a number of MiB above 0."""
    mb = env_number(MEMORY_ENV, math.nan, what="a number of MiB above 0", above_minimum=True)
    return None if math.isnan(mb) else int(mb * 2**20)  # NaN: the default, unset (a set 'nan' is refused)


def available_memory(cgroup: Path = CGROUP) -> int | None:
    """Bytes this process may still take: ``$PRH_ALIGN_MEMORY_MB`` when set, else the smaller of
    ``MemAvailable`` (``/proc/meminfo``) and the cgroup v2 limit less its working set (usage less
    its inactive file cache, which the kernel reclaims first: the page cache of the model weights
    and Parquet files a run has read counts in ``memory.current`` and would have made a container
    look full); None where neither can be read (not Linux)."""
    override = memory_override()
    if override is not None:
        return override
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            current = int((cgroup / "memory.current").read_text().strip())
            stat = dict(line.split() for line in (cgroup / "memory.stat").read_text().splitlines() if len(line.split()) == 2)
            found.append(int(limit) - (current - int(stat.get("inactive_file", 0))))
    except (OSError, ValueError):
        pass
    return min(found) if found else None
