"""Peak memory of a piece of engine code, measured in a fresh single-threaded process."""

from __future__ import annotations

import subprocess
import sys


def peak_growth(setup: str, measured: str, *, torch: bool = True) -> list[int]:
    """Run ``setup`` then ``measured`` (Python source) in a new interpreter with one torch thread
    (``torch=False``: torch not imported, for code that does not use it); returns the growth of its
    peak RSS in bytes during ``measured``, followed by any integers ``measured`` prints (e.g. the
    size of what it built). glibc's mmap threshold is fixed first, as the pipeline's pairs fix it
    (``tasks.malloc_policy``): with its dynamic threshold a peak moved from one process to the
    next for the same work (by up to half, ``tests/tasks/test_alignment_memory.py``)."""
    pin = "from tasks.malloc_policy import pin_mmap_threshold\npin_mmap_threshold()\n"
    code = (pin + ("import resource, torch\ntorch.set_num_threads(1)\n" if torch else "import resource\n") + setup +
            "\npeak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\nbase = peak()\n"
            "extra = []\n" + measured + "\nprint(peak() - base, *extra)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return [int(v) for v in out.stdout.split()]
