"""Code versions: what changes a stage's version and what does not."""

from __future__ import annotations

import hashlib

import pytest

from storage import versioning
from storage.versioning import behaviour_source, code_version

BASE = '''"""Module docstring."""
import math  # a comment

LABEL = "# not a comment"


def area(r):
    """Area of a circle.

    Ünïcode in the docstring.
    """
    return math.pi * r * r  # pi r squared


class Shape:
    \'\'\'A class docstring.\'\'\'

    sides = 0; """a string statement that is not a docstring"""

    async def grow(self, by):
        "One-line docstring."
        return by
'''


def _fingerprint(source: str) -> str:
    return hashlib.sha256(behaviour_source(source).encode()).hexdigest()


@pytest.mark.parametrize("edit", [
    lambda s: s.replace("Module docstring.", "Reworded module docstring, longer."),
    lambda s: s.replace("# a comment", "# another comment   "),
    lambda s: s.replace("    Ünïcode in the docstring.\n", ""),
    lambda s: s.replace("A class docstring.", "Changed."),
    lambda s: s.replace('"One-line docstring."', '"""Now\n        two lines."""'),
    lambda s: s.replace("return math.pi * r * r  # pi r squared", "return math.pi * r * r"),
    lambda s: s.replace("\n\n\n", "\n\n\n\n\n") + "\n\n   \n",
    lambda s: s.replace("import math", "import math   "),
], ids=["module-doc", "comment", "doc-line", "class-doc", "one-line-doc", "trailing-comment", "blank-lines", "trailing-space"])
def test_comments_docstrings_and_blank_lines_do_not_change_the_version(edit):
    assert _fingerprint(edit(BASE)) == _fingerprint(BASE)


@pytest.mark.parametrize("edit", [
    lambda s: s.replace("math.pi * r * r", "math.pi * r ** 2"),
    lambda s: s.replace('"# not a comment"', '"# still not a comment!"'),
    lambda s: s.replace("a string statement that is not a docstring", "edited"),
    lambda s: s.replace("        return by", "            return by").replace("    async def grow(self, by):", "    async def grow(self, by):\n        if by:"),
    lambda s: s.replace("sides = 0", "sides = 1"),
], ids=["expression", "string-with-hash", "non-docstring-string", "indentation", "constant"])
def test_code_edits_change_the_version(edit):
    assert _fingerprint(edit(BASE)) != _fingerprint(BASE)


MESSAGES = """import logging
import math
import warnings

logger = logging.getLogger(__name__)


def check(x, code="mode"):
    if x < 0:
        raise ValueError(f"x is {x}, below 0: pass a " "positive number")
    if x > 9:
        raise KeyError("too large: %s" % x) from None
    assert x != 5, "five is refused"
    logger.warning("x is %d (%s)", x, code)
    warnings.warn(f"deprecated {x}", DeprecationWarning)
    return math.log(x + 1, 2) + len("abc")
"""


@pytest.mark.parametrize("edit", [
    lambda s: s.replace('f"x is {x}, below 0: pass a " "positive number"', '"negative x"'),
    lambda s: s.replace('"too large: %s"', '"x is over 9: %r"'),
    lambda s: s.replace('"five is refused"', 'f"{x} is refused"'),
    lambda s: s.replace('"x is %d (%s)", x, code', '"x=%d", x'),
    lambda s: s.replace('f"deprecated {x}"', '"renamed"'),
], ids=["raise-fstring", "raise-percent", "assert-message", "log-arguments", "warning-message"])
def test_message_wording_does_not_change_the_version(edit):
    """Error, assertion, log and warning texts cannot change a stored number: rewording one must
    not re-extract or re-align a store."""
    assert edit(MESSAGES) != MESSAGES
    assert _fingerprint(edit(MESSAGES)) == _fingerprint(MESSAGES)


