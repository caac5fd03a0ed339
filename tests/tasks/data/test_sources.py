"""tasks.data.sources: the readers' row limits, the JSON nesting guard, row locations and column types."""

from __future__ import annotations

import csv
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


def test_json_nesting_names_lines_ended_by_a_lone_cr_as_the_readers_count_them(tmp_path):
    """Lines ended by a lone CR (classic Mac OS), by CRLF or mixing them with LF are lines to the
    JSON Lines readers and to an editor; the nesting check counted LFs only and named line 1 of
    such a file for a row on line 3 (a CRLF counted once, a CR split from its LF by a chunk edge)."""
    path = tmp_path / "t.jsonl"
    deep = b"[" * 9 + b"]" * 9
    for ends in ([b"\r", b"\r"], [b"\r\n", b"\r\n"], [b"\r", b"\n"], [b"\n", b"\r\n"]):
        path.write_bytes(b'{"a": 1}' + ends[0] + b'{"a": [2]}' + ends[1] + deep + ends[1])
        for chunk in (1, 3, 9, 4096):
            with pytest.raises(ValueError, match=r"t\.jsonl'?: line 3 nests JSON arrays/objects more than 8 levels deep"):
                check_json_nesting(path, limit=8, chunk_bytes=chunk)


def test_json_nesting_tells_a_row_that_is_not_alone_on_its_line(tmp_path):
    """What the check returns: the first line on which a row does not stand alone (a second row
    starts on it, or the row goes on past its LF), None when every row does. pyarrow's reader
    takes both (a row over several lines only in a file of one block), the line-by-line reader
    neither: :func:`tasks.data.sources._read_jsonl` reads such a file line by line, so that
    either path gives one answer. A CR inside a row is whitespace to both readers."""
    path = tmp_path / "t.jsonl"
    one, two = b'{"a": "x {", "b": [1]}', b'{"a": "y", "b": [{"c": 2}]}'
    for data, line in ((one + b"\n" + two + b"\n", None), (one + b"\r" + two + b"\r\n" + one, None),
                       (b'{"a":\r 1}\r\n' + two + b"\n\n", None), (one + b"\n\n" + two + b" " + one + b"\n", 3),
                       (one + two + b"\n", 1), (one + b"\n" + b'{"a":\r 1} ' + two + b"\n", 3),
                       (one + b"\r\n" + b'{"a":\n 1}\n' + two, 2), (b'{"a":\r\n 1}\n', 1)):
        path.write_bytes(data)
        for chunk in (1, 2, 7, 4096):
            assert check_json_nesting(path, chunk_bytes=chunk) == line, (data, chunk)


def test_json_nesting_names_the_first_line_whose_row_is_not_alone_whichever_kind_comes_first(tmp_path):
    """A row broken over lines (open at an LF) before two rows sharing a later line, in one chunk:
    the later shared line was returned (line 3), and the refusal said "line 1: Expecting value ...
    (line 3 holds a row that does not stand alone ...)", two lines for one problem, and another
    line with a smaller chunk. The first such line is returned at any chunk size."""
    path = tmp_path / "t.jsonl"
    for data, line in ((b'{"a":\n 1}\n{"a": 1} {"b": 2}\n', 1), (b'{"a": 1}\n\n{"a":\r\n 1}{"b": [2]}\n', 3),
                       (b'{"a": 1}\r{"b":\n 2}\r{"c": 3} {"d": 4}\n', 2)):
        path.write_bytes(data)
        for chunk in (1, 3, 8, 4096):
            assert check_json_nesting(path, chunk_bytes=chunk) == line, (data, chunk)
    (tmp_path / "a.png").write_bytes(png_bytes("red"))
    path.write_bytes(b'{"image": "a.png",\n "text": "red"}\n{"image": "a.png", "text": "red"} {"image": "a.png", '
                     b'"text": "red"}\n')
    with pytest.raises(ValueError, match=r"line 1: .*\(line 1 holds a row that does not stand alone on its line"):
        load_paired_dataset(path, min_valid_rows=1)


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


def test_a_record_holds_no_dict_of_its_own():
    """A table is read into one record per row before any check: a record without slots carried a
    per-instance dict (500,000 short CSV rows held 206 MB of records, 183 MB slotted). Records are
    still replaced, compared and pickled as before."""
    import pickle
    from dataclasses import replace

    from tasks.data.sources import RawRecord

    record = RawRecord(3, "row 3", "s", "a.png", "a caption", None)
    assert not hasattr(record, "__dict__")
    changed = replace(record, problem=("text_empty", "row 3: empty"))
    assert changed.problem == ("text_empty", "row 3: empty") and record.problem is None
    assert pickle.loads(pickle.dumps(changed)) == changed
    with pytest.raises(AttributeError):
        record.text = "another"  # type: ignore[misc]


