"""`prh sql` output: every column by position, text verbatim, strict and faithful JSON."""

from __future__ import annotations

import csv
import io
import json

import duckdb

from flows.sql_output import print_table, unique_names, write_csv, write_json


def _result(sql: str):
    return duckdb.connect(":memory:").sql(sql).to_arrow_table()


def test_repeated_column_names_keep_every_value_in_its_place(capsys):
    table = _result("select 1 x, 2 y, 3 x, 4 z")
    out = io.StringIO()
    write_csv(table, out)
    assert list(csv.reader(io.StringIO(out.getvalue()))) == [["x", "y", "x", "z"], ["1", "2", "3", "4"]]
    out = io.StringIO()
    write_json(table, out)
    assert json.loads(out.getvalue()) == [{"x": 1, "y": 2, "x_2": 3, "z": 4}]
    print_table(table)
    shown = capsys.readouterr().out
    assert shown.index("1") < shown.index("2") < shown.index("3") < shown.index("4") and "1 rows" in shown
    assert unique_names(["n", "n", "n_2", "n"]) == ["n", "n_3", "n_2", "n_4"]


def test_text_is_shown_verbatim_not_as_markup(capsys):
    table = _result("select '[red]apple[/red] on a table' a, 'meme: [/r/cats] logo' b, 'array [i] of cats' c")
    print_table(table)  # '[/r/cats]' raised rich's MarkupError
    shown = capsys.readouterr().out
    assert "[red]apple[/red]" in shown and "[/r/cats]" in shown and "array [i] of cats" in shown


def test_json_is_strict_and_keeps_numbers_numbers():
    table = _result("select sum(x) big, 0.1 dec, 1.0/0 inf, 'nan'::double nan, [0.5, 'inf'::double] l, "
                    "['\\x00\\x01'::blob] blobs, {'a': 2::hugeint} s, date '2026-12-02' d from range(3) t(x)")
    out = io.StringIO()
    write_json(table, out)
    [row] = json.loads(out.getvalue(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert row == {"big": 3, "dec": 0.1, "inf": None, "nan": None, "l": [0.5, None], "blobs": ["AAE="],
                   "s": {"a": 2}, "d": "2026-12-02"}
    out = io.StringIO()
    write_csv(table, out)
    [header, values] = list(csv.reader(io.StringIO(out.getvalue())))
    assert dict(zip(header, values))["inf"] == "inf" and dict(zip(header, values))["big"] == "3"

