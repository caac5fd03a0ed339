"""Escape codes in ``prh``'s tables and closing lines follow ``NO_COLOR`` and ``FORCE_COLOR``
(``flows.cli_console``): the rich library kept bold under ``NO_COLOR`` and read ``FORCE_COLOR=0``
as "force colour", writing escape codes into a pipe or a file."""

from __future__ import annotations

import pyarrow as pa
import pytest

from flows.cli import print_summary
from flows.sql_output import print_table

ESC = "\x1b"
ROW = {"model_a": "vit", "model_b": "lm", "metric": "cka", "score": 0.5, "layer_name_a": "l1", "layer_name_b": "l2",
       "chance_level": None, "null_mean": 0.1, "calibrated_score": 0.4, "p_value": 0.02, "q_value": 0.04, "ci_low": 0.4,
       "ci_high": 0.6}


@pytest.fixture(autouse=True)
def _no_colour_settings(monkeypatch):
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "TERM", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)


def _printed(capsys: pytest.CaptureFixture[str]) -> str:
    """What the sql table and the closing lines of ``prh run`` write (stdout: a pipe here, no terminal)."""
    print_table(pa.table({"model": ["vit"], "score": [0.5]}))
    print_summary({"dataset_version": "d", "best": [ROW], "extracted": ["vit"], "reused": ["lm"],
                   "store": "file:///data/store", "run_id": "r1"})
    return capsys.readouterr().out


@pytest.mark.parametrize("environment", [{"FORCE_COLOR": "0"}, {"FORCE_COLOR": "false"}, {"NO_COLOR": "1", "FORCE_COLOR": "1"},
                                         {"NO_COLOR": "1", "TTY_COMPATIBLE": "1"}], ids=str)
def test_no_escape_codes_where_the_environment_asks_for_none(capsys, monkeypatch, environment):
    """``FORCE_COLOR=0`` into a pipe wrote bold headers; ``NO_COLOR`` on a terminal (``TTY_COMPATIBLE=1``
    makes stdout one for the library) kept bold, italic and underline."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    shown = _printed(capsys)
    assert ESC not in shown
    assert "┃ model ┃ score ┃" in shown and "results stored in file:///data/store (run r1)" in shown


def test_styles_where_the_environment_asks_for_them_or_none_into_a_pipe(capsys, monkeypatch):
    assert ESC not in _printed(capsys)  # a pipe: none, unasked
    monkeypatch.setenv("FORCE_COLOR", "1")
    forced = _printed(capsys)
    assert f"{ESC}[1m" in forced  # bold headers, as asked, even into a pipe
    monkeypatch.delenv("FORCE_COLOR")
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # a terminal: styles
    assert f"{ESC}[1m" in _printed(capsys)
    monkeypatch.setenv("TERM", "dumb")  # one that takes none
    assert ESC not in _printed(capsys)
