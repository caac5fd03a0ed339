"""The OpenMP wait policy ``prh`` picks: spin on free cores, sleep when other work uses them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import flows.omp_policy as omp_policy


@pytest.mark.parametrize(("busy", "expected"), [(0.0, "spin"), (0.49, "spin"), (0.5, "passive"), (1.7, "passive"), (None, "passive")])
def test_threads_sleep_when_other_work_uses_the_cores(monkeypatch, busy, expected):
    monkeypatch.setattr(omp_policy, "busy_cores", lambda: busy)
    environ: dict[str, str] = {}
    assert omp_policy.choose_omp_wait_policy(environ) == expected
    assert environ == ({} if expected == "spin" else {"OMP_WAIT_POLICY": "passive"})


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


GOMP_REFUSED = b"Invalid value for environment variable OMP_WAIT_POLICY"
# prh's choice under a busy machine, then torch (whose libgomp reads OMP_WAIT_POLICY as it loads)
CHOOSE_THEN_TORCH = ("import flows.omp_policy as p; p.busy_cores = lambda: 1.0; print(p.choose_omp_wait_policy()); "
                     "import torch; torch.ones(4).sum()")


def test_the_policy_prh_sets_is_read_by_libgomp_in_a_turkish_locale(tmp_path):
    """libgomp compares OMP_WAIT_POLICY with strncasecmp, which follows the locale: in a Turkish
    one the 'I' of 'PASSIVE' lowers to a dotless 'ı', so the policy prh set was refused (a libgomp
    warning at every start, the threads left spinning on the busy cores)."""
    if shutil.which("localedef") is None:
        pytest.skip("no localedef to build a Turkish locale")
    subprocess.run(["localedef", "-i", "tr_TR", "-f", "UTF-8", str(tmp_path / "tr_TR.UTF-8")], capture_output=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "OMP_"))}
    env.update(LOCPATH=str(tmp_path), LC_ALL="tr_TR.UTF-8", LANG="tr_TR.UTF-8")
    root = Path(__file__).resolve().parents[2]
    # the reference: libgomp itself, given the upper-case value in that locale, refuses it
    control = subprocess.run([sys.executable, "-c", "import torch"], env={**env, "OMP_WAIT_POLICY": "PASSIVE"}, cwd=root,
                             capture_output=True, timeout=120)
    if GOMP_REFUSED not in control.stderr:
        pytest.skip(f"no Turkish locale or no libgomp here ({control.stderr[-200:]!r})")
    done = subprocess.run([sys.executable, "-c", CHOOSE_THEN_TORCH], env=env, cwd=root, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip().lower() == "passive"
    assert GOMP_REFUSED not in done.stderr, done.stderr.decode()
