"""`tasks.pillow_policy`: an image that is really a PostScript program (EPS named ``.png``)
is refused wherever dataset bytes are decoded, and Ghostscript never runs. Before, Pillow handed
it to ``gs`` (when on ``PATH``) at the dataset check, at each extraction and for the report.
Each case runs in a fresh interpreter whose ``PATH`` starts with a fake ``gs`` that records its
calls (Pillow caches whether ``gs`` exists, and this process may already have asked)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n"
       b"(a program, not a picture) print\nshowpage\n%%EOF\n")


def _png(color: tuple[int, int, int], size: tuple[int, int] = (40, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def _run_with_fake_gs(tmp_path: Path, code: str) -> tuple[str, list[str]]:
    """Run ``code`` in a fresh interpreter with a fake ``gs`` first on ``PATH``; its stdout and the
    fake's recorded argument lines."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "gs-calls.txt"
    bin_dir.mkdir(exist_ok=True)
    gs = bin_dir / "gs"
    gs.write_text(f'#!/bin/sh\necho "$*" >> {calls}\ncase "$1" in --version) echo 10.05.0; exit 0;; esac\nexit 1\n')
    gs.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout, (calls.read_text().splitlines() if calls.exists() else [])


def test_the_fake_gs_is_what_pillow_runs_without_the_policy(tmp_path: Path) -> None:
    """The fake is found and called: the checks below could see a run of gs."""
    (tmp_path / "x.png").write_bytes(EPS)
    out, calls = _run_with_fake_gs(tmp_path, """
        from PIL import Image
        try:
            Image.open("x.png").load()
        except Exception as exc:
            print("refused:", exc)
    """)
    assert calls and any("-dSAFER" in call for call in calls), (out, calls)


def test_a_postscript_image_in_a_dataset_is_rejected_without_running_gs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"ok{i}.png").write_bytes(_png((60 * i, 20, 20)))
        (data / f"ok{i}.txt").write_text(f"a red square {i}")
    (data / "cat.png").write_bytes(EPS)
    (data / "cat.txt").write_text("a cat")
    out, calls = _run_with_fake_gs(tmp_path, """
        from tasks.data.tables import load_paired_dataset
        result = load_paired_dataset("data")
        print(result.summary())
        print(result.rejected.to_pylist())
    """)
    assert calls == [], calls
    assert "{'image_unreadable': 1}" in out and "PostScript (EPS)" in out and "cat" in out, out


@pytest.mark.parametrize("where", ["check_image", "decode_image", "thumbnail_png"])
def test_no_decoder_of_stored_bytes_runs_gs(tmp_path: Path, where: str) -> None:
    """A dataset stored before (by a machine that had gs, which decoded it) is decoded again at
    extraction and for the report thumbnails."""
    (tmp_path / "x.eps").write_bytes(EPS)
    call = {"check_image": "from tasks.data.images import check_image as f; print(f(data))",
            "decode_image": "from tasks.extract.images import decode_image as f\n"
                            "try:\n    f(data)\nexcept OSError as exc:\n    print('refused:', exc)",
            "thumbnail_png": "from tasks.report.images import thumbnail_png as f; print(f(data))"}[where]
    out, calls = _run_with_fake_gs(tmp_path, "data = open('x.eps', 'rb').read()\n" + call)
    assert calls == [], (where, calls)
    assert "PostScript (EPS)" in out or out.strip() == "None", out
