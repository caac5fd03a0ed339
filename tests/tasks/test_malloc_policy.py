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


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
@pytest.mark.parametrize("entry", ["layer_matrix", "score", "calibrate", "bootstrap_ci"])
def test_every_engine_entry_point_fixes_the_thresholds(monkeypatch: pytest.MonkeyPatch, entry: str) -> None:
    """The engine used on its own (a notebook, the bench) fixes them as the pipeline does: with
    glibc's dynamic threshold its per-layer buffers were faulted in anew on some calls only
    (linear CKA of 13 x 13 layers at N=1024: 145 or 170 ms with the allocation history)."""
    import numpy as np

    import tasks.metrics as tm

    calls = []
    monkeypatch.setattr(mp, "_pinned", None)
    monkeypatch.setattr(mp, "_mallopt", lambda param, value: calls.append(param) or True)
    x, y = np.random.default_rng(0).normal(size=(2, 2, 12, 3))
    call = {"layer_matrix": lambda: tm.layer_matrix("cka", x, y),
            "score": lambda: tm.score("cka", x[0], y[0]),
            "calibrate": lambda: tm.calibrate("cka", x, y, permutations=3, seed=0),
            "bootstrap_ci": lambda: tm.bootstrap_ci("cka", x, y, n_boot=3, seed=0)}[entry]
    call()
    assert calls == [mp._M_MMAP_THRESHOLD, mp._M_TRIM_THRESHOLD]