def test_columns_named_twice_matter_only_when_read(tmp_path):
    """A spreadsheet saved as CSV after cells right of the data were touched has a header ending
    in empty names (``image,text,,``), and exports carry unread columns named twice (``note``):
    such a table was refused whole ("has duplicated column(s) ['']") for columns no reader takes.
    A column that is read, named twice, stays refused (which one would be read?)."""
    (tmp_path / "a.png").write_bytes(png_bytes("red"))
    (tmp_path / "b.png").write_bytes(png_bytes("blue"))
    (tmp_path / "trailing.csv").write_text("image,text,,\r\na.png,red,,\r\nb.png,blue,,\r\n")
    (tmp_path / "notes.tsv").write_text("note\timage\tnote\ttext\nx\ta.png\ty\tred\nx\tb.png\ty\tblue\n")
    table = pa.Table.from_arrays([pa.array(["x", "x"]), pa.array(["a.png", "b.png"]), pa.array(["y", "y"]),
                                  pa.array(["red", "blue"])], names=["note", "image", "note", "text"])
    pq.write_table(table, tmp_path / "notes.parquet")
    for name in ("trailing.csv", "notes.tsv", "notes.parquet"):
        assert sorted(load_paired_dataset(tmp_path / name).table.column("text").to_pylist()) == ["blue", "red"], name
    (tmp_path / "twice.csv").write_text("image,text,text\na.png,red,x\nb.png,blue,y\n")
    with pytest.raises(ValueError, match=r"twice\.csv'? has duplicated column\(s\) \['text'\]"):
        load_paired_dataset(tmp_path / "twice.csv")


def test_a_csv_separated_by_semicolons_is_read_as_such(tmp_path):
    """Spreadsheets in locales that write decimal commas (German, French, ...) save CSV with
    semicolons: the header read as one column (``'sample_id;image;text'``) refused the table,
    and ``prh run --check`` with it. A ``.csv`` whose header has no comma but semicolons is read
    at semicolons, quotes as ever (a caption with ``;`` or ``,`` inside quotes); so is an
    ImageFolder's ``metadata.csv``, whose ``file_name`` column is then found."""
    from tasks.data.sources import check_layout, check_table_columns

    (tmp_path / "a.png").write_bytes(png_bytes("red"))
    (tmp_path / "b.png").write_bytes(png_bytes("blue"))
    path = tmp_path / "pairs.csv"
    path.write_bytes('\ufeff"sample_id";"image";"text"\r\nr;a.png;"red; a square, 1,5 cm"\r\nb;b.png;blue\r\n'.encode())
    check_table_columns(path, check_layout(path))
    result = load_paired_dataset(path)
    assert result.table.select(["sample_id", "text"]).to_pylist() == [
        {"sample_id": "b", "text": "blue"}, {"sample_id": "r", "text": "red; a square, 1,5 cm"}]
    (tmp_path / "metadata.csv").write_text("file_name;text\na.png;red\nb.png;blue\n")
    assert sorted(load_paired_dataset(tmp_path).table.column("text").to_pylist()) == ["blue", "red"]
    path.write_text("image;text,more\na.png;red,x\n")  # a comma in the header: read at commas, as ever
    with pytest.raises(ValueError, match=r"lacks required column\(s\) \['image', 'text'\]; it has \['image;text', 'more'\]"):
        load_paired_dataset(path)


def test_a_csv_whose_first_line_declares_its_separator_is_read_at_it(tmp_path):
    """Excel's ``sep=;`` (``sep=,``, ``sep=<tab>``) first line declares the separator and is not the
    header: such a table was refused ("lacks required column(s) ['image', 'text']; it has ['sep=',
    '']"), by ``prh run --check`` too. Rows keep their physical lines (the header is line 2)."""
    from tasks.data.sources import check_layout, check_table_columns

    (tmp_path / "a.png").write_bytes(png_bytes("red"))
    (tmp_path / "b.png").write_bytes(png_bytes("blue"))
    tables = {
        "semicolons.csv": 'sep=;\r\n"sample_id";"image";"text"\r\nr;a.png;"red, 1,5 cm"\r\nb;b.png;blue\r\nm;none.png;x\r\n',
        "commas.csv": "sep=,\nsample_id,image,text\nr,a.png,\"red, 1,5 cm\"\nb,b.png,blue\nm,none.png,x\n",
        "tabs.csv": "\ufeffsep=\t\nsample_id\timage\ttext\nr\ta.png\tred, 1,5 cm\nb\tb.png\tblue\nm\tnone.png\tx\n",
        "declared.tsv": "sep=;\nsample_id;image;text\nr;a.png;red, 1,5 cm\nb;b.png;blue\nm;none.png;x\n",
    }
    for name, content in tables.items():
        path = tmp_path / name
        path.write_text(content, encoding="utf-8", newline="")
        check_table_columns(path, check_layout(path))
        result = load_paired_dataset(path)
        assert result.table.select(["sample_id", "text"]).to_pylist() == [
            {"sample_id": "b", "text": "blue"}, {"sample_id": "r", "text": "red, 1,5 cm"}], name
        assert [(r["row"], r["detail"].split(":")[0]) for r in result.rejected.to_pylist()] == [(2, "row 2 (line 5)")], name
    folder = tmp_path / "folder"
    folder.mkdir()
    for image in ("a.png", "b.png"):
        (folder / image).write_bytes((tmp_path / image).read_bytes())
    (folder / "metadata.csv").write_text("sep=;\nfile_name;text\na.png;red, dark\nb.png;blue\n")
    assert sorted(load_paired_dataset(folder).table.column("text").to_pylist()) == ["blue", "red, dark"]