@pytest.mark.parametrize("edit", [
    lambda s: s.replace("raise ValueError(", "raise TypeError("),
    lambda s: s.replace("if x < 0:", "if x <= 0:"),
    lambda s: s.replace('% x) from None', '% x)'),
    lambda s: s.replace("assert x != 5", "assert x != 6"),
    lambda s: s.replace("math.log(x + 1, 2)", "math.log(x + 1, 10)"),
    lambda s: s.replace('len("abc")', 'len("abcd")'),
    lambda s: s.replace('code="mode"', 'code="other"'),
    lambda s: s.replace("DeprecationWarning", "UserWarning"),
    lambda s: s.replace("    logger.warning(", "    if x:\n        logger.warning("),
], ids=["exception-class", "condition", "raise-from", "assert-condition", "math-log", "other-string",
        "default-value", "warning-category", "log-placement"])
def test_code_around_messages_changes_the_version(edit):
    assert _fingerprint(edit(MESSAGES)) != _fingerprint(MESSAGES)


def test_what_is_kept_is_the_code_itself():
    kept = behaviour_source(BASE)
    assert "docstring" not in kept.replace("not a docstring", "")
    assert "comment" not in kept.replace("# not a comment", "")
    assert 'LABEL = "# not a comment"' in kept and "return math.pi * r * r\n" in kept


def test_unparsable_source_is_hashed_as_it_is():
    broken = "def f(:\n    # comment\n"
    assert behaviour_source(broken) == broken


