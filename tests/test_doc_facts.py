"""Facts the documentation states about the code and the tests, checked against them so that a
change to one shows up as a stale page: the code each version hashes (docs/storage.md) and the
case counts of docs/reliability.md."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COUNTED = ("tests/tasks/data/test_bad_input_matrix.py", "tests/tasks/test_params.py")


def _constant(module: str, name: str) -> tuple[str, ...]:
    """The value of the tuple of strings ``name`` assigned in ``module`` (read, not imported)."""
    tree = ast.parse((ROOT / module).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise AssertionError(f"{name} is not assigned in {module}")


def test_storage_page_names_every_module_a_code_version_hashes() -> None:
    text = (ROOT / "docs" / "storage.md").read_text(encoding="utf-8")
    paragraph = text.split("A code version (`storage.versioning.code_version`)", 1)[1].split("\n\n", 1)[0]
    alignment = _constant("tasks/align_task.py", "ALIGNMENT_CODE")
    for group in (alignment, _constant("tasks/extract_task.py", "FEATURE_CODE"),
                  _constant("tasks/extract_task.py", "FEATURE_CODE_EXCLUDED")):
        assert [path for path in group if f"`{path}`" not in paragraph] == []
    row = next(line for line in text.splitlines() if line.startswith("| alignment |"))
    assert [path for path in alignment if path not in row and Path(path).stem not in row] == []


def test_reliability_page_counts_the_cases_pytest_collects() -> None:
    page = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *COUNTED],
                               cwd=ROOT, capture_output=True, text=True)
    assert collected.returncode == 0, collected.stdout[-2000:] + collected.stderr[-2000:]
    ids = [line for line in collected.stdout.splitlines() if "::" in line]
    for test_file in COUNTED:
        stated = re.search(re.escape(f"`{test_file}`") + r", (\d+) cases", page)
        assert stated, f"docs/reliability.md gives no case count for {test_file}"
        assert int(stated.group(1)) == sum(line.startswith(test_file + "::") for line in ids), test_file
