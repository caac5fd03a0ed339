"""load_paired_dataset on CSV, Parquet and folder datasets with every kind of bad row."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.data.openmoji import build_openmoji_pairs
from tasks.data.schema import DATASET_SCHEMA, validate_table
from tasks.data.sources import ColumnMap, check_layout, check_table_columns, folder_id
from tasks.data.tables import REJECTED_SCHEMA, LoadResult, load_paired_dataset
from tests.tasks.data.sample_images import png_bytes, truncated_png

RED, BLUE, GREEN = png_bytes("red"), png_bytes("blue"), png_bytes("green")


def rejections(result: LoadResult) -> list[tuple[int | None, str | None, str]]:
    return [(r["row"], r["sample_id"], r["reason"]) for r in result.rejected.to_pylist()]


def rows(result: LoadResult) -> list[tuple[str, str, str]]:
    return [(r["sample_id"], r["text"], r["image_id"]) for r in result.table.to_pylist()]


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """tmp/data/ with images (good, truncated, empty) and tmp/secret.png outside it."""
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    (root / "img" / "red.png").write_bytes(RED)
    (root / "img" / "blue.png").write_bytes(BLUE)
    (root / "img" / "green.png").write_bytes(GREEN)
    (root / "img" / "truncated.png").write_bytes(truncated_png())
    (root / "img" / "zero.png").write_bytes(b"")
    (tmp_path / "secret.png").write_bytes(RED)
    return root


# -------------------------------------------------------------------------------------------- CSV

CSV_WITH_BAD_ROWS = (
    "sample_id,image,text\n"
    "r1,img/red.png,a red square\n"  # row 0: ok
    "b1,img/blue.png,  a blue square  \n"  # row 1: ok, caption stripped
    "t1,img/truncated.png,truncated\n"  # row 2
    "z1,img/zero.png,zero bytes\n"  # row 3
    "e1,img/green.png,   \n"  # row 4: whitespace-only caption
    "r1,img/green.png,same id again\n"  # row 5: duplicate of row 0
    "p1,../secret.png,escapes\n"  # row 6
    "p2,img/../../secret.png,escapes too\n"  # row 7
    "m1,img/missing.png,no such file\n"  # row 8
    "bad id,img/red.png,unsafe id\n"  # row 9
    ",img/red.png,no id\n"  # row 10
    "g1,img/green.png,\"a green square,\nquoted over two lines\"\n"  # row 11: ok
    "r1,img/red.png,third copy\n"  # row 12: duplicate of row 0
    "short,img/red.png\n"  # row 13: too few fields
)


def test_csv_reports_every_bad_row(image_dir: Path) -> None:
    path = image_dir / "pairs.csv"
    path.write_text(CSV_WITH_BAD_ROWS, encoding="utf-8")
    result = load_paired_dataset(str(path))

    assert rows(result) == [
        ("b1", "a blue square", "b1"),
        ("g1", "a green square,\nquoted over two lines", "g1"),
        ("r1", "a red square", "r1"),
    ]
    assert result.table.column("image").to_pylist() == [BLUE, GREEN, RED]
    assert rejections(result) == [
        (2, "t1", "image_unreadable"),
        (3, "z1", "image_empty"),
        (4, "e1", "text_empty"),
        (5, "r1", "sample_id_duplicate"),
        (6, "p1", "image_path_unsafe"),
        (7, "p2", "image_path_unsafe"),
        (8, "m1", "image_missing"),
        (9, "bad id", "sample_id_unsafe"),
        (10, "", "sample_id_empty"),
        (12, "r1", "sample_id_duplicate"),
        (13, None, "row_malformed"),
    ]
    assert result.summary() == {
        "image_empty": 1,
        "image_missing": 1,
        "image_path_unsafe": 2,
        "image_unreadable": 1,
        "row_malformed": 1,
        "sample_id_duplicate": 2,
        "sample_id_empty": 1,
        "sample_id_unsafe": 1,
        "text_empty": 1,
    }
    assert (result.n_valid, result.n_rejected) == (3, 11)
    assert result.rejected.schema == REJECTED_SCHEMA
    details = result.rejected.column("detail").to_pylist()
    assert "already used by row 0" in details[3]
    assert "outside the dataset folder" in details[4]
    report = result.report()
    assert "3 valid row(s), 11 rejected" in report and "sample_id_duplicate: 2 (r1, r1)" in report
    validate_table(result.table)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('img/red.png,"a red square\nimg/blue.png,a blue square\nimg/green.png,a green square\n',
         r"quoted field of the record starting on line 3 is never closed"),
        ('img/red.png,"a red square\nimg/blue.png,"a blue" square\nimg/green.png,a green square\n',
         r"near line 4: ',' expected after '\"'"),
    ],
    ids=["open-to-the-end", "closed-by-a-later-quote"],
)
def test_csv_quote_left_open_refuses_the_file_instead_of_swallowing_rows(image_dir: Path, content: str, message: str) -> None:
    path = image_dir / "pairs.csv"
    path.write_text("image,text\nimg/green.png,first\n" + content, encoding="utf-8")
    with pytest.raises(ValueError, match=r"pairs\.csv' is not valid CSV.*" + message):
        load_paired_dataset(path)


def test_windows_separators_in_image_paths(image_dir: Path) -> None:
    path = image_dir / "pairs.csv"
    path.write_text("sample_id,image,text\na,img\\red.png,red\nb,img/blue.png,blue\nc,img\\none.png,none\nd,..\\img\\red.png,up\n",
                    encoding="utf-8")
    result = load_paired_dataset(path)
    assert [(r["sample_id"], r["image"]) for r in result.table.to_pylist()] == [("a", RED), ("b", BLUE)]
    assert rejections(result) == [(2, "c", "image_missing"), (3, "d", "image_path_unsafe")]
    assert "image file 'img\\\\none.png' does not exist" in result.rejected.column("detail").to_pylist()[0]


def test_csv_non_utf8_caption_rejects_only_its_row(image_dir: Path) -> None:
    path = image_dir / "pairs.csv"
    path.write_bytes(
        b"\xef\xbb\xbfimage,text,sample_id\n"  # byte-order mark; columns in any order
        b"img/red.png,caf\xc3\xa9,a\n"
        b"img/blue.png,caf\xe9 latin-1,b\n"
        b"img/green.png,green,c\n"
        b"img/green.png,green,\xff\xfe\n"
    )
    result = load_paired_dataset(path)
    assert rows(result) == [("a", "café", "a"), ("c", "green", "c")]
    assert rejections(result) == [(1, "b", "text_not_utf8"), (3, "\\xff\\xfe", "sample_id_unsafe")]


def test_tsv_and_blank_lines(image_dir: Path) -> None:
    path = image_dir / "pairs.tsv"
    path.write_text("image\ttext\nimg/red.png\tred, with a comma\n\nimg/blue.png\tblue\n", encoding="utf-8")
    result = load_paired_dataset(path)
    assert sorted(result.table.column("text").to_pylist()) == ["blue", "red, with a comma"]
    assert result.n_rejected == 0


# ---------------------------------------------------------------------------------------- Parquet


def write_parquet(path: Path, columns: dict[str, list], types: dict[str, pa.DataType]) -> Path:
    pq.write_table(pa.table({name: pa.array(values, types[name]) for name, values in columns.items()}), path)
    return path


def test_parquet_bytes_with_bad_rows(tmp_path: Path) -> None:
    path = write_parquet(
        tmp_path / "pairs.parquet",
        {
            "sample_id": ["a", "b", "c", "d", "e", "f", None, "h", "a", "a", "i.j-k_L", "m", "n"],
            "image": [RED, BLUE, truncated_png(), b"", None, GREEN, GREEN, GREEN, BLUE, RED, GREEN, RED, BLUE],
            "text": [b"red", b"blue", b"x", b"x", b"x", b"\t\n", b"x", b"\xc3(", b"dup", b"dup2", b"green", None, b"n"],
            "image_id": [None, None, None, None, None, None, None, None, None, None, None, "img-a", "img/n"],
        },
        {"sample_id": pa.string(), "image": pa.binary(), "text": pa.binary(), "image_id": pa.string()},
    )
    result = load_paired_dataset(path)
    assert rows(result) == [("a", "red", "a"), ("b", "blue", "b"), ("i.j-k_L", "green", "i.j-k_L")]
    assert rejections(result) == [
        (2, "c", "image_unreadable"),
        (3, "d", "image_empty"),
        (4, "e", "image_missing"),
        (5, "f", "text_empty"),
        (6, "", "sample_id_empty"),
        (7, "h", "text_not_utf8"),
        (8, "a", "sample_id_duplicate"),
        (9, "a", "sample_id_duplicate"),
        (11, "m", "text_empty"),
        (12, "n", "image_id_unsafe"),
    ]


def test_parquet_paths_relative_to_the_table(image_dir: Path) -> None:
    path = write_parquet(
        image_dir / "pairs.pq",
        {
            "sample_id": [1, 2, 3, 4],
            "image": ["img/red.png", "./img/blue.png", "../secret.png", "/etc/hostname"],
            "text": ["red", "blue", "secret", "absolute"],
        },
        {"sample_id": pa.int64(), "image": pa.string(), "text": pa.string()},
    )
    result = load_paired_dataset(path)
    assert rows(result) == [("1", "red", "1"), ("2", "blue", "2")]
    assert rejections(result) == [(2, "3", "image_path_unsafe"), (3, "4", "image_path_unsafe")]


def test_parquet_hugging_face_image_struct(image_dir: Path) -> None:
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    path = write_parquet(
        image_dir / "hf.parquet",
        {
            "image": [{"bytes": RED, "path": None}, {"bytes": None, "path": "img/blue.png"}, None],
            "text": ["red", "blue", "nothing"],
            "sample_id": ["x", "y", "z"],
        },
        {"image": image_type, "text": pa.string(), "sample_id": pa.string()},
    )
    result = load_paired_dataset(path)
    assert result.table.column("image").to_pylist() == [RED, BLUE]
    assert rejections(result) == [(2, "z", "image_missing")]


def derived_id(image: bytes, text: str) -> str:
    return "pair-" + hashlib.sha256(hashlib.sha256(image).digest() + text.encode()).hexdigest()[:16]


def test_derived_ids_are_content_hashes_and_image_ids_group_identical_images(tmp_path: Path) -> None:
    images = [RED, BLUE, RED, BLUE, GREEN]
    texts = ["red", "blue", "scarlet", "blue", "green"]  # row 3 repeats row 1 exactly
    types = {"image": pa.binary(), "text": pa.string()}
    forward = load_paired_dataset(write_parquet(tmp_path / "f.parquet", {"image": images, "text": texts}, types))
    backward = load_paired_dataset(
        write_parquet(tmp_path / "b.parquet", {"image": images[::-1], "text": texts[::-1]}, types)
    )

    expected_ids = {derived_id(i, t) for i, t in zip(images, texts)}
    assert set(forward.table.column("sample_id").to_pylist()) == expected_ids
    assert len(expected_ids) == 4
    assert forward.table.equals(backward.table)  # row order does not change the dataset
    assert rejections(forward) == [(3, derived_id(BLUE, "blue"), "sample_id_duplicate")]
    assert rejections(backward) == [(3, derived_id(BLUE, "blue"), "sample_id_duplicate")]

    red_ids = sorted([derived_id(RED, "red"), derived_id(RED, "scarlet")])
    image_id = dict(zip(forward.table.column("sample_id").to_pylist(), forward.table.column("image_id").to_pylist()))
    assert image_id[red_ids[0]] == image_id[red_ids[1]] == red_ids[0]
    assert image_id[derived_id(GREEN, "green")] == derived_id(GREEN, "green")


def test_given_image_ids_must_name_one_image(tmp_path: Path) -> None:
    path = write_parquet(
        tmp_path / "p.parquet",
        {
            "sample_id": ["c1", "c2", "c3", "d1", "plain"],
            "image": [RED, RED, BLUE, GREEN, GREEN],
            "text": ["one", "two", "three", "four", "five"],
            "image_id": ["cat", "cat", "cat", "", None],
        },
        {"sample_id": pa.string(), "image": pa.binary(), "text": pa.string(), "image_id": pa.string()},
    )
    result = load_paired_dataset(path)
    # "" and null mean "not given": identical bytes then share the smallest sample_id.
    assert rows(result) == [("c1", "one", "cat"), ("c2", "two", "cat"), ("d1", "four", "d1"), ("plain", "five", "d1")]
    assert rejections(result) == [(2, "c3", "image_id_conflict")]


def test_two_caption_files_of_one_name_are_reported_not_dropped(tmp_path: Path) -> None:
    """cat.txt beside cat.TXT (a case-sensitive file system): the second was silently ignored."""
    root = tmp_path / "folder"
    root.mkdir()
    for name, data in {"cat.png": RED, "cat.TXT": b"UPPER caption", "cat.txt": b"a cat", "dog.png": BLUE,
                       "dog.txt": b"a dog"}.items():
        (root / name).write_bytes(data)
    result = load_paired_dataset(root)
    assert rows(result) == [("cat", "UPPER caption", "cat"), ("dog", "a dog", "dog")]  # the first by name
    assert rejections(result) == [(None, "cat", "sample_id_duplicate")]
    assert result.rejected.column("detail").to_pylist()[0].endswith("cat.txt has the same name as cat.TXT")


def test_a_partly_filled_image_id_column_keeps_one_id_per_image(tmp_path: Path) -> None:
    """Rows without an image_id take the id other rows give the same bytes: one picture was two
    images (its own sample id beside the given id), doubling its vision rows under unit: image."""
    path = write_parquet(
        tmp_path / "p.parquet",
        {
            "sample_id": ["a1", "a2", "b1", "b2", "c1"],
            "image": [RED, RED, BLUE, BLUE, GREEN],
            "text": ["cat", "dog", "one", "two", "three"],
            "image_id": ["img0", None, "", "zeta", None],
        },
        {"sample_id": pa.string(), "image": pa.binary(), "text": pa.string(), "image_id": pa.string()},
    )
    result = load_paired_dataset(path)
    assert rows(result) == [("a1", "cat", "img0"), ("a2", "dog", "img0"), ("b1", "one", "zeta"), ("b2", "two", "zeta"),
                            ("c1", "three", "c1")]
    assert rejections(result) == []



@pytest.mark.parametrize("order", [1, -1])
def test_an_image_without_a_given_id_never_takes_the_id_another_image_is_given(tmp_path: Path, order: int) -> None:
    """A row without an image_id whose own sample id is an image id given to other bytes (sample
    ``y``, image ``B``; the image id ``y`` given to image ``A``) was rejected as ``image_id_conflict``
    ("image_id 'y' already names a different image"), an id it never gave; in the other row order
    the row that gave ``y`` was rejected instead. Such an image takes ``image-`` and 16 hex digits
    of its SHA-256, whatever the order, and every row is kept."""
    columns = {"sample_id": ["x", "y", "z"], "image": [RED, BLUE, GREEN], "text": ["a", "b", "c"], "image_id": ["y", None, None]}
    path = write_parquet(tmp_path / "p.parquet", {k: v[::order] for k, v in columns.items()},
                         {"sample_id": pa.string(), "image": pa.binary(), "text": pa.string(), "image_id": pa.string()})
    result = load_paired_dataset(path)
    assert rejections(result) == []
    assert rows(result) == [("x", "a", "y"), ("y", "b", "image-" + hashlib.sha256(BLUE).hexdigest()[:16]), ("z", "c", "z")]


# ----------------------------------------------------------------------------------------- folder


def test_folder_of_images_and_captions(tmp_path: Path) -> None:
    root = tmp_path / "folder"
    root.mkdir()
    files: dict[str, bytes] = {
        "cat.png": RED, "cat.txt": b"  a cat  \n",
        "dog.png": BLUE, "dog.txt": b"a dog\n\n  a brown dog\r\nthe dog\n   \n",
        "lonely.png": GREEN,
        "orphan.txt": b"no image here",
        "broken.png": truncated_png(), "broken.txt": b"broken",
        "zero.png": b"", "zero.txt": b"zero",
        "blank.png": GREEN, "blank.txt": b" \n\t\n",
        "latin.png": GREEN, "latin.txt": "caf\u00e9".encode("latin-1"),
        "twin.png": GREEN, "twin.jpg": RED, "twin.txt": b"twin",
        "has space.png": GREEN, "has space.txt": b"space",
        "bom.png": GREEN, "bom.txt": "\ufeffwith BOM".encode(),
        ".hidden.png": RED, "notes.md": b"ignored",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    (tmp_path / "secret.png").write_bytes(RED)
    os.symlink(tmp_path / "secret.png", root / "link.png")
    (root / "link.txt").write_bytes(b"link")
    (root / "subdir").mkdir()

    # a .txt of several lines is a list of captions: the first by default, like a table's list
    assert rows(load_paired_dataset(root))[2] == ("dog", "a dog", "dog")
    result = load_paired_dataset(root, columns=ColumnMap(captions="all"))
    assert rows(result) == [
        ("bom", "with BOM", "bom"),
        ("cat", "a cat", "cat"),
        ("dog-0", "a dog", "dog"),
        ("dog-1", "a brown dog", "dog"),
        ("dog-2", "the dog", "dog"),
        (folder_id("has space"), "space", "bom"),  # a safe id with a digest of the name; green.png's bytes, as bom.png
        ("twin", "twin", "cat"),  # twin.jpg has the same bytes as cat.png: one image
    ]
    assert rows(load_paired_dataset(root))[:2] + rows(load_paired_dataset(root))[3:] == rows(result)[:2] + rows(result)[5:]
    assert folder_id("has space") == "has_space-" + hashlib.sha256(b"has space").hexdigest()[:8]
    assert result.table.column("image").to_pylist() == [GREEN, RED, BLUE, BLUE, BLUE, GREEN, RED]
    assert rejections(result) == [
        (None, "blank", "text_empty"),
        (None, "broken", "image_unreadable"),
        (None, "latin", "text_not_utf8"),
        (None, "link", "image_path_unsafe"),
        (None, "lonely", "text_missing"),
        (None, "orphan", "image_missing"),
        (None, "twin", "sample_id_duplicate"),
        (None, "zero", "image_empty"),
    ]
    assert "twin.png has the same name as twin.jpg" in result.rejected.column("detail").to_pylist()[6]
    with pytest.raises(ValueError, match=r"is a folder of images with \.txt captions, which has no columns: image_column / "
                                         r"text_column \('image', 'caption'\) apply to tables"):
        load_paired_dataset(root, columns=ColumnMap(text="caption"))


def test_a_folder_reads_the_image_suffixes_pillow_reads_and_names_one_it_does_not(tmp_path: Path) -> None:
    """The data hunt: `photo.jfif` + `photo.txt` (and `.avif`, where this Pillow reads it)
    were rejected as "caption file photo.txt has no image file named photo.*", the image beside it."""
    import io

    from PIL import Image

    Image.init()
    avif = "AVIF" in Image.SAVE  # Pillow 10.4 neither reads nor writes AVIF (11.3 does)
    root = tmp_path / "folder"
    root.mkdir()
    files = {"red.png": RED, "blue.png": BLUE, "photo.jfif": None, "pic.avif": None, "odd.heic": b"x", "side.json": b"{}"}
    for name, data in {k: v for k, v in files.items() if avif or k != "pic.avif"}.items():
        if data is None:
            buffer = io.BytesIO()
            Image.new("RGB", (16, 16), (0, 200, 0)).save(buffer, "JPEG" if name.endswith(".jfif") else "AVIF")
            data = buffer.getvalue()
        (root / name).write_bytes(data)
        (root / f"{name.split('.')[0]}.txt").write_bytes(name.encode())
    result = load_paired_dataset(root)
    assert sorted(r["sample_id"] for r in result.table.to_pylist()) == ["blue", "photo"] + ["pic"] * avif + ["red"]
    odd, side = result.rejected.to_pylist()
    assert odd["reason"] == side["reason"] == "image_missing"
    assert "caption file odd.txt has no image file named odd.* (odd.heic: a suffix not read as an image; convert" in odd["detail"]
    assert side["detail"] == "caption file side.txt has no image file named side.*"  # a sidecar is no image


def test_a_folders_images_in_subfolders_are_reported_not_dropped_silently(tmp_path: Path) -> None:
    """A folder of images with .txt captions is read at its top level; an image in a subfolder
    (sub/b.png with its sub/b.txt) was left out without a word."""
    root = tmp_path / "folder"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".cache").mkdir()
    for name, data in {"a.png": RED, "a.txt": b"a", "e.png": GREEN, "e.txt": b"e", "sub/b.png": BLUE, "sub/b.txt": b"b", "sub/deeper/c.jpg": GREEN,
                       ".cache/d.png": RED, "sub/notes.txt": b"not an image"}.items():
        (root / name).write_bytes(data)
    result = load_paired_dataset(root)
    assert [r[0] for r in rows(result)] == ["a", "e"]
    assert [(r["reason"], r["detail"].split(":")[0]) for r in result.rejected.to_pylist()] == [
        ("text_missing", "image sub/b.png is in a subfolder"), ("text_missing", "image sub/deeper/c.jpg is in a subfolder")]
    assert "a folder of images with .txt captions is read at its top level only" in result.rejected.column("detail")[0].as_py()
    assert load_paired_dataset(root, n=5).rejected.num_rows == 0  # n cuts the read: what lies beyond is not listed


# ----------------------------------------------------------------------------------------- errors


def test_errors_name_the_path_and_the_problem(image_dir: Path) -> None:
    missing = image_dir / "nope.parquet"
    with pytest.raises(ValueError, match=r"nope\.parquet.*does not exist$"):
        load_paired_dataset(str(missing))
    with contextlib.chdir(image_dir):
        with pytest.raises(ValueError, match="'rel/nope.csv' does not exist \\(relative paths are read from the working "
                                             f"directory: {re.escape(str(image_dir / 'rel' / 'nope.csv'))}\\)"):
            load_paired_dataset("rel/nope.csv")

    no_text = image_dir / "no_text.csv"
    no_text.write_text("image,caption\nimg/red.png,red\n")
    with pytest.raises(ValueError, match=r"no_text\.csv.*lacks required column\(s\) \['text'\]"):
        load_paired_dataset(no_text)

    no_image = write_parquet(image_dir / "no_image.parquet", {"text": ["a"]}, {"text": pa.string()})
    with pytest.raises(ValueError, match=r"no_image\.parquet.*\['image'\]"):
        load_paired_dataset(no_image)

    wrong_type = write_parquet(
        image_dir / "ints.parquet", {"image": [1, 2], "text": ["a", "b"]}, {"image": pa.int64(), "text": pa.string()}
    )
    with pytest.raises(ValueError, match=r"ints\.parquet.*'image' has type int64"):
        load_paired_dataset(wrong_type)

    (image_dir / "notes.yaml").write_text("{}")
    with pytest.raises(ValueError, match=r"unsupported file type '\.yaml' \(expected .*\.json \(COCO captions"):
        load_paired_dataset(image_dir / "notes.yaml")

    (image_dir / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=r"broken\.parquet.*not a readable Parquet"):
        load_paired_dataset(image_dir / "broken.parquet")

    (image_dir / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty.*no image files .* and no metadata.jsonl / metadata.csv / metadata.parquet$"):
        load_paired_dataset(image_dir / "empty")
    (image_dir / "empty" / "captions.csv").write_text("image,text\n")
    with pytest.raises(ValueError, match=r"to read a table in it, give the table's path \(e.g. '.*empty/captions.csv'\)"):
        load_paired_dataset(image_dir / "empty")

    for split in ("train", "test"):  # an ImageFolder with one subfolder per split
        (image_dir / "splits" / split).mkdir(parents=True)
        (image_dir / "splits" / split / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "a"}\n')
    with pytest.raises(ValueError, match=r"its subfolder\(s\) test, train hold a metadata table: give one as the dataset "
                                         r"\(e.g. '.*splits/test'\)"):
        load_paired_dataset(image_dir / "splits")

    (image_dir / "utf16.csv").write_bytes("image,text\nimg/red.png,red\n".encode("utf-16"))
    with pytest.raises(ValueError, match=r"utf16\.csv' is UTF-16 encoded .*save it as UTF-8 CSV"):
        load_paired_dataset(image_dir / "utf16.csv")
    for codec, mark in (("utf-32-le", "FF FE 00 00"), ("utf-32-be", "00 00 FE FF")):  # not UTF-16 (LE: FF FE 00 00 starts with FF FE)
        path = image_dir / f"{codec}.csv"
        path.write_bytes("\ufeffimage,text\nimg/red.png,red\n".encode(codec))
        with pytest.raises(ValueError, match=rf"{codec}\.csv' is UTF-32 encoded \(it starts with the byte-order mark {mark}\).*"
                                             r"save it as UTF-8 CSV"):
            load_paired_dataset(path)
        with pytest.raises(ValueError, match=rf"{codec}\.csv' is UTF-32 encoded"):  # prh run --check: the same words
            check_table_columns(path, check_layout(path))
    for suffix, body in ((".jsonl", '{"image": "img/red.png", "text": "red"}\n'), (".json", '[{"image": "img/red.png"}]')):
        for codec, name in (("utf-16", "UTF-16"), ("utf-32", "UTF-32")):  # JSON had said "'utf-8' codec can't decode"
            path = image_dir / f"{codec}{suffix}"
            path.write_bytes(body.encode(codec))
            with pytest.raises(ValueError, match=rf"{codec}{suffix}' is {name} encoded \(it starts with the byte-order mark "
                                                 rf"FF FE[ 0]*\), not UTF-8: save it as UTF-8$"):
                load_paired_dataset(path)


def test_fewer_than_two_valid_rows_is_an_error(image_dir: Path) -> None:
    path = image_dir / "one.csv"
    path.write_text("image,text\nimg/red.png,red\nimg/zero.png,zero\nimg/blue.png,\n")
    with pytest.raises(ValueError, match=r"one\.csv.*1 valid row.*image_empty: 1, text_empty: 1"):
        load_paired_dataset(path)
    empty = image_dir / "header_only.csv"
    empty.write_text("image,text\n")
    with pytest.raises(ValueError, match="0 valid row"):
        load_paired_dataset(empty)


def test_decompression_bomb_limit(image_dir: Path) -> None:
    (image_dir / "img" / "big.png").write_bytes(png_bytes(size=(200, 200)))
    path = image_dir / "big.csv"
    path.write_text("image,text\nimg/red.png,red\nimg/blue.png,blue\nimg/big.png,big\n")
    result = load_paired_dataset(path, max_image_pixels=10_000)
    assert [r[2] for r in rejections(result)] == ["image_too_large"]
    assert load_paired_dataset(path).n_valid == 3


def test_result_table_follows_the_contract(image_dir: Path) -> None:
    path = image_dir / "ok.csv"
    path.write_text("image,text,image_id\nimg/red.png,red,r\nimg/red.png,crimson,r\nimg/blue.png,blue,\n")
    result = load_paired_dataset(path)
    assert result.table.schema == DATASET_SCHEMA
    validate_table(result.table)
    assert result.summary() == {}
    assert result.table.column("image_id").to_pylist().count("r") == 2


def test_openmoji_table_round_trips_through_parquet_csv_and_folder(tmp_path: Path) -> None:
    built = build_openmoji_pairs(n=24, seed=3, image_size=32)
    pq.write_table(built, tmp_path / "built.parquet")
    folder = tmp_path / "folder"
    folder.mkdir()
    lines = ["sample_id,image,text,image_id"]
    for row in built.to_pylist():
        (folder / f"{row['sample_id']}.png").write_bytes(row["image"])
        (folder / f"{row['sample_id']}.txt").write_text(row["text"] + "\n", encoding="utf-8")
        text = row["text"].replace('"', '""')
        lines.append(f'{row["sample_id"]},folder/{row["sample_id"]}.png,"{text}",{row["image_id"]}')
    (tmp_path / "built.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    for path in (tmp_path / "built.parquet", tmp_path / "built.csv", folder):
        result = load_paired_dataset(path)
        assert result.n_rejected == 0
        assert result.table.equals(built), path


# ------------------------------------------------------- other column names, JSON Lines, ImageFolder


def test_tables_read_any_column_names(image_dir: Path) -> None:
    """CSV, Parquet and JSON Lines with their own names for the image and caption columns."""
    (image_dir / "named.csv").write_text("file_name,caption,sample_id\nimg/red.png,red,r\nimg/blue.png,blue,b\n")
    write_parquet(image_dir / "named.parquet", {"file_name": ["img/red.png", "img/blue.png"], "caption": ["red", "blue"],
                                                 "sample_id": ["r", "b"]},
                  {"file_name": pa.string(), "caption": pa.string(), "sample_id": pa.string()})
    (image_dir / "named.jsonl").write_text('{"file_name": "img/red.png", "caption": "red", "sample_id": "r"}\n'
                                           '{"file_name": "img/blue.png", "caption": "blue", "sample_id": "b"}\n')
    columns = ColumnMap(image="file_name", text="caption")
    for name in ("named.csv", "named.parquet", "named.jsonl"):
        result = load_paired_dataset(image_dir / name, columns=columns)
        assert rows(result) == [("b", "blue", "b"), ("r", "red", "r")], name
        assert result.table["image"].to_pylist() == [BLUE, RED]
        with pytest.raises(ValueError, match=re.escape(f"{name}' lacks required column(s) ['image', 'text']; it has ")
                           + r".*\(name others with image_column / text_column; --image-column / --text-column on the command line\)"):
            load_paired_dataset(image_dir / name)
    with pytest.raises(ValueError, match="two different names"):
        ColumnMap(image="x", text="x")


def test_jsonl_caption_lists_first_or_all(image_dir: Path) -> None:
    """A list of captions per image: the first (the paper's), or one row per caption linked to
    its image; an empty list is a reported row, not a dropped one; a bad line names the file."""
    (image_dir / "caps.jsonl").write_text(
        '{"image": "img/red.png", "text": ["a red square", "red"], "sample_id": "r"}\n'
        '{"image": "img/blue.png", "text": ["a blue square"], "sample_id": "b"}\n'
        '{"image": "img/green.png", "text": [], "sample_id": "g"}\n')
    first = load_paired_dataset(image_dir / "caps.jsonl")
    assert rows(first) == [("b", "a blue square", "b"), ("r", "a red square", "r")]
    assert rejections(first) == [(2, "g", "text_empty")]
    every = load_paired_dataset(image_dir / "caps.jsonl", columns=ColumnMap(captions="all"))
    assert rows(every) == [("b-0", "a blue square", "b"), ("r-0", "a red square", "r"), ("r-1", "red", "r")]
    assert rejections(every) == [(2, "g-0", "text_empty")]
    (image_dir / "bad.jsonl").write_text('{"image": "img/red.png", "text": "red"}\n{"image": \n')
    with pytest.raises(ValueError, match=r"bad\.jsonl' is not readable JSON Lines"):
        load_paired_dataset(image_dir / "bad.jsonl")


@pytest.mark.parametrize("layout", ["parquet", "jsonl"])
@pytest.mark.parametrize("captions", ["first", "all"])
def test_column_types_are_checked_alike_for_either_caption_policy(image_dir: Path, layout: str, captions: str) -> None:
    """An image struct whose ``bytes`` is text or whose ``path`` is a number (a raw ``TypeError``
    deep in the loader), an id column of structs (a raw ``ArrowNotImplementedError`` with
    ``captions: all``), of booleans or of floats (ids ``true-0``, ``1.5-0`` with ``all``, refused with
    ``first``), and a list of numbers as captions (reported as "type int64") are refused naming the
    table and the column's type, whatever the caption policy."""
    cases = {
        "image_bytes_text": ({"image": [{"bytes": "iVBORw0KGgo=", "path": None}], "text": ["red"]},
                             r"column 'image' has type struct<bytes: string, path: null>, expected struct<bytes: binary"),
        "image_path_number": ({"image": [{"bytes": None, "path": 5}], "text": ["red"]},
                              r"column 'image' has type struct<bytes: null, path: int64>, expected struct<bytes: binary"),
        "id_struct": ({"image": ["img/red.png"], "text": [["red", "a red square"]], "sample_id": [{"x": 1}]},
                      r"column 'sample_id' has type struct<x: int64>, expected string, binary or integer"),
        "id_bool": ({"image": ["img/red.png"], "text": [["red", "a red square"]], "sample_id": [True]},
                    r"column 'sample_id' has type bool, expected string, binary or integer"),
        "id_float": ({"image": ["img/red.png"], "text": [["red", "a red square"]], "sample_id": [1.5]},
                     r"column 'sample_id' has type double, expected string, binary or integer"),
        "image_id_list": ({"image": ["img/red.png"], "text": [["red"]], "image_id": [["r"]]},
                          r"column 'image_id' has type list<.*>, expected string, binary or integer"),
        "caption_numbers": ({"image": ["img/red.png"], "text": [[1, 2]]},
                            r"column 'text' has type list<.*: int64>, expected string or binary, or a list of them"),
    }
    for name, (columns, message) in cases.items():
        path = image_dir / f"{name}.{layout}"
        if layout == "parquet":
            pq.write_table(pa.table(columns), path)
        else:
            rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        with pytest.raises(ValueError, match=rf"{name}\.{layout}': {message}"):
            load_paired_dataset(path, columns=ColumnMap(captions=captions))


def _null_column_table(path: Path, columns: dict[str, list]) -> None:
    """``columns`` written as a Parquet table, JSON Lines or a JSON array of rows (by suffix); a
    column of only ``None`` gets Arrow's null type, as pandas writes a column of ``None``."""
    if path.suffix == ".parquet":
        pq.write_table(pa.table({name: pa.array(values) for name, values in columns.items()}), path)
        return
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    path.write_text(json.dumps(rows) if path.suffix == ".json" else "".join(json.dumps(row) + "\n" for row in rows))


@pytest.mark.parametrize("layout", ["parquet", "jsonl", "json"])
def test_a_column_that_is_null_in_every_row(image_dir: Path, layout: str) -> None:
    """A column with no value (Arrow's null type) refused the table as "column 'image_id' has type
    null, expected string, binary or integer", although a null image_id means "not given"; a key
    not read never mattered. An image, caption or id column with no value is refused naming the
    column as the table names it."""
    images, captions = ["img/red.png", "img/blue.png"], ["red", "blue"]
    path = image_dir / f"t.{layout}"
    _null_column_table(path, {"image": images, "caption": captions, "image_id": [None, None], "notes": [None, None]})
    result = load_paired_dataset(path, columns=ColumnMap(text="caption"))
    assert result.n_valid == 2 and result.n_rejected == 0
    assert sorted(text for _, text, _ in rows(result)) == ["blue", "red"]
    assert all(image_id == sample_id for sample_id, _, image_id in rows(result))  # not given: derived
    for name, role in (("picture", "image"), ("caption", "caption"), ("sample_id", "id")):
        given = {"picture": images, "caption": captions, name: [None, None]}
        _null_column_table(path, given)
        with pytest.raises(ValueError, match=rf"t\.{layout}': {role} column '{name}' holds no value: it is null in all 2 "
                                             r"row\(s\)"):
            load_paired_dataset(path, columns=ColumnMap(image="picture", text="caption"))


@pytest.mark.parametrize("layout", ["parquet", "jsonl", "json"])
def test_a_caption_list_column_whose_lists_are_all_empty_rejects_each_row_as_text_empty(image_dir: Path, layout: str) -> None:
    """Lists of captions that are all empty or null have Arrow's type ``list<null>``: read as lists
    of strings, so each row is ``text_empty`` rather than the table refused for its column type."""
    path = image_dir / f"t.{layout}"
    _null_column_table(path, {"image": ["img/red.png", "img/blue.png"], "caption": [[], None]})
    for captions in ("first", "all"):
        result = load_paired_dataset(path, columns=ColumnMap(text="caption", captions=captions), min_valid_rows=0)
        assert result.n_valid == 0 and [reason for *_, reason in rejections(result)] == ["text_empty", "text_empty"]


def test_a_caption_large_list_column_whose_lists_are_all_empty_is_read_as_a_list_column(image_dir: Path) -> None:
    """The same with 64-bit list offsets (``large_list<null>``, as polars writes a list column):
    it was refused as "column 'text' has type large_list<element: null>"."""
    path = image_dir / "t.parquet"
    pq.write_table(pa.table({"image": ["img/red.png", "img/blue.png"],
                             "text": pa.array([[], None], type=pa.large_list(pa.null()))}), path)
    result = load_paired_dataset(path, min_valid_rows=0)
    assert result.n_valid == 0 and [reason for *_, reason in rejections(result)] == ["text_empty", "text_empty"]


@pytest.mark.parametrize("metadata", ["metadata.jsonl", "metadata.csv", "metadata.parquet"])
def test_image_folder_with_a_metadata_table(tmp_path: Path, metadata: str) -> None:
    """The Hugging Face ImageFolder layout: file_name + text in a metadata table, images in
    subfolders; an image the table does not name is reported, never silently dropped."""
    root = tmp_path / "pets"
    (root / "train").mkdir(parents=True)
    (root / "train" / "red.png").write_bytes(RED)
    (root / "train" / "blue.png").write_bytes(BLUE)
    (root / "train" / "green.png").write_bytes(GREEN)  # not in the table
    (root / ".cache").mkdir()
    (root / ".cache" / "thumb.png").write_bytes(GREEN)  # hidden: ignored
    entries = {"file_name": ["train/red.png", "train/blue.png", "../outside.png"], "text": ["red", "blue", "escape"]}
    _write_metadata(root / metadata, entries)
    result = load_paired_dataset(root)
    assert sorted(r["text"] for r in result.table.to_pylist()) == ["blue", "red"]
    assert sorted(r["reason"] for r in result.rejected.to_pylist()) == ["image_path_unsafe", "text_missing"]
    missing, = [r for r in result.rejected.to_pylist() if r["reason"] == "text_missing"]
    assert missing["detail"] == f"image train/green.png is not named in {metadata}"

    (root / "metadata.csv" if metadata != "metadata.csv" else root / "metadata.jsonl").write_text("x")
    with pytest.raises(ValueError, match="has 2 metadata tables"):
        load_paired_dataset(root)


def _write_metadata(path: Path, entries: dict[str, list[str]]) -> None:
    """An ImageFolder metadata table at ``path`` (``.jsonl``, ``.csv`` or ``.parquet`` by its
    name) of the ``file_name`` and ``text`` columns in ``entries``."""
    rows = list(zip(entries["file_name"], entries["text"]))
    if path.suffix == ".jsonl":
        path.write_text("".join(f'{{"file_name": "{f}", "text": "{t}"}}\n' for f, t in rows))
    elif path.suffix == ".csv":
        path.write_text("file_name,text\n" + "".join(f"{f},{t}\n" for f, t in rows))
    else:
        write_parquet(path, entries, {"file_name": pa.string(), "text": pa.string()})


@pytest.mark.parametrize("metadata", ["metadata.jsonl", "metadata.csv", "metadata.parquet"])
def test_a_metadata_table_reads_the_same_given_itself_or_its_folder(tmp_path: Path, metadata: str) -> None:
    """An ImageFolder's metadata table given itself as the dataset path was refused ("lacks
    required column(s) ['image']; it has ['file_name', 'text']") while ``prh run --check`` passed
    it: its reader did not take ``file_name`` for the image column, as the folder's reading and
    the check do. Now the same rows and rejections either way (every image named, none reported
    unnamed); a table with an ``image`` column reads it, as ever."""
    root = tmp_path / "pets"
    (root / "train").mkdir(parents=True)
    (root / "train" / "red.png").write_bytes(RED)
    (root / "train" / "blue.png").write_bytes(BLUE)
    entries = {"file_name": ["train/red.png", "train/blue.png", "train/none.png"], "text": ["red", "blue", "gone"]}
    _write_metadata(root / metadata, entries)
    folder = load_paired_dataset(root)
    table = load_paired_dataset(root / metadata)
    assert table.table.equals(folder.table) and table.rejected.equals(folder.rejected)
    assert sorted(r[1] for r in rows(table)) == ["blue", "red"] and rejections(table) == [(2, None, "image_missing")]
    check_table_columns(root / metadata, check_layout(root / metadata))


def test_n_reads_only_the_first_rows_of_any_layout(tmp_path: Path, image_dir: Path) -> None:
    """``n``: the first rows of a table (before captions are expanded, rejected rows included),
    the first images of a folder by name; unnamed images of an ImageFolder are then not reported."""
    csv_path = image_dir / "bad.csv"
    csv_path.write_text(CSV_WITH_BAD_ROWS)
    head = load_paired_dataset(csv_path, n=4)
    assert [r[1] for r in rows(head)] == ["a blue square", "a red square"]
    assert rejections(head) == [(2, "t1", "image_unreadable"), (3, "z1", "image_empty")]

    parquet = tmp_path / "many.parquet"
    pq.write_table(pa.table({"image": [RED, BLUE, GREEN] * 40, "text": [f"caption {i}" for i in range(120)]}), parquet,
                   row_group_size=16)
    assert sorted(r["text"] for r in load_paired_dataset(parquet, n=20).table.to_pylist()) == sorted(f"caption {i}" for i in range(20))

    (image_dir / "caps.jsonl").write_text("".join(
        f'{{"image": "img/{c}.png", "text": ["{c} one", "{c} two"], "sample_id": "{c}"}}\n' for c in ("red", "blue", "green")))
    every = load_paired_dataset(image_dir / "caps.jsonl", columns=ColumnMap(captions="all"), n=2)
    assert [r[0] for r in rows(every)] == ["blue-0", "blue-1", "red-0", "red-1"]

    folder = tmp_path / "folder"
    folder.mkdir()
    for name, png in (("a", RED), ("b", BLUE), ("c", GREEN)):
        (folder / f"{name}.png").write_bytes(png)
        (folder / f"{name}.txt").write_text(f"caption {name}\n")
    assert [r[0] for r in rows(load_paired_dataset(folder, n=2))] == ["a", "b"]
    (folder / "metadata.csv").write_text("file_name,text\na.png,first\nb.png,second\nc.png,third\n")
    cut = load_paired_dataset(folder, n=2)
    assert sorted(r[1] for r in rows(cut)) == ["first", "second"] and cut.n_rejected == 0


def test_image_root_reads_a_tables_images_from_another_folder(tmp_path: Path) -> None:
    """COCO-style: annotations/pairs.csv names files of val/; paths still may not leave that folder."""
    (tmp_path / "val").mkdir()
    (tmp_path / "annotations").mkdir()
    for name, png in (("red", RED), ("blue", BLUE)):
        (tmp_path / "val" / f"{name}.png").write_bytes(png)
    (tmp_path / "secret.png").write_bytes(GREEN)
    table = tmp_path / "annotations" / "pairs.csv"
    table.write_text("sample_id,image,text\nr,red.png,red\nb,blue.png,blue\ns,../secret.png,escape\n")
    result = load_paired_dataset(table, image_root=tmp_path / "val")
    assert rows(result) == [("b", "blue", "b"), ("r", "red", "r")]
    assert rejections(result) == [(2, "s", "image_path_unsafe")]
    assert rejections(load_paired_dataset(table, min_valid_rows=0)) == [(0, "r", "image_missing"), (1, "b", "image_missing"),
                                                                       (2, "s", "image_path_unsafe")]
    with pytest.raises(ValueError, match="image_root '.*nowhere' of dataset '.*pairs.csv' is not a folder"):
        load_paired_dataset(table, image_root=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="is a folder: image_root applies to a table"):
        load_paired_dataset(tmp_path / "val", image_root=tmp_path / "val")


def test_an_image_file_larger_than_any_image_within_the_pixel_limit_is_refused_unread(tmp_path, monkeypatch):
    """The untrusted-input hunt: a file named like an image was read whole into memory before its
    decoder looked at it (a 100 GB sparse ``x.png`` in a folder or a table's image column took the
    run down). Now its size decides first: ``image_too_large`` naming the file and both sizes."""
    from tasks.data import tables

    folder = tmp_path / "pairs"
    folder.mkdir()
    for i in range(3):
        (folder / f"ok{i}.png").write_bytes(png_bytes(size=(20 + i, 20)))
        (folder / f"ok{i}.txt").write_text(f"a small square {i}")
    limit = tables.image_file_limit(1_000)
    with open(folder / "huge.png", "wb") as handle:  # sparse: no disk used
        handle.truncate(limit + 1)
    (folder / "huge.txt").write_text("not an image at all")
    read = []
    real = tables.read_linked_image_file
    monkeypatch.setattr(tables, "read_linked_image_file", lambda root, rel, *rest: read.append(rel) or real(root, rel, *rest))

    result = load_paired_dataset(folder, max_image_pixels=1_000)
    rejected = result.rejected.to_pylist()
    assert result.n_valid == 3 and [r["reason"] for r in rejected] == ["image_too_large"], rejected
    assert "'huge.png'" in rejected[0]["detail"] and f"{limit + 1:,} bytes, more than the {limit:,}" in rejected[0]["detail"]
    assert "huge.png" not in read and len(read) == 3
    assert tables.image_file_limit(tables.DEFAULT_MAX_IMAGE_PIXELS) > 89_000_000 * 8  # any image within the pixel limit fits


def test_an_image_path_that_is_a_url_says_so(tmp_path):
    """The untrusted-input hunt: a table of image URLs was rejected row by row as "image file
    'https://…/a.png' does not exist in <folder>", as if a file were missing. Nothing is fetched."""
    (tmp_path / "a.png").write_bytes(png_bytes(size=(20, 20)))
    (tmp_path / "b.png").write_bytes(png_bytes(size=(21, 20)))
    table = pa.table({"image": ["a.png", "b.png", "https://example.com/c.png", "file:///etc/hostname"],
                      "text": ["one", "two", "three", "four"]})
    pq.write_table(table, tmp_path / "pairs.parquet")
    rejected = load_paired_dataset(tmp_path / "pairs.parquet").rejected.to_pylist()
    assert [r["reason"] for r in rejected] == ["image_missing", "image_missing"], rejected
    assert all("is a URL: images are read from files, never fetched" in r["detail"] for r in rejected), rejected
    assert "'https://example.com/c.png'" in rejected[0]["detail"] and "'file:///etc/hostname'" in rejected[1]["detail"]


def test_a_caption_file_that_is_a_pipe_or_huge_is_refused_unread(tmp_path):
    """The untrusted-input hunt: a FIFO named ``cat.txt`` in an image folder made the load wait
    forever (its image is checked to be a regular file, its caption was not), and a caption file
    of any size was read whole. Run in a child process: a regression hangs, and is cut at 60 s."""
    import subprocess
    import sys
    import textwrap

    folder = tmp_path / "pairs"
    folder.mkdir()
    for i, name in enumerate(["a", "b", "cat", "huge"]):
        (folder / f"{name}.png").write_bytes(png_bytes(size=(20 + i, 20)))
    (folder / "a.txt").write_text("one")
    (folder / "b.txt").write_text("two")
    os.mkfifo(folder / "cat.txt")
    with open(folder / "huge.txt", "wb") as handle:  # sparse
        handle.truncate(64 * 1024 * 1024 + 1)
    code = textwrap.dedent(f"""
        from tasks.data.tables import load_paired_dataset
        for row in load_paired_dataset({str(folder)!r}).rejected.to_pylist():
            print(row["sample_id"], row["reason"], row["detail"])
    """)
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "cat text_missing caption file cat.txt is not a regular file" in lines, lines
    assert "huge text_too_long caption file huge.txt is 67,108,865 bytes, more than the 67,108,864 read" in lines, lines


def test_the_size_limit_holds_for_windows_paths_and_hub_links(tmp_path):
    """The review: ``imgs\\\\huge.png`` (no file has that name) was read whole by the backslash
    fallback, and a hub snapshot's image, a link into its cache's ``blobs/``, was never sized."""
    from tasks.data.tables import _FileReader

    root, blobs = tmp_path / "snapshot", tmp_path / "blobs"
    (root / "imgs").mkdir(parents=True)
    blobs.mkdir()
    for big in (root / "imgs" / "huge.png", blobs / "0123abcd"):
        with open(big, "wb") as handle:
            handle.truncate(5_000)
    (root / "linked.png").symlink_to(blobs / "0123abcd")
    reader = _FileReader(root, links_within=blobs, max_bytes=1_000)
    for path in ("imgs\\huge.png", "imgs/huge.png", "linked.png"):
        found = reader.read(path)
        assert not isinstance(found, bytes) and found.reason == "image_too_large", (path, found)


def test_the_size_limit_never_sizes_a_file_outside_the_folder(tmp_path):
    """`_oversized` sizes only a file inside the folder (or the hub links' folder): a path or link
    leading outside it stays ``image_path_unsafe`` (refused as before, whatever its size), and a file
    of exactly ``max_bytes`` is read (only a *larger* one is refused unread)."""
    from tasks.data.tables import _FileReader

    root = tmp_path / "data"
    root.mkdir()
    with open(tmp_path / "big.png", "wb") as handle:
        handle.truncate(5_000)
    (root / "link.png").symlink_to(tmp_path / "big.png")
    reader = _FileReader(root, max_bytes=1_000)
    for path in ("../big.png", "link.png"):
        found = reader.read(path)
        assert not isinstance(found, bytes) and found.reason == "image_path_unsafe", (path, found)
    (root / "edge.png").write_bytes(b"x" * 1_000)
    (root / "over.png").write_bytes(b"x" * 1_001)
    assert reader.read("edge.png") == b"x" * 1_000
    over = reader.read("over.png")
    assert not isinstance(over, bytes) and over.reason == "image_too_large"


def test_a_caption_of_exactly_the_limit_with_a_control_character_is_control_chars(tmp_path):
    """The reason names what is wrong: a caption of exactly MAX_CAPTION_CHARS characters is not too
    long (over the limit is), so one holding a NUL is ``text_control_chars``; one character more is
    ``text_too_long``."""
    from tasks.data.schema import MAX_CAPTION_CHARS

    at_limit = "a" * (MAX_CAPTION_CHARS - 1) + "\x00"
    over = "a" * MAX_CAPTION_CHARS + "\x00"
    path = write_parquet(tmp_path / "t.parquet",
                         {"sample_id": ["ok1", "ok2", "nul", "long"], "image": [RED, BLUE, GREEN, RED],
                          "text": ["a red square", "a blue square", at_limit, over]},
                         {"sample_id": pa.string(), "image": pa.binary(), "text": pa.string()})
    result = load_paired_dataset(path)
    assert rejections(result) == [(2, "nul", "text_control_chars"), (3, "long", "text_too_long")]


def test_an_image_root_that_is_a_file_is_not_a_folder(tmp_path: Path) -> None:
    """image_root must be an existing folder: an existing regular file is refused like a missing path."""
    (tmp_path / "red.png").write_bytes(RED)
    table = tmp_path / "pairs.csv"
    table.write_text("image,text\nred.png,a\nred.png,b\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"image_root '.*red\.png' of dataset '.*pairs\.csv' is not a folder"):
        load_paired_dataset(table, image_root=tmp_path / "red.png")
