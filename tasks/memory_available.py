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
    """Bytes this process may still take: ``$PRH_ALIGN_MEMORY_MB`` when set, else the smallest of
    ``MemAvailable`` (``/proc/meminfo``), the cgroup v2 limit less its working set (usage less
    its inactive file cache, which the kernel reclaims first: the page cache of the model weights
    and Parquet files a run has read counts in ``memory.current`` and would have made a container
    look full) and what this process's own limits leave (:func:`process_limit_left`: ``ulimit
    -v`` or ``-d``, which ``MemAvailable`` does not see: a pair's metrics had then failed with a
    bare ``MemoryError`` instead of being refused naming what they need); None where none can be
    read (not Linux)."""
    override = memory_override()
    if override is not None:
        return override
    found = []
    left = process_limit_left()
    if left is not None:
        found.append(left)
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


#: Resource limits on this process's memory, with the ``/proc/self/status`` field of what it holds
#: against each: its address space (``ulimit -v``, ``prlimit --as``) and its data (``ulimit -d``).
_PROCESS_LIMITS = (("RLIMIT_AS", "VmSize"), ("RLIMIT_DATA", "VmData"))


def process_limit_left(status: Path = Path("/proc/self/status")) -> int | None:
    """Bytes this process may still map under its own memory limits (:data:`_PROCESS_LIMITS`):
    each soft limit less what the process holds against it now, the smallest; None when no such
    limit is set or what it holds cannot be read (not Linux)."""
    try:
        import resource
    except ImportError:  # not Unix
        return None
    held = _status_fields(status)
    found = []
    for limit_name, field in _PROCESS_LIMITS:
        soft = resource.getrlimit(getattr(resource, limit_name))[0]
        if soft != resource.RLIM_INFINITY and field in held:
            found.append(max(soft - held[field], 0))
    return min(found) if found else None


def _status_fields(status: Path) -> dict[str, int]:
    """The ``kB`` fields of ``/proc/self/status`` in bytes (``{}`` where it cannot be read)."""
    try:
        lines = status.read_text().splitlines()
    except OSError:
        return {}
    fields = {}
    for line in lines:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            fields[name] = int(parts[0]) * 1024
    return fields