def test_a_csv_with_a_separator_line_names_its_header_line_when_refused(tmp_path):
    """A table that is only ``sep=;`` says it has no header after that line; a header that is not
    valid CSV is named by its line (2, after ``sep=``), as a data row's error is."""
    empty = tmp_path / "empty.csv"
    empty.write_text("sep=;\n")
    with pytest.raises(ValueError, match=r"empty\.csv'? is empty \(no header row after its separator line \(line 1: sep=;\)\)"):
        load_paired_dataset(empty)
    tabs = tmp_path / "tabs.csv"
    tabs.write_text("sep=\t\n")
    with pytest.raises(ValueError, match=r"no header row after its separator line \(line 1: sep=<tab>\)"):
        load_paired_dataset(tabs)
    bad = tmp_path / "bad.csv"
    bad.write_text('sep=;\n"image"x;text\na.png;red\n')
    with pytest.raises(ValueError, match=r"bad\.csv'? is not valid CSV at its header \(line 2\): "):
        load_paired_dataset(bad)


def test_a_semicolon_csv_whose_quoted_header_holds_a_comma_is_read_at_semicolons(tmp_path):
    """``image;"caption, en"`` read at commas is ``['image;"caption', ' en"']``: quotes inside
    unquoted fields, which no CSV writer makes; at semicolons it is two clean fields, every comma
    inside quotes. Such a header is read at semicolons (it was refused, "lacks required column(s)");
    one with a comma outside quotes stays comma-separated, as ever."""
    from tasks.data.sources import check_layout, check_table_columns

    (tmp_path / "a.png").write_bytes(png_bytes("red"))
    (tmp_path / "b.png").write_bytes(png_bytes("blue"))
    columns = ColumnMap(text="caption, en")
    for header in ('image;"caption, en"', '"caption, en";image', '"image";"caption, en";"note, 2"'):
        path = tmp_path / "pairs.csv"
        names = next(csv.reader([header], delimiter=";"))
        fields = {"image": ("a.png", "b.png"), "caption, en": ('"red, dark"', "blue")}
        lines = [";".join(fields.get(name, ("x", "y"))[i] for name in names) for i in range(2)]
        path.write_text("\n".join([header, *lines]) + "\n")
        check_table_columns(path, check_layout(path), "image", "caption, en")
        assert sorted(load_paired_dataset(path, columns=columns).table.column("text").to_pylist()) == ["blue", "red, dark"], header
    path.write_text('image,text;"caption, en"\na.png,red\n')  # a comma outside quotes: read at commas
    with pytest.raises(ValueError, match=r"lacks required column\(s\) \['caption, en'\]; it has \['image', 'text;\"caption', 'en\"'\]"):
        load_paired_dataset(path, columns=columns)


def test_a_csv_whose_one_column_header_holds_a_line_break_is_refused_as_a_table(tmp_path):
    """Looking for semicolons in a header of one quoted name holding a line break raised a raw
    ``_csv.Error`` ("new-line character seen in unquoted field") out of the load; it is read at
    commas, as a header that is not a semicolon one, and refused for its columns."""
    path = tmp_path / "pairs.csv"
    path.write_text('"image\nname"\na.png\n')
    with pytest.raises(ValueError, match=r"pairs\.csv'? lacks required column\(s\) \['image', 'text'\]"):
        load_paired_dataset(path)


def test_a_csv_whose_header_opens_a_quote_never_closed_is_refused_as_csv(tmp_path):
    """Looking for the separator reads the header record: a stray quote at its start reads on to
    the end of the file, and past 64 MiB Python's csv raised "field larger than field limit" out
    of that look, a raw ``_csv.Error`` where the table's reader said "is not valid CSV"."""
    path = tmp_path / "pairs.csv"
    path.write_bytes(b'"image,text\na.png,' + b"x" * (64 << 20) + b"\n")
    with pytest.raises(ValueError, match=r"pairs\.csv'? is not valid CSV at its header \(line 1\): field larger than field limit"):
        load_paired_dataset(path)


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
