"""Who holds a claim or runs a run: the host, process id and process start time of the writer.

A claim file (``.publishing``) or a run record left behind by a process that was killed (kill -9,
OOM killer, a lost machine) must not block the next writer for long. The owner is recorded as
``{"host", "pid", "started"}``; on the same host a reader can tell at once whether that process is
still alive (the start time guards against a recycled pid). Other hosts cannot be checked, so
for them the caller falls back on the age of the owner's last heartbeat.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _host() -> str:
    return socket.gethostname()


def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/<pid>/stat`` (state first), or None where ``/proc`` is unavailable
    or the process does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may contain spaces: split after it
    return stat.rsplit(")", 1)[-1].split()


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22), or None if unknown."""
    fields = _stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


@lru_cache(maxsize=1)
def _pid_namespace() -> str | None:
    """This process's pid namespace (``pid:[4026531836]``), or None where it cannot be read. Two
    containers may share a host name (``--network host``) but not their pids: a pid is only
    looked up in the namespace that numbered it."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def current_owner() -> dict[str, Any]:
    """This process as an owner record: ``{"host": str, "pid": int, "started": str | None,
    "pid_namespace": str | None}``."""
    pid = os.getpid()
    return {"host": _host(), "pid": pid, "started": _start_time(pid), "pid_namespace": _pid_namespace()}


def owner_is_dead(owner: Any) -> bool:
    """True only when ``owner`` (a record from :func:`current_owner`) is known to have exited:
    it ran on this host, in this pid namespace, and its pid is gone or now belongs to a process
    started at another time. False when alive or when it cannot be known (another host, another
    container of this host, malformed record)."""
    if not isinstance(owner, dict) or owner.get("host") != _host():
        return False
    if owner.get("pid_namespace") is not None and owner.get("pid_namespace") != _pid_namespace():
        return False  # another container with this host name: its pids are not ours to look up
    try:
        pid = int(owner["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by another user
        pass
    fields = _stat(pid)
    if fields and fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent
        return True
    started = owner.get("started")
    now = fields[19] if fields and len(fields) > 19 else None
    return started is not None and now is not None and now != started


def owner_is_alive(owner: Any) -> bool:
    """True only when ``owner`` is known to be running now: it ran on this host, in this pid
    namespace, and its pid is a live process (not a zombie) started at the recorded time. False
    when dead or when it cannot be known (another host or container, no start time recorded,
    no ``/proc``, a malformed record): the caller then judges by the owner's signs of life."""
    if not isinstance(owner, dict) or owner.get("host") != _host():
        return False
    if owner.get("pid_namespace") != _pid_namespace() or _pid_namespace() is None:
        return False
    try:
        pid = int(owner["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    fields = _stat(pid) if pid > 0 else None
    if not fields or len(fields) <= 19 or fields[0] in ("Z", "X"):
        return False
    return owner.get("started") is not None and fields[19] == owner.get("started")
