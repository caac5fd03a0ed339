"""JSON Lines tables that pyarrow's reader refuses whole (tasks.data.json_lines): a lone UTF-16
surrogate rejects its row alone, a key that is not read does not matter, and what does make the
file unreadable is named with its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.data.sources import ColumnMap
from tasks.data.tables import LoadResult, load_paired_dataset
from tests.tasks.data.sample_images import png_bytes


def rejected(result: LoadResult) -> list[tuple[int | None, str | None, str, str]]:
    return [(r["row"], r["sample_id"], r["reason"], r["detail"]) for r in result.rejected.to_pylist()]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name in ("red", "blue", "green"):
        (tmp_path / f"{name}.png").write_bytes(png_bytes(name))
    return tmp_path


def test_a_caption_with_a_lone_surrogate_rejects_its_row_only_naming_its_line(folder: Path) -> None:
    """One caption with ``"\\ud800"`` (an emoji cut in half by a scraper) failed the whole file with
    pyarrow's "The surrogate pair in string is invalid. in row 1", naming neither the line nor the
    key; as in every other JSON layout it is that row's ``text_not_utf8``, the rest loads."""
    (folder / "pairs.jsonl").write_text('{"image": "red.png", "text": "a red square", "sample_id": "r"}\n'
                                        '{"image": "blue.png", "text": "bad \\ud800 half", "sample_id": "b"}\n'
                                        '\n'
                                        '{"image": "green.png", "text": "a green square", "sample_id": "g"}\n')
    result = load_paired_dataset(folder / "pairs.jsonl")
    assert result.table.column("sample_id").to_pylist() == ["g", "r"]
    assert rejected(result) == [(1, "b", "text_not_utf8", "row 1 (line 2): caption holds a lone UTF-16 surrogate "
                                 "(U+D800 at character 4: half of a character cut off?), not text")]


def test_a_lone_surrogate_in_an_id_or_image_path_rejects_its_row_and_in_a_key_not_read_nothing(folder: Path) -> None:
    (folder / "pairs.jsonl").write_text('{"image": "red.png", "text": "red", "sample_id": "r", "note": "\\udc00"}\n'
                                        '{"image": "blue.png", "text": "blue", "sample_id": "b\\udc00"}\n'
                                        '{"image": "gr\\ud83deen.png", "text": "green", "sample_id": "g"}\n'
                                        '{"image": "green.png", "text": "green", "sample_id": "g2", "image_id": "\\ud83d"}\n'
                                        '{"image": "blue.png", "text": "a blue square", "sample_id": "b2"}\n')
    result = load_paired_dataset(folder / "pairs.jsonl")
    assert result.table.column("sample_id").to_pylist() == ["b2", "r"]
    assert [(row, sample_id, reason) for row, sample_id, reason, _ in rejected(result)] == [
        (1, None, "sample_id_unsafe"), (2, "g", "image_missing"), (3, "g2", "image_id_unsafe")]
    details = [detail for *_, detail in rejected(result)]
    assert details[0].startswith("row 1 (line 2): sample_id holds a lone UTF-16 surrogate (U+DC00 at character 1")
    assert details[1].startswith("row 2 (line 3): image path holds a lone UTF-16 surrogate (U+D83D at character 2")
    assert details[2].startswith("row 3 (line 4): image_id holds a lone UTF-16 surrogate (U+D83D at character 0")


