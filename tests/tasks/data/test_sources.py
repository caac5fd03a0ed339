"""tasks.data.sources: the readers' row limits, the JSON nesting guard, row locations and column types."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.data.sources import ColumnMap, check_json_nesting, head_of
from tasks.data.tables import load_paired_dataset
from tests.tasks.data.sample_images import png_bytes


def test_head_of_pulls_batches_only_until_it_holds_the_limit():
    """"batches are pulled only until they hold that many, so the rest of the file is never read":
    a stream whose next batch would fail is never asked for it once the limit is reached."""
    schema = pa.schema([("x", pa.int64())])
    pulled = []

    def batches():
        for start in (0, 2, 4):
            pulled.append(start)
            yield pa.record_batch([pa.array([start, start + 1])], schema=schema)
        raise AssertionError("read past the batches needed")

    assert head_of(batches(), schema, 2).column("x").to_pylist() == [0, 1]
    assert pulled == [0]
    pulled.clear()
    assert head_of(batches(), schema, 3).column("x").to_pylist() == [0, 1, 2]
    assert pulled == [0, 2]


def test_json_nesting_limit_is_the_deepest_allowed(tmp_path):
    """A line may nest exactly ``limit`` levels; one more is refused, naming its line (counted
    across chunk boundaries)."""
    path = tmp_path / "t.jsonl"
    path.write_text('{"a": 1}\n' + "[" * 4 + "]" * 4 + "\n")
    for chunk in (3, 4096):
        check_json_nesting(path, limit=4, chunk_bytes=chunk)
        with pytest.raises(ValueError, match=r"t\.jsonl'?: line 2 nests JSON arrays/objects more than 3 levels deep"):
            check_json_nesting(path, limit=3, chunk_bytes=chunk)
    path.write_text("[[[]]]\n[[[[]]]]\n")  # line 1 at the limit is fine: the line named is the one beyond it
    with pytest.raises(ValueError, match=r"line 2 nests"):
        check_json_nesting(path, limit=3)
    path.write_text("".join('{"a": [1]}\n' for _ in range(5)) + "[" * 9 + "]" * 9 + "\n")
    with pytest.raises(ValueError, match=r"line 6 nests"):
        check_json_nesting(path, limit=8, chunk_bytes=5)


def test_json_nesting_is_counted_across_lines_and_outside_strings(tmp_path):
    """A row whose brackets each stand on a line of their own had passed the per-line count, and
    pyarrow's reader then crashed the process (a segfault at 20,000 levels, no message): the depth
    is counted across lines. Brackets inside strings (a caption of 600 ``[``, after an escaped
    quote or before an escaped backslash) do not count, where they had refused the table."""
    path = tmp_path / "t.jsonl"
    path.write_text('{"image": "a.png", "text": "x"}\n{"image": "b.png", "text": "y", "extra": '
                    + "[\n" * 9 + "]\n" * 9 + "}\n")  # the second row: depth 2 on line 2, 9 on line 9
    for chunk in (3, 4096):
        check_json_nesting(path, limit=10, chunk_bytes=chunk)
        with pytest.raises(ValueError, match=r"t\.jsonl'?: line 9 nests JSON arrays/objects more than 8 levels deep"):
            check_json_nesting(path, limit=8, chunk_bytes=chunk)
    path.write_text('{"image": "a.png", "text": "a \\"quote\\" ' + "[" * 600 + '", "sample_id": "s\\\\"}\n'
                    + '{"image": "b.png", "text": "' + "{" * 600 + '", "tags": [[1]]}\n')
    for chunk in (5, 4096):
        check_json_nesting(path, chunk_bytes=chunk)
        with pytest.raises(ValueError, match=r"line 2 nests JSON arrays/objects more than 1 levels deep"):
            check_json_nesting(path, limit=1, chunk_bytes=chunk)


def test_the_json_nesting_check_holds_little_memory(tmp_path):
    """The nesting check runs before every JSON Lines table is read: it counted brackets in 4 MiB
    chunks of 64-bit arrays, a peak of ~200 MB for any table of 4 MB or more (more than reading a
    12 MB table took). 1 MiB chunks of narrower counts: at most ~50 MB."""
    from tests.tasks.metrics.peak_memory import peak_growth

    table = tmp_path / "t.jsonl"
    table.write_text('{"image": "a.png", "text": "a caption [with brackets]", "tags": [[1], {"a": 2}]}\n' * 100_000)
    setup = "from pathlib import Path\nfrom tasks.data.sources import check_json_nesting"
    [growth] = peak_growth(setup, f"check_json_nesting(Path({str(table)!r}))", torch=False)
    assert table.stat().st_size > 6 << 20 and growth < 100 << 20, (growth, table.stat().st_size)


def test_a_csv_row_names_its_physical_line(tmp_path):
    """Row 0 of a CSV is on line 2 (after the header); a row after a quoted caption spanning two
    lines is on the line it starts."""
    (tmp_path / "a.png").write_bytes(png_bytes("red"))
    (tmp_path / "b.png").write_bytes(png_bytes("blue"))
    path = tmp_path / "t.csv"
    path.write_text('image,text\nmissing.png,x\na.png,"two\nlines"\nb.png\nb.png,blue\n', encoding="utf-8")
    result = load_paired_dataset(path)
    details = [(r["row"], r["reason"], r["detail"]) for r in result.rejected.to_pylist()]
    assert [(row, reason) for row, reason, _ in details] == [(0, "image_missing"), (2, "row_malformed")]
    assert details[0][2].startswith("row 0 (line 2): ")
    assert details[1][2].startswith("row 2 (line 5) has 1 fields")


def test_a_csv_sample_id_column_empty_in_every_row_is_refused_as_a_column(tmp_path):
    """CSV cannot tell null from empty: a ``sample_id`` column left empty in every row (a
    spreadsheet's unfilled column) gave one ``sample_id_empty`` reject per row, then "0 valid
    row(s)"; it is refused once, naming the column, as a column null in every row of the other
    layouts is. Malformed rows do not count; one id given keeps the row-by-row rejects."""
    for name, color in (("a.png", "red"), ("b.png", "blue"), ("c.png", "green")):
        (tmp_path / name).write_bytes(png_bytes(color))
    path = tmp_path / "t.csv"
    path.write_text("sample_id,image,text\n,a.png,red\n,b.png,blue\n,c.png\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"t\.csv': id column 'sample_id' holds no value: it is empty in all 2 row\(s\) "
                                         r"\(leave the column out"):
        load_paired_dataset(path, min_valid_rows=0)
    path.write_text("sample_id,image,text\n,a.png,red\nb,b.png,blue\n,c.png,blue too\n", encoding="utf-8")
    result = load_paired_dataset(path, min_valid_rows=1)
    assert [(r["row"], r["reason"]) for r in result.rejected.to_pylist()] == [(0, "sample_id_empty"), (2, "sample_id_empty")]


def _id_table(path, ids, captions=None):
    """Rows ``{sample_id, image, text}`` over red/blue/green.png written at ``path`` by its suffix
    (``.parquet``, ``.jsonl``, ``.json``); ``captions``: the text values (default the colour)."""
    colors = ["red", "blue", "green"][:len(ids)]
    rows = [{"sample_id": i, "image": f"{c}.png", "text": t} for i, c, t in zip(ids, colors, captions or colors)]
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([("sample_id", pa.string()), ("image", pa.string()),
                                                                    ("text", pa.infer_type([r["text"] for r in rows]))])), path)
    else:
        path.write_text(json.dumps(rows) if path.suffix == ".json" else "".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("name", ["t.parquet", "t.jsonl", "t.json", "bad.jsonl"])
def test_a_sample_id_column_empty_in_every_row_is_refused_as_a_column_in_every_table_layout(tmp_path, name):
    """As the CSV's: a Parquet, JSON Lines or JSON ``sample_id`` column of ``""`` in every row (a
    spreadsheet export, a script writing ``str(None or "")``) gave one ``sample_id_empty`` per row,
    then "0 valid row(s)"; it is refused once, naming the file and the column. ``bad.jsonl`` holds a
    lone surrogate, so it is read line by line; a row whose id is refused for one is not counted.
    A string column null in every row (Arrow's string type, not null type) is refused alike."""
    for color in ("red", "blue", "green"):
        (tmp_path / f"{color}.png").write_bytes(png_bytes(color))
    path = tmp_path / name
    ids = ["", "", "\ud800"] if name == "bad.jsonl" else ["", "", ""]
    _id_table(path, ids)  # json.dumps writes the lone surrogate as the escape "\\ud800"
    escaped = name.replace(".", r"\.")
    rows = 2 if name == "bad.jsonl" else 3
    with pytest.raises(ValueError, match=rf"{escaped}': id column 'sample_id' holds no value: it is empty in all {rows} "
                                         r"row\(s\) \(leave the column out"):
        load_paired_dataset(path, min_valid_rows=0)
    if name == "t.parquet":
        pq.write_table(pa.table({"sample_id": pa.array([None, None], pa.string()), "image": ["red.png", "blue.png"],
                                 "text": ["red", "blue"]}), path)
        with pytest.raises(ValueError, match=r"id column 'sample_id' holds no value: it is null in all 2 row\(s\)"):
            load_paired_dataset(path, min_valid_rows=0)


@pytest.mark.parametrize("name", ["t.parquet", "t.jsonl", "t.json"])
def test_a_few_empty_sample_ids_among_given_ones_are_rejected_row_by_row(tmp_path, name):
    """One id given keeps the rows' own rejects (``sample_id_empty``), with one caption per row or a
    list of them: with ``captions: all`` an empty id had been joined into the id ``-0`` (and ``-1``
    ...), accepted as given, and a second such row rejected as its duplicate."""
    for color in ("red", "blue", "green"):
        (tmp_path / f"{color}.png").write_bytes(png_bytes(color))
    path = tmp_path / name
    _id_table(path, ["", "b", ""])
    result = load_paired_dataset(path, min_valid_rows=1)
    assert [(r["row"], r["reason"]) for r in result.rejected.to_pylist()] == [(0, "sample_id_empty"), (2, "sample_id_empty")]
    _id_table(path, ["", "b", ""], captions=[["red", "a red square"], ["blue"], ["green"]])
    every = load_paired_dataset(path, columns=ColumnMap(captions="all"), min_valid_rows=1)
    assert every.table.column("sample_id").to_pylist() == ["b-0"]
    assert [(r["row"], r["sample_id"], r["reason"]) for r in every.rejected.to_pylist()] == [
        (0, "", "sample_id_empty"), (0, "", "sample_id_empty"), (2, "", "sample_id_empty")]


def test_a_parquet_caption_column_of_integers_is_refused(tmp_path):
    """Captions are text: an integer ``text`` column (ids are allowed to be integers, captions
    not) is refused naming the file, the column and its type, not read as "1", "2"."""
    path = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"image": pa.array([png_bytes("red"), png_bytes("blue")], pa.binary()),
                             "text": pa.array([1, 2], pa.int64())}), path)
    with pytest.raises(ValueError, match=r"ints\.parquet.*column 'text' has type int64, expected string or binary"):
        load_paired_dataset(path)


def test_a_caption_file_of_exactly_the_size_limit_is_read(tmp_path, monkeypatch):
    """Only a caption file *larger* than MAX_CAPTION_FILE_BYTES is refused unread (``text_too_long``);
    one of exactly that size is read."""
    from tasks.data import sources

    for name, colour in (("a", "red"), ("b", "blue"), ("c", "green")):
        (tmp_path / f"{name}.png").write_bytes(png_bytes(colour))
    (tmp_path / "a.txt").write_text("exactly10\n")  # 10 bytes: at the limit
    (tmp_path / "b.txt").write_text("eleven b!!\n")  # 11 bytes: over it
    (tmp_path / "c.txt").write_text("short\n")
    monkeypatch.setattr(sources, "MAX_CAPTION_FILE_BYTES", 10)
    result = load_paired_dataset(tmp_path)
    assert sorted(result.table.column("text").to_pylist()) == ["exactly10", "short"]
    assert [(r["sample_id"], r["reason"]) for r in result.rejected.to_pylist()] == [("b", "text_too_long")]
