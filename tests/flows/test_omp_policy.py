"""The OpenMP wait policy ``prh`` picks: spin on free cores, sleep when other work uses them."""

from __future__ import annotations

import subprocess
import sys

import pytest

import flows.omp_policy as omp_policy


@pytest.mark.parametrize(("busy", "expected"), [(0.0, "spin"), (0.49, "spin"), (0.5, "PASSIVE"), (1.7, "PASSIVE"), (None, "PASSIVE")])
def test_threads_sleep_when_other_work_uses_the_cores(monkeypatch, busy, expected):
    monkeypatch.setattr(omp_policy, "busy_cores", lambda: busy)
    environ: dict[str, str] = {}
    assert omp_policy.choose_omp_wait_policy(environ) == expected
    assert environ == ({} if expected == "spin" else {"OMP_WAIT_POLICY": "PASSIVE"})


def test_a_policy_the_user_set_is_kept(monkeypatch):
    monkeypatch.setattr(omp_policy, "busy_cores", lambda: pytest.fail("must not measure"))
    environ = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert omp_policy.choose_omp_wait_policy(environ) == "user" and environ == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_a_busy_process_is_seen():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert omp_policy.busy_cores(0.05) is not None  # warm-up: the spinner is running
        assert omp_policy.busy_cores(0.5) >= 0.7
    finally:
        spinner.kill()
        spinner.wait()
