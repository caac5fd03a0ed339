"""``tasks.malloc_policy``: glibc's mmap threshold fixed once, a no-op elsewhere."""

from __future__ import annotations

import platform

import pytest

import tasks.malloc_policy as mp


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_glibc_takes_the_thresholds_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = mp._mallopt
    monkeypatch.setattr(mp, "_pinned", None)
    monkeypatch.setattr(mp, "_mallopt", lambda param, value: calls.append((param, value)) or real(param, value))
    assert mp.pin_mmap_threshold() and mp.pin_mmap_threshold()
    assert calls == [(mp._M_MMAP_THRESHOLD, 16 << 20), (mp._M_TRIM_THRESHOLD, 32 << 20)]


@pytest.mark.parametrize("system, libc", [("Darwin", ("", "")), ("Linux", ("musl", "1.2"))])
def test_another_c_library_is_left_alone(monkeypatch: pytest.MonkeyPatch, system: str, libc: tuple[str, str]) -> None:
    """macOS or musl: nothing is called (their allocators' peaks are their own), False."""
    monkeypatch.setattr(mp, "_pinned", None)
    monkeypatch.setattr(platform, "system", lambda: system)
    monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: libc)
    monkeypatch.setattr(mp.ctypes, "CDLL", lambda *a, **k: pytest.fail("libc was loaded"))
    assert mp.pin_mmap_threshold() is False