def test_code_version_of_a_package_follows_its_behaviour(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text(BASE, encoding="utf-8")
    monkeypatch.setattr(versioning, "PROJECT_ROOT", tmp_path)

    def version() -> str:
        code_version.cache_clear()
        return code_version("pkg")

    first = version()
    (package / "a.py").write_text(BASE.replace("A class docstring.", "Reworded."), encoding="utf-8")
    assert version() == first
    (package / "a.py").write_text(BASE.replace("sides = 0", "sides = 2"), encoding="utf-8")
    assert version() != first
    (package / "a.py").write_text(BASE, encoding="utf-8")
    (package / "b.py").write_text("X = 1\n", encoding="utf-8")
    assert version() != first
    code_version.cache_clear()
    assert code_version("pkg", exclude=("pkg/b.py",)) == first  # a module that cannot change the numbers
    code_version.cache_clear()


def test_overlapping_code_versions_parse_each_file_once(tmp_path, monkeypatch):
    """A run asks for several code versions over overlapping files (its record's ``tasks`` and
    ``storage``, then ``tasks/data``, the extraction code, the alignment code once per metric);
    each had parsed all of its files again (8 s of a cold demo run on 2 loaded cores). A file is
    parsed once per text now, an edited one again; the versions are those of the files' stripped
    sources hashed as ``code_version`` documents."""
    package = tmp_path / "pkg"
    package.mkdir()
    texts = {"a.py": BASE.replace("sides = 0", f"sides = 0; tag = {str(tmp_path)!r}"), "b.py": f"Y = {str(tmp_path)!r}\n"}
    for name, text in texts.items():
        (package / name).write_text(text, encoding="utf-8")
    monkeypatch.setattr(versioning, "PROJECT_ROOT", tmp_path)
    parsed = []
    real = versioning.behaviour_source
    monkeypatch.setattr(versioning, "behaviour_source", lambda source: parsed.append(source) or real(source))

    def expected(*names: str) -> str:  # sha256 over (path NUL stripped source NUL) of each file, in name order
        h = hashlib.sha256()
        for name in names:
            h.update(f"pkg/{name}".encode() + b"\0" + real(texts[name]).encode() + b"\0")
        return h.hexdigest()[:16]

    code_version.cache_clear()
    try:
        assert code_version("pkg") == expected("a.py", "b.py")
        assert code_version("pkg", exclude=("pkg/b.py",)) == expected("a.py")
        assert code_version("pkg/b.py") == expected("b.py")
        assert sorted(parsed) == sorted(texts.values())  # each file once, not once per version asked
        texts["b.py"] = f"Y = 2  # {tmp_path}\n"
        (package / "b.py").write_text(texts["b.py"], encoding="utf-8")
        code_version.cache_clear()
        assert code_version("pkg") == expected("a.py", "b.py") != expected("a.py")
        assert len(parsed) == 3  # the edited file again, the other one not
    finally:
        code_version.cache_clear()


def _racing_parse(monkeypatch, failures: int, message: str = "AST constructor recursion depth mismatch (before=42, after=75)"):
    """Make ``ast.parse`` fail ``failures`` times as CPython 3.11 does when another thread parses
    at the same moment (a Prefect or ``traceback`` thread, which no lock of ours orders)."""
    real = versioning.ast.parse
    calls = []

    def parse(source, *args, **kwargs):
        if source != BASE:  # pytest's own traceback formatting parses too
            return real(source, *args, **kwargs)
        calls.append(1)
        if len(calls) <= failures:
            raise SystemError(message)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(versioning.ast, "parse", parse)
    return calls


def test_a_parse_hit_by_the_ast_recursion_race_is_repeated(monkeypatch):
    expected = behaviour_source(BASE)
    calls = _racing_parse(monkeypatch, failures=2)
    assert behaviour_source(BASE) == expected  # a flow run had failed at its first step here
    assert len(calls) == 3


def test_a_race_that_persists_or_another_system_error_is_raised(monkeypatch):
    _racing_parse(monkeypatch, failures=10**6)
    with pytest.raises(SystemError, match="recursion depth mismatch"):
        behaviour_source(BASE)
    monkeypatch.undo()
    calls = _racing_parse(monkeypatch, failures=1, message="something else")
    with pytest.raises(SystemError, match="something else"):
        behaviour_source(BASE)
    assert len(calls) == 1


def test_table_digest_of_bytes_and_null_values_from_its_definition() -> None:
    """Per column: its name and a NUL, then per value ``\\1N`` for a null, else the 8-byte
    little-endian length and the bytes themselves (text: its UTF-8)."""
    import hashlib

    import pyarrow as pa

    from storage.versioning import table_digest

    table = pa.table({"b": pa.array([b"ab", None, b""], type=pa.binary()), "s": ["é", None, "x"]})
    h = hashlib.sha256()
    h.update(b"b\0")
    for v in (b"ab", None, b""):
        h.update(b"\1N" if v is None else len(v).to_bytes(8, "little") + v)
    h.update(b"s\0")
    for v in ("é", None, "x"):
        h.update(b"\1N" if v is None else len(v.encode()).to_bytes(8, "little") + v.encode())
    assert table_digest(table) == h.hexdigest()


#: Characters ``str.splitlines`` breaks a line at and Python does not (Python ends a line at
#: ``\n``, ``\r\n`` and ``\r`` only): legal inside a string literal or a comment.
NOT_PYTHON_LINE_BREAKS = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("char", NOT_PYTHON_LINE_BREAKS, ids=[f"U+{ord(c):04X}" for c in NOT_PYTHON_LINE_BREAKS])
def test_a_line_break_python_does_not_count_moves_no_cut(char):
    """A cut (a comment, a docstring, a message) is placed by Python's line numbers: a character
    that ``str.splitlines`` also breaks at, inside a string, had shifted every later cut by a line,
    onto code (``if x > 1`` lost its ``1: ``), so changing that code left the version unchanged;
    and two different literals (that character, or a real newline in a triple-quoted string) read
    as one."""
    source = f'SEP = "a{char}b"\ndef f(x):\n    if x > 1: x = 2\n    raise ValueError("too large")\n'
    assert behaviour_source(source) == f'SEP = "a{char}b"\ndef f(x):\n    if x > 1: x = 2\n    raise ValueError()\n'
    assert _fingerprint(source.replace("x > 1", "x > 5")) != _fingerprint(source)
    assert _fingerprint(f'T = """a{char}b"""\n') != _fingerprint('T = """a\nb"""\n')