def test_a_line_that_is_not_utf8_rejects_its_row_only_naming_its_line_and_byte(folder: Path) -> None:
    """Bytes that are not UTF-8 (a Latin-1 caption) in one line made the whole file unreadable
    ("line 2 is not UTF-8 text") once pyarrow had refused it for another line (here a lone
    surrogate); pyarrow's own reading rejects such a row alone. Now the line-by-line reader does
    too, wherever a read value holds the bytes, naming the line and the byte; in a key not read
    they are ignored."""
    lines = [b'{"image": "red.png", "text": "caf\xe9 au lait", "sample_id": "r"}',
             b'{"image": "blue.png", "text": "blue", "sample_id": "b\xff"}',
             b'{"image": "green.png", "text": "green", "sample_id": "g", "image_id": "\xc3"}',
             b'{"image": "gr\xe9en.png", "text": "green", "sample_id": "g2"}',
             b'{"image": "blue.png", "text": "half \\ud800", "sample_id": "b2"}',  # what pyarrow refuses the file for
             b'{"image": "red.png", "text": "a red square", "sample_id": "r2", "note": "\xe9t\xe9"}',
             b'{"image": "green.png", "text": "a green square", "sample_id": "g3"}']
    (folder / "pairs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    result = load_paired_dataset(folder / "pairs.jsonl")
    assert result.table.column("sample_id").to_pylist() == ["g3", "r2"]
    assert rejected(result) == [
        (0, "r", "text_not_utf8", "row 0 (line 1): caption is not valid UTF-8 (invalid continuation byte at byte 3)"),
        (1, None, "sample_id_unsafe", "row 1 (line 2): sample_id 'b\\\\xff' is not UTF-8 text (invalid start byte at byte 1)"),
        (2, "g", "image_id_unsafe", "row 2 (line 3): image_id '\\\\xc3' is not UTF-8 text (unexpected end of data at byte 0)"),
        (3, "g2", "image_missing", "row 3 (line 4): image path is not UTF-8 text (invalid continuation byte at byte 2): "
                                   "write the file's name in UTF-8"),
        (4, "b2", "text_not_utf8", "row 4 (line 5): caption holds a lone UTF-16 surrogate (U+D800 at character 5: half "
                                   "of a character cut off?), not text")]
    (folder / "caps.jsonl").write_bytes(b'{"image": "red.png", "text": ["red", "r\xe9d"], "sample_id": "r", "x": 1}\n'
                                        b'{"image": "blue.png", "text": ["blue"], "sample_id": "b", "x": "one"}\n')
    every = load_paired_dataset(folder / "caps.jsonl", columns=ColumnMap(captions="all"), min_valid_rows=1)
    assert every.table.column("sample_id").to_pylist() == ["b-0"]
    assert {(row, reason) for row, _, reason, _ in rejected(every)} == {(0, "text_not_utf8")}


def test_a_lone_surrogate_in_a_list_of_captions_rejects_that_caption(folder: Path) -> None:
    (folder / "caps.jsonl").write_text('{"image": "red.png", "text": ["red", "re\\ud800d"], "sample_id": "r"}\n'
                                       '{"image": "blue.png", "text": ["blue"], "sample_id": "b"}\n')
    every = load_paired_dataset(folder / "caps.jsonl", columns=ColumnMap(captions="all"))
    assert every.table.column("sample_id").to_pylist() == ["b-0", "r-0"]
    assert [(row, sample_id, reason) for row, sample_id, reason, _ in rejected(every)] == [(0, "r-1", "text_not_utf8")]
    assert rejected(every)[0][3].startswith("row 0 (line 1), caption 1: caption holds a lone UTF-16 surrogate")


def test_a_key_not_read_that_changes_type_does_not_block_the_table(folder: Path) -> None:
    """pyarrow refused the file ("Column(/extra) changed from number to string in row 2") for a
    key the dataset never reads."""
    (folder / "pairs.jsonl").write_text('{"image": "red.png", "text": "red", "extra": null}\n'
                                        '{"image": "blue.png", "text": "blue", "extra": 1}\n'
                                        '{"image": "green.png", "text": "green", "extra": "one"}\n')
    assert load_paired_dataset(folder / "pairs.jsonl").n_valid == 3
    assert load_paired_dataset(folder / "pairs.jsonl", n=2).n_valid == 2


@pytest.mark.parametrize(("lines", "message"), [
    ('{"image": "red.png", "text": "re\\ud800d"}\n{"image": \n', r"is not readable JSON Lines \(one object per line\): "
                                                                r"line 2: Expecting value"),
    ('{"image": "red.png", "text": "re\\ud800d"}\n\n[1, 2]\n', r"line 3 is a JSON list, not an object"),
    ('{"image": "red.png", "text": "re\\ud800d"}\n{"image": "blue.png", "text": 3}\n',
     r"key 'text' mixes JSON string \(line 1\) and number \(line 2\) values"),
    ('{"image": "red.png", "text": "red"}\n{"image": "blue.png", "text": ["a"]}\n{"image": "green.png", "text": {"en": "g"}}\n',
     r"key 'text' mixes JSON string \(line 1\) and object \(line 3\) values"),  # a list beside strings is no type error
    (b'{"image": "red.png", "text": "re\\ud800d"}\n{"image": "blue.png", \xe9"text": "x"}\n',
     r"line 2: Expecting property name enclosed in double quotes \(column 23\); the line is not UTF-8 \(invalid "
     r"continuation byte at byte 22 of the line\)"),  # a byte outside a string
])
def test_what_makes_the_file_unreadable_is_named_with_its_line(folder: Path, lines: str | bytes, message: str) -> None:
    path = folder / "bad.jsonl"
    path.write_bytes(lines if isinstance(lines, bytes) else lines.encode("utf-8"))
    with pytest.raises(ValueError, match=r"bad\.jsonl'?:? .*" + message):
        load_paired_dataset(path, min_valid_rows=1)


def test_a_caption_key_mixing_strings_and_lists_loads_a_string_as_a_list_of_one(folder: Path) -> None:
    """pyarrow refuses a caption key that is a string on one line and a list on another, and so did
    the line-by-line reader ("key 'text' mixes JSON string (line 1) and array (line 2) values"): a
    string is now a list of one, whichever ``captions`` policy then applies."""
    (folder / "pairs.jsonl").write_text('{"image": "red.png", "text": "a red square", "sample_id": "r"}\n'
                                        '{"image": "blue.png", "text": ["a blue square", "blue"], "sample_id": "b"}\n'
                                        '{"image": "green.png", "text": "a green square", "sample_id": "g"}\n')
    first = load_paired_dataset(folder / "pairs.jsonl")
    assert sorted(first.table.column("text").to_pylist()) == ["a blue square", "a green square", "a red square"]
    every = load_paired_dataset(folder / "pairs.jsonl", columns=ColumnMap(captions="all"))
    assert every.table.select(["sample_id", "text"]).to_pylist() == [
        {"sample_id": "b-0", "text": "a blue square"}, {"sample_id": "b-1", "text": "blue"},
        {"sample_id": "g-0", "text": "a green square"}, {"sample_id": "r-0", "text": "a red square"}]
    assert load_paired_dataset(folder / "pairs.jsonl", n=2).n_valid == 2



@pytest.mark.parametrize("surrogate", [False, True])
def test_a_list_of_captions_holding_a_non_string_names_its_line_and_item(folder: Path, surrogate: bool) -> None:
    """As in a JSON array of rows (pyarrow refuses the file, then the line-by-line reader, also
    where another line holds a lone surrogate): the line, the key and the item, not "a key mixes
    value types"."""
    lone = r"\ud800" if surrogate else ""
    path = folder / "pairs.jsonl"
    path.write_text(f'{{"image": "red.png", "text": ["red{lone}"]}}\n{{"image": "blue.png", "text": ["blue", [1]]}}\n')
    with pytest.raises(ValueError, match="pairs.jsonl'?: line 2 key 'text' is a list of captions whose item 1 is a JSON "
                                         "array, not a string"):
        load_paired_dataset(path)

def test_an_image_folder_metadata_table_with_a_lone_surrogate_keeps_its_file_name_column(folder: Path) -> None:
    """The metadata table's ``file_name`` column was not found (its first block unreadable), so the
    folder was refused as lacking an ``image`` column."""
    (folder / "metadata.jsonl").write_text('{"file_name": "red.png", "text": "re\\ud800d"}\n'
                                           '{"file_name": "blue.png", "text": "blue"}\n'
                                           '{"file_name": "green.png", "text": "green"}\n')
    result = load_paired_dataset(folder)
    assert result.n_valid == 2
    assert [reason for _, _, reason, _ in rejected(result)] == ["text_not_utf8"]


def test_strings_that_read_as_times_load_as_text_with_or_without_a_line_pyarrow_refuses(folder: Path) -> None:
    """pyarrow's JSON reader takes a key whose strings all read as ISO 8601 times for a timestamp
    column: a table with ids ``2024-01-01`` (days, one image each) was refused ("column 'sample_id'
    has type timestamp[s]") while the same lines beside one bad line (read line by line) loaded. Both
    now load them as the text they are, the same rows with the same ids."""
    good = ('{"image": "red.png", "text": "a red square", "sample_id": "2024-01-01", "image_id": "2024-01-01"}\n'
            '{"image": "blue.png", "text": "a blue square", "sample_id": "2024-01-02", "image_id": "2024-01-02"}\n')
    (folder / "good.jsonl").write_text(good)
    (folder / "bad.jsonl").write_text(good + '{"image": "green.png", "text": "bad \\ud800", "sample_id": "2024-01-03"}\n')
    loaded = [load_paired_dataset(folder / name) for name in ("good.jsonl", "bad.jsonl")]
    for result in loaded:
        assert result.table.select(["sample_id", "text", "image_id"]).to_pylist() == [
            {"sample_id": "2024-01-01", "text": "a red square", "image_id": "2024-01-01"},
            {"sample_id": "2024-01-02", "text": "a blue square", "image_id": "2024-01-02"}]
    assert rejected(loaded[0]) == [] and [r[2] for r in rejected(loaded[1])] == ["text_not_utf8"]
    captions = load_paired_dataset(folder / "good.jsonl", columns=ColumnMap(text="sample_id"))  # dates as captions
    assert sorted(captions.table.column("text").to_pylist()) == ["2024-01-01", "2024-01-02"]


def test_the_keys_of_a_large_table_are_read_without_keeping_its_rows(tmp_path: Path) -> None:
    """The keys of a JSON Lines table pyarrow refuses (a folder's metadata table, ``prh run
    --check``) were found by parsing every line into memory at once (~15 times the file's size);
    they are read one line at a time."""
    import json
    import tracemalloc

    from tasks.data.json_lines import json_lines_keys

    table = tmp_path / "big.jsonl"
    with table.open("w") as handle:
        handle.writelines(json.dumps({"image": f"{i}.png", "text": "a caption " * 10}) + "\n" for i in range(40_000))
        handle.write('{"image": "x.png", "text": "\\ud800", "late_key": 1}\n')
    tracemalloc.start()
    try:
        keys = json_lines_keys(table)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert keys == ["image", "text", "late_key"]
    # a tenth of the file (the old parse held ~15 times it); this process's other threads' Python
    # allocations count in tracemalloc's peak too: 5.5% of the file in a loaded CI run
    assert peak < table.stat().st_size / 10, (peak, table.stat().st_size)


def test_a_large_table_read_line_by_line_holds_a_few_times_its_size(tmp_path: Path) -> None:
    """Read line by line (one lone surrogate), a table kept every line's parsed object, its keys
    not read included, then copies of the read ones, a table of them and two lists of records:
    a peak of ~11 times the file's size for rows of image-text metadata (12 MB: 137 MB; 80 MB:
    ~820 MB), where pyarrow's reading of the same rows holds ~4 times. The lines are kept as Arrow
    a batch at a time, the read keys only: ~3 times (34 MB)."""
    import json

    from tests.tasks.metrics.peak_memory import peak_growth

    table = tmp_path / "big.jsonl"
    with table.open("w") as handle:
        handle.writelines(json.dumps({"image": f"{i}.jpg", "text": f"a photo {i}", "url": f"https://example.com/{i}.jpg",
                                      "width": 640, "height": 480, "similarity": 0.31, "punsafe": 0.01, "pwatermark": 0.2,
                                      "original_width": 1024, "original_height": 768, "status": "success"}) + "\n"
                          for i in range(50_000))  # as img2dataset's metadata: keys not read
        handle.write('{"image": "x.jpg", "text": "\\ud800"}\n')
    setup = ("from pathlib import Path\nfrom tasks.data.json_lines import read_json_lines\n"
             "from tasks.data.sources import ColumnMap")
    growth, rows = peak_growth(setup, f"records = read_json_lines(Path({str(table)!r}), ColumnMap())\n"
                                      "extra.append(len(records))", torch=False)
    assert rows == 50_001
    assert growth < 5 * table.stat().st_size, (growth, table.stat().st_size)


def test_a_table_read_in_batches_is_the_table_read_at_once(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of two lines: a batch without any key read (its rows kept, each reported), a key
    first met in a later batch, null in a whole batch, image structs with different fields,
    captions turned to bytes by a lone surrogate in a later batch, and the key whose values mix
    JSON types across batches named as before."""
    from tasks.data import json_lines

    lines = ['{"note": 1}', '{"note": 2}',
             '{"image": {"path": "red.png"}, "text": "red"}',
             '{"image": {"path": "blue.png"}, "text": null}',
             '{"image": {"bytes": null, "path": "green.png"}, "text": "green", "sample_id": "g", "image_id": null}',
             '{"image": {"path": "red.png"}, "text": "half \\ud800", "sample_id": "r2", "image_id": "i"}',
             '{"image": {"path": "blue.png", "bytes": null}, "text": "blue again", "sample_id": "b2"}']
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    whole = [(r.row, r.origin, r.sample_id, r.image, r.text, r.image_id, r.problem)
             for r in json_lines.read_json_lines(folder / "pairs.jsonl", ColumnMap())]
    monkeypatch.setattr(json_lines, "ROW_BATCH", 2)
    batched = [(r.row, r.origin, r.sample_id, r.image, r.text, r.image_id, r.problem)
               for r in json_lines.read_json_lines(folder / "pairs.jsonl", ColumnMap())]
    assert batched == whole
    assert [origin for _, origin, *_ in batched] == [f"row {row} (line {row + 1})" for row in range(7)]
    assert [text for *_, text, _, _ in batched] == [None, None, b"red", None, b"green",
                                                    "half \ud800".encode("utf-8", "surrogatepass"), b"blue again"]
    assert [sample_id for _, _, sample_id, *_ in batched] == ["", "", "", "", "g", "r2", "b2"]
    assert [image for _, _, _, image, *_ in batched] == [None, None, "red.png", "blue.png", "green.png", "red.png", "blue.png"]
    (folder / "mixed.jsonl").write_text('{"image": "red.png", "text": "re\\ud800d", "sample_id": 1}\n'
                                        '{"image": "blue.png", "text": "blue", "sample_id": 2}\n'
                                        '{"image": "green.png", "text": "green", "sample_id": "g"}\n')
    with pytest.raises(ValueError, match=r"mixed\.jsonl': key 'sample_id' mixes JSON number \(line 1\) and string "
                                         r"\(line 3\) values"):
        json_lines.read_json_lines(folder / "mixed.jsonl", ColumnMap())


def test_a_limit_reads_no_line_after_it(tmp_path: Path) -> None:
    """With ``n`` (a limit), the lines after the first ``n`` rows are not read: one that does not
    parse there does not matter."""
    from tasks.data.json_lines import read_json_lines

    table = tmp_path / "head.jsonl"
    table.write_text('{"image": "a.png", "text": "re\\ud800d"}\n{"image": "b.png", "text": "blue"}\nnot json\n')
    assert [record.origin for record in read_json_lines(table, ColumnMap(), limit=2)] == ["row 0 (line 1)", "row 1 (line 2)"]
    with pytest.raises(ValueError, match="line 3"):
        read_json_lines(table, ColumnMap(), limit=3)


def test_a_table_that_starts_with_a_byte_order_mark_is_read_line_by_line_from_its_first_line(folder: Path) -> None:
    """A UTF-8 BOM (Windows editors write one) before the first object: pyarrow reads such a file,
    and so does the line-by-line reader that takes over for a lone surrogate, first row included."""
    (folder / "pairs.jsonl").write_text('\ufeff{"image": "red.png", "text": "a red square", "sample_id": "r"}\n'
                                        '{"image": "blue.png", "text": "bad \\ud800 half", "sample_id": "b"}\n',
                                        encoding="utf-8")
    result = load_paired_dataset(folder / "pairs.jsonl", min_valid_rows=1)
    assert result.table.column("sample_id").to_pylist() == ["r"]
    assert [(row, reason) for row, _, reason, _ in rejected(result)] == [(1, "text_not_utf8")]


def test_lines_ended_by_a_lone_cr_are_read_line_by_line_as_pyarrow_reads_them(folder: Path) -> None:
    """Lines ended by a lone CR (classic Mac OS), mixed with LF and CRLF: pyarrow reads such a
    table, but beside one line it refuses (a lone surrogate) the line-by-line reader took the CR
    for part of a line and refused the whole file ("line 1: Extra data"). Lines are numbered as an
    editor counts them."""
    rows = [b'{"image": "red.png", "text": "red", "sample_id": "r"}', b'{"image": "blue.png", "text": "blue", "sample_id": "b"}',
            b'{"image": "green.png", "text": "green", "sample_id": "g"}']
    (folder / "good.jsonl").write_bytes(rows[0] + b"\r" + rows[1] + b"\r\n" + rows[2] + b"\n")
    (folder / "bad.jsonl").write_bytes(rows[0] + b"\r\r" + rows[1] + b"\r\n" + rows[2] + b"\n"
                                       + b'{"image": "red.png", "text": "half \\ud800", "sample_id": "h"}\r')
    good, bad = (load_paired_dataset(folder / name) for name in ("good.jsonl", "bad.jsonl"))
    assert good.table.column("sample_id").to_pylist() == bad.table.column("sample_id").to_pylist() == ["b", "g", "r"]
    assert [(row, reason, detail.split(":")[0]) for row, _, reason, detail in rejected(bad)] == [
        (3, "text_not_utf8", "row 3 (line 5)")]


def test_a_cr_inside_a_row_is_whitespace_as_pyarrow_reads_it(folder: Path) -> None:
    """A CR between the tokens of one row (JSON whitespace: a writer that breaks an object's lines
    with CR) is read by pyarrow, and was by the line-by-line reader until it cut every line at a
    lone CR: beside one line pyarrow refuses, the file was refused ("line 1: Expecting property
    name"). A CR ends a line only between rows; rows are numbered by the line they start on, as an
    editor counts lines (LF, CRLF or a lone CR); two rows with no line break between them stay
    refused."""
    rows = [b'{"image": "red.png",\r "text": "red", "sample_id": "r"}', b'{"image": "blue.png", "text": "blue", "sample_id": "b"}',
            b'{"image": "green.png", "text": "half \\ud800", "sample_id": "h"}']
    (folder / "good.jsonl").write_bytes(rows[0] + b"\r" + rows[1] + b"\n")
    (folder / "bad.jsonl").write_bytes(rows[0] + b"\r" + rows[1] + b"\r\n" + rows[2] + b"\n")
    good, bad = (load_paired_dataset(folder / name, min_valid_rows=1) for name in ("good.jsonl", "bad.jsonl"))
    assert good.table.column("sample_id").to_pylist() == bad.table.column("sample_id").to_pylist() == ["b", "r"]
    assert [(row, reason, detail.split(":")[0]) for row, _, reason, detail in rejected(bad)] == [
        (2, "text_not_utf8", "row 2 (line 4)")]
    (folder / "two.jsonl").write_bytes(rows[1] + b" " + rows[0] + b"\n" + rows[2] + b"\n")
    with pytest.raises(ValueError, match=r"two\.jsonl'? is not readable JSON Lines \(one object per line\): line 1: "
                                         r"Extra data \(column 57\)"):
        load_paired_dataset(folder / "two.jsonl", min_valid_rows=1)


@pytest.mark.parametrize("layout, message", [
    (b'{"image": "red.png", "text": "red"} {"image": "green.png", "text": "green"}\n', r"line 2: Extra data \(column 37\)"),
    (b'{"image": "red.png", "text": "red"}{"image": "green.png", "text": "green"}\n', r"line 2: Extra data \(column 36\)"),
    (b'{"image": "red.png",\n "text": "red"}\n', r"line 2: Expecting property name enclosed in double quotes"),
    (b'{"image": "red.png",\r\n "text": "red"}\n', r"line 2: Expecting property name enclosed in double quotes"),
])
def test_rows_not_one_per_line_are_refused_whichever_reader_reads_the_file(folder: Path, layout: bytes, message: str
                                                                          ) -> None:
    """JSON Lines holds one object per line. Two rows on one line, or a row broken over lines,
    were read by pyarrow's reader (the second only while the file fits one read block) and refused
    by the line-by-line reader: the same rows loaded, or made the file unreadable beside one line
    with a lone surrogate elsewhere. Both now refuse them, naming the line, with or without a
    ``limit`` that covers them."""
    first = b'{"image": "blue.png", "text": "blue"}\n'
    surrogate = b'{"image": "blue.png", "text": "half \\ud800"}\n'
    for name, data in (("plain.jsonl", first + layout), ("with_surrogate.jsonl", first + layout + surrogate)):
        (folder / name).write_bytes(data)
        for limit in (None, 3):
            with pytest.raises(ValueError, match=rf"{name}'? is not readable JSON Lines \(one object per line\): {message}.* "
                                                 r"\(line 2 holds a row that does not stand alone on its line: two "
                                                 r"objects on one line, or one broken over lines"):
                load_paired_dataset(folder / name, n=limit, min_valid_rows=1)


def test_an_image_folder_metadata_table_with_a_line_that_is_not_json_is_named_with_its_line(folder: Path) -> None:
    """Finding the metadata table's columns reads every line when pyarrow refuses the file; a line
    that is not JSON leaves that to the table's reader, which names the line."""
    (folder / "metadata.jsonl").write_text('{"file_name": "red.png", "text": "red"}\n{"file_name": \n')
    with pytest.raises(ValueError, match=r"metadata\.jsonl'? is not readable JSON Lines \(one object per line\): line 2"):
        load_paired_dataset(folder, min_valid_rows=1)


def test_a_lone_surrogate_at_either_end_of_the_surrogate_range_is_named(folder: Path) -> None:
    """U+D800 and U+DFFF are surrogates as much as U+D83D: the detail names the one found (not the
    private-use U+E000 before it, which is text)."""
    (folder / "pairs.jsonl").write_text('{"image": "red.png", "text": "red", "sample_id": "r\\ud800"}\n'
                                        '{"image": "blu\\ue000\\udfffe.png", "text": "blue", "sample_id": "b"}\n'
                                        '{"image": "green.png", "text": "green", "sample_id": "g"}\n')
    details = [detail for *_, detail in rejected(load_paired_dataset(folder / "pairs.jsonl", min_valid_rows=1))]
    assert [detail.split(": half")[0] for detail in details] == [
        "row 0 (line 1): sample_id holds a lone UTF-16 surrogate (U+D800 at character 1",
        "row 1 (line 2): image path holds a lone UTF-16 surrogate (U+DFFF at character 4"]
