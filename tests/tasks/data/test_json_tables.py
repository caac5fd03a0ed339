"""JSON documents as datasets: COCO caption files and arrays of row objects (tasks.data.json_tables)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.data.sources import ColumnMap
from tasks.data.tables import load_paired_dataset
from tests.tasks.data.sample_images import png_bytes

RED, BLUE, GREEN = png_bytes("red"), png_bytes("blue"), png_bytes("green")


def coco_layout(tmp_path: Path, document: dict) -> tuple[Path, Path]:
    """COCO's layout: annotations/captions_val.json beside val/ holding the images."""
    (tmp_path / "annotations").mkdir()
    images = tmp_path / "val"
    images.mkdir()
    for name, data in (("000001.png", RED), ("000002.png", BLUE), ("000003.png", GREEN)):
        (images / name).write_bytes(data)
    path = tmp_path / "annotations" / "captions_val.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path, images


COCO = {
    "info": {"description": "tiny"},
    "licenses": [],
    "images": [
        {"id": 3, "file_name": "000003.png", "width": 8, "height": 8},
        {"id": 1, "file_name": "000001.png", "width": 8, "height": 8},
        {"id": 2, "file_name": "000002.png", "width": 8, "height": 8},
    ],
    "annotations": [  # not grouped by image, as in COCO's files
        {"id": 10, "image_id": 1, "caption": "a red square "},
        {"id": 11, "image_id": 2, "caption": "a blue square"},
        {"id": 12, "image_id": 1, "caption": "red, again"},
        {"id": 13, "image_id": 3, "caption": "a green square"},
        {"id": 14, "image_id": 2, "caption": "blue, again"},
        {"id": 15, "image_id": 1, "caption": "red, a third time"},
    ],
}


def table_rows(result) -> list[tuple[str, str, str]]:
    return [(r["sample_id"], r["text"], r["image_id"]) for r in result.table.to_pylist()]


def test_coco_first_caption_per_image(tmp_path: Path) -> None:
    path, images = coco_layout(tmp_path, COCO)
    result = load_paired_dataset(path, image_root=images)
    assert table_rows(result) == [("1", "a red square", "1"), ("2", "a blue square", "2"), ("3", "a green square", "3")]
    by_id = {r["sample_id"]: r["image"] for r in result.table.to_pylist()}
    assert by_id == {"1": RED, "2": BLUE, "3": GREEN}
    assert result.n_rejected == 0


def test_coco_all_captions_link_rows_to_their_image(tmp_path: Path) -> None:
    path, images = coco_layout(tmp_path, COCO)
    result = load_paired_dataset(path, image_root=images, columns=ColumnMap(captions="all"))
    assert table_rows(result) == [
        ("1-0", "a red square", "1"), ("1-1", "red, again", "1"), ("1-2", "red, a third time", "1"),
        ("2-0", "a blue square", "2"), ("2-1", "blue, again", "2"), ("3-0", "a green square", "3"),
    ]


def test_coco_n_takes_the_first_images_in_file_order(tmp_path: Path) -> None:
    path, images = coco_layout(tmp_path, COCO)
    result = load_paired_dataset(path, image_root=images, n=2, columns=ColumnMap(captions="all"))
    assert sorted({r["image_id"] for r in result.table.to_pylist()}) == ["1", "3"]
    assert result.table.num_rows == 4


def test_coco_image_without_captions_or_file_is_a_reported_row(tmp_path: Path) -> None:
    document = json.loads(json.dumps(COCO))
    document["images"].append({"id": 4, "file_name": "000004.png"})  # no file, no caption
    document["images"].append({"id": "x5", "file_name": "000001.png"})  # no caption
    document["annotations"].append({"id": 16, "image_id": "x5x", "caption": "dangling"})
    path, images = coco_layout(tmp_path, document)
    with pytest.raises(ValueError, match=r"captions_val\.json.*1 annotation\(s\) name no image.*annotations\[6\], image_id 'x5x'"):
        load_paired_dataset(path, image_root=images)
    document["annotations"][-1]["image_id"] = 4
    path.write_text(json.dumps(document), encoding="utf-8")
    (images / "000004.png").unlink(missing_ok=True)
    result = load_paired_dataset(path, image_root=images)
    reasons = {r["sample_id"]: r["reason"] for r in result.rejected.to_pylist()}
    assert reasons == {"4": "image_missing", "x5": "text_empty"}
    assert result.n_valid == 3


def test_coco_images_are_relative_to_the_json_folder_by_default(tmp_path: Path) -> None:
    path, _ = coco_layout(tmp_path, COCO)
    with pytest.raises(ValueError, match=r"0 valid row\(s\).*image_missing: 3.*000003\.png' does not exist in .*annotations"):
        load_paired_dataset(path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["images"].append({"id": 1, "file_name": "000001.png"}), r"images\[3\] repeats image id '1'"),
        (lambda d: d["images"].append({"id": 9}), r"images\[3\] \(id '9'\) has no 'file_name'"),
        (lambda d: d["images"].append({"file_name": "a.png"}), r"images\[3\] 'id' is missing; expected an integer or a string"),
        (lambda d: d["images"].append({"id": True, "file_name": "a.png"}), r"images\[3\] 'id' is True"),
        (lambda d: d["images"].append("a.png"), r"images\[3\] is a JSON str, not an object"),
        (lambda d: d["images"].append({"id": 9, "file_name": 7}), r"every images\[\]\.file_name must be a string"),
        (lambda d: d["annotations"].append({"image_id": 1, "caption": ["a", "b"]}), r"annotations\[6\] 'caption' is a JSON list, not a string"),
        (lambda d: d["annotations"].append({"image_id": 1}), r"annotations\[6\] 'caption' is missing"),
        (lambda d: d.update(annotations={}), r"'annotations' is a JSON dict, not a list"),
    ],
)
def test_broken_coco_files_are_refused_naming_the_entry(tmp_path: Path, mutate, message: str) -> None:
    document = json.loads(json.dumps(COCO))
    mutate(document)
    path, images = coco_layout(tmp_path, document)
    with pytest.raises(ValueError, match=r"captions_val\.json'?: " + message):
        load_paired_dataset(path, image_root=images)


def test_coco_fields_are_fixed(tmp_path: Path) -> None:
    path, images = coco_layout(tmp_path, COCO)
    with pytest.raises(ValueError, match="COCO captions file.*image_column / text_column do not apply"):
        load_paired_dataset(path, image_root=images, columns=ColumnMap(image="file_name", text="caption"))


def write_rows(tmp_path: Path, rows: object, name: str = "pairs.json") -> Path:
    for file, data in (("red.png", RED), ("blue.png", BLUE), ("green.png", GREEN)):
        (tmp_path / file).write_bytes(data)
    path = tmp_path / name
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def test_array_of_rows_with_caption_lists_as_blip_files(tmp_path: Path) -> None:
    rows = [
        {"image": "red.png", "caption": ["a red square", "red"], "image_id": "r"},
        {"image": "blue.png", "caption": ["a blue square"], "image_id": "b", "extra": {"nested": [1, 2]}},
        {"image": "green.png", "caption": ["a green square", "green", "verdant"], "image_id": "g"},
    ]
    path = write_rows(tmp_path, rows)
    first = load_paired_dataset(path, columns=ColumnMap(text="caption"))
    assert sorted((r["text"], r["image_id"]) for r in first.table.to_pylist()) == [
        ("a blue square", "b"), ("a green square", "g"), ("a red square", "r")]
    every = load_paired_dataset(path, columns=ColumnMap(text="caption", captions="all"))
    assert every.n_valid == 6
    assert sorted(r["text"] for r in every.table.to_pylist() if r["image_id"] == "g") == ["a green square", "green", "verdant"]


def test_array_of_rows_with_ids_and_n(tmp_path: Path) -> None:
    rows = [{"sample_id": i, "image": f, "text": t} for i, (f, t) in
            enumerate([("red.png", "red"), ("blue.png", "blue"), ("green.png", "green")])]
    path = write_rows(tmp_path, rows)
    assert table_rows(load_paired_dataset(path)) == [("0", "red", "0"), ("1", "blue", "1"), ("2", "green", "2")]
    assert [r[0] for r in table_rows(load_paired_dataset(path, n=2))] == ["0", "1"]


def test_array_rows_missing_a_key_are_reported_not_dropped(tmp_path: Path) -> None:
    rows = [{"image": "red.png", "text": "red"}, {"image": "blue.png"}, {"text": "no image"}, {"image": "green.png", "text": "green"}]
    result = load_paired_dataset(write_rows(tmp_path, rows))
    assert result.n_valid == 2
    assert sorted(r["reason"] for r in result.rejected.to_pylist()) == ["image_missing", "text_empty"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"is not readable JSON"),
        ("\"just a string\"", r"is a JSON str; expected a COCO captions file"),
        ("{\"images\": []}", r"is an object with keys \['images'\]; expected a COCO captions file"),
        ("[{\"image\": \"red.png\", \"text\": \"red\"}, 3]", r"element 1 of the array is a JSON int, not an object"),
        ("[{\"picture\": \"red.png\", \"text\": \"red\"}]", r"no row has the required key\(s\) \['image'\]; keys read: \['picture', 'text'\]"),
        ("[{\"image\": \"red.png\", \"text\": \"red\"}, {\"image\": \"blue.png\", \"text\": [\"a\"]}]", r"a column mixes value types"),
        ("[]", r"no row has the required key"),
    ],
)
def test_unreadable_json_documents_name_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = write_rows(tmp_path, None)
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=r"pairs\.json'?:? .*" + message):
        load_paired_dataset(path)


def test_json_with_byte_order_mark(tmp_path: Path) -> None:
    path = write_rows(tmp_path, None)
    path.write_bytes("\ufeff".encode() + json.dumps([{"image": "red.png", "text": "red"}, {"image": "blue.png", "text": "blue"}]).encode())
    assert load_paired_dataset(path).n_valid == 2
