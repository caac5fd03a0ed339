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
        (lambda d: d["annotations"].append({"image_id": 1, "caption": None}), r"annotations\[6\] 'caption' is null"),
        (lambda d: d["images"].append({"id": None, "file_name": "a.png"}), r"images\[3\] 'id' is null; expected an integer"),
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


def test_a_caption_key_mixing_strings_and_lists_reads_a_string_as_a_list_of_one(tmp_path: Path) -> None:
    """Rows whose caption is a string in some and a list of strings in others (a scraper's "one
    caption, or several") were refused whole ("key 'caption' mixes JSON string (element 0) and
    array (element 1) values"). A string is read as a list of one: ``first`` gives the rows an
    all-string file gives, ``all`` one row per caption (``ID-j``, as for any list)."""
    rows = [
        {"image": "red.png", "caption": "a red square", "sample_id": "r"},
        {"image": "blue.png", "caption": ["a blue square", "blue"], "sample_id": "b"},
        {"image": "green.png", "caption": "a green square", "sample_id": "g"},
    ]
    path = write_rows(tmp_path, rows)
    first = load_paired_dataset(path, columns=ColumnMap(text="caption"))
    assert table_rows(first) == [("b", "a blue square", "b"), ("g", "a green square", "g"), ("r", "a red square", "r")]
    every = load_paired_dataset(path, columns=ColumnMap(text="caption", captions="all"))
    assert table_rows(every) == [("b-0", "a blue square", "b"), ("b-1", "blue", "b"), ("g-0", "a green square", "g"),
                                 ("r-0", "a red square", "r")]


def test_captions_mixing_strings_and_lists_across_row_batches(tmp_path: Path) -> None:
    """Rows are kept as Arrow a batch at a time (``RowTable``): strings in a batch before the first
    list, and after it, are lists of one too; a null caption stays null (``text_empty``), and a
    string with a lone surrogate becomes its UTF-8 bytes in a list, as a list's caption does."""
    from tasks.data.json_tables import RowTable

    table = RowTable("rows.json", ColumnMap())
    table.add([{"image": "a.png", "text": "one"}, {"image": "b.png", "text": None}])
    table.add([{"image": "c.png", "text": ["three", "3"]}])
    table.add([{"image": "d.png", "text": "four"}])
    assert table.finish().column("text").to_pylist() == [["one"], None, ["three", "3"], ["four"]]

    table = RowTable("rows.json", ColumnMap())
    table.add([{"image": "a.png", "text": "x\ud800"}])
    table.add([{"image": "b.png", "text": ["y"]}])
    assert table.finish().column("text").to_pylist() == [[b"x\xed\xa0\x80"], [b"y"]]



@pytest.mark.parametrize("item, kind", [(["blue"], "array"), (5, "number"), ({"en": "blue"}, "object"), (True, "boolean")])
def test_a_list_of_captions_holding_a_non_string_names_its_element_and_item(tmp_path: Path, item: object, kind: str) -> None:
    """A list of captions with an item that is not a string was refused as "a key mixes value types
    (Expected bytes, got a 'list' object)": neither the key nor the row, and no key mixes types."""
    rows = [{"image": "red.png", "caption": ["red"]}, {"image": "blue.png", "caption": ["a blue square", item]}]
    path = write_rows(tmp_path, rows)
    with pytest.raises(ValueError, match=rf"pairs.json'?: element 1 key 'caption' is a list of captions whose item 1 is a "
                                         rf"JSON {kind}, not a string"):
        load_paired_dataset(path, columns=ColumnMap(text="caption"))

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
        ("[{\"image\": \"red.png\", \"text\": \"red\"}, {\"image\": \"blue.png\", \"text\": {\"en\": \"a\"}}]",
         r"key 'text' mixes JSON string \(element 0\) and object \(element 1\) values"),
        ("[{\"image\": \"red.png\", \"text\": \"red\"}, {\"image\": \"blue.png\", \"text\": [\"a\"]}, {\"image\": \"x\", \"text\": 3}]",
         r"key 'text' mixes JSON string \(element 0\) and number \(element 2\) values"),  # a list beside strings is no type error
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


def karpathy_layout(tmp_path: Path, images: list[dict]) -> Path:
    """Karpathy's COCO layout: dataset_coco.json beside val2014/ and train2014/ holding the images."""
    for folder, name, data in (("val2014", "v1.png", RED), ("val2014", "v2.png", BLUE), ("train2014", "t1.png", GREEN)):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).write_bytes(data)
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}), encoding="utf-8")
    return path


def sentences(*captions: str) -> list[dict]:
    return [{"tokens": caption.lower().split(), "raw": caption, "imgid": 0, "sentid": j} for j, caption in enumerate(captions)]


KARPATHY = [
    {"filepath": "val2014", "filename": "v1.png", "imgid": 0, "split": "test", "cocoid": 11,
     "sentences": sentences("A red square. ", "Red again"), "sentids": [0, 1]},
    {"filepath": "train2014", "filename": "t1.png", "imgid": 1, "split": "train", "cocoid": 7,
     "sentences": sentences("A green square")},
    {"filepath": "val2014", "filename": "v2.png", "imgid": 2, "split": "test", "cocoid": 5,
     "sentences": sentences("A blue square", "Blue again", "Blue, a third time")},
]


def test_karpathy_split_file_reads_the_images_of_one_split(tmp_path: Path) -> None:
    path = karpathy_layout(tmp_path, KARPATHY)
    test = load_paired_dataset(path, split="test")
    assert table_rows(test) == [("11", "A red square.", "11"), ("5", "A blue square", "5")]
    assert {r["sample_id"]: r["image"] for r in test.table.to_pylist()} == {"11": RED, "5": BLUE}
    every = load_paired_dataset(path, split="test", columns=ColumnMap(captions="all"))
    assert sorted(table_rows(every)) == [("11-0", "A red square.", "11"), ("11-1", "Red again", "11"), ("5-0", "A blue square", "5"),
                                         ("5-1", "Blue again", "5"), ("5-2", "Blue, a third time", "5")]
    assert [r[0] for r in table_rows(load_paired_dataset(path))] == ["11", "5", "7"]  # no split: every image
    assert [r[0] for r in table_rows(load_paired_dataset(path, split="test", n=1, columns=ColumnMap(captions="all")))] == ["11-0", "11-1"]


def test_karpathy_flickr_layout_is_named_by_imgid(tmp_path: Path) -> None:
    images = [{"filename": name, "imgid": i, "split": "val", "sentences": sentences(f"caption {i}")}
              for i, name in enumerate(["red.png", "blue.png", "green.png"])]
    path = write_rows(tmp_path, {"images": images, "dataset": "flickr30k"}, name="dataset_flickr30k.json")
    assert table_rows(load_paired_dataset(path, split="val")) == [("0", "caption 0", "0"), ("1", "caption 1", "1"), ("2", "caption 2", "2")]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.append({**d[0], "filename": "x.png"}), r"images\[3\] repeats image id '11'"),
        (lambda d: d[1].pop("filename"), r"images\[1\] \(id '7'\) 'filename' is missing, not a string"),
        (lambda d: d[1].update(filepath=["train2014"]), r"images\[1\] \(id '7'\) 'filepath' is a JSON list, not a string"),
        (lambda d: d[2].pop("split"), r"images\[2\] \(id '5'\) 'split' is missing, not a string"),
        (lambda d: d[0].update(sentences="A red square"), r"images\[0\] \(id '11'\) 'sentences' is a JSON str, not a list"),
        (lambda d: d[2]["sentences"][1].pop("raw"), r"images\[2\] \(id '5'\) sentences\[1\] has no string 'raw'"),
        (lambda d: d[1].pop("cocoid") and d[1].pop("imgid"), r"images\[1\] 'imgid' is missing; expected an integer"),
        (lambda d: d[1].update(cocoid=None), r"images\[1\] 'cocoid' is null; expected an integer"),
        (lambda d: d[1].update(filename=None), r"images\[1\] \(id '7'\) 'filename' is null, not a string"),
        (lambda d: d[2].pop("sentences"), r"images\[2\] \(id '5'\) 'sentences' is missing, not a list"),
        (lambda d: d[0].update(sentences=None), r"images\[0\] \(id '11'\) 'sentences' is null, not a list"),
    ],
)
def test_broken_karpathy_files_are_refused_naming_the_entry(tmp_path: Path, mutate, message: str) -> None:
    images = json.loads(json.dumps(KARPATHY))
    mutate(images)
    with pytest.raises(ValueError, match=r"dataset_coco\.json'?: " + message):
        load_paired_dataset(karpathy_layout(tmp_path, images), split="test")


def test_a_split_must_exist_and_only_karpathy_files_have_splits(tmp_path: Path) -> None:
    path = karpathy_layout(tmp_path, KARPATHY)
    with pytest.raises(ValueError, match=r"dataset_coco\.json' has no image in split 'validation'; its splits: 'test' \(2 images\), 'train' \(1 images\)"):
        load_paired_dataset(path, split="validation")
    with pytest.raises(ValueError, match="is a Karpathy split file: its fields are images.*image_column / text_column do not apply"):
        load_paired_dataset(path, split="test", columns=ColumnMap(text="caption"))
    (tmp_path / "coco").mkdir()
    coco, images = coco_layout(tmp_path / "coco", COCO)
    with pytest.raises(ValueError, match=r"captions_val\.json' is a COCO captions file, which has no splits: dataset\.split 'test' applies to Karpathy"):
        load_paired_dataset(coco, image_root=images, split="test")
    rows = write_rows(tmp_path, [{"image": "red.png", "text": "red"}, {"image": "blue.png", "text": "blue"}])
    with pytest.raises(ValueError, match=r"pairs\.json' is an array of rows, which has no splits"):
        load_paired_dataset(rows, split="test")
    (tmp_path / "pairs.csv").write_text("image,text\nred.png,red\nblue.png,blue\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"pairs\.csv' is a \.csv table, which has no splits: dataset\.split 'test' applies to Karpathy"):
        load_paired_dataset(tmp_path / "pairs.csv", split="test")
    with pytest.raises(ValueError, match=r"is a folder, which has no splits"):
        load_paired_dataset(tmp_path / "val2014", split="test")


def test_a_caption_with_a_lone_surrogate_rejects_its_row_only(tmp_path: Path) -> None:
    """JSON's "\\ud83d" (half of an emoji cut off): loading a COCO file, a Karpathy file or an
    array of rows failed whole with "'utf-8' codec can't encode character '\\ud83d' ...: surrogates
    not allowed", naming neither the file nor the entry. Only that caption's row is rejected now."""
    coco = json.loads(json.dumps(COCO))
    coco["annotations"][1]["caption"] = "a blue \ud83d"  # image 2's first caption
    (tmp_path / "coco").mkdir()
    path, images = coco_layout(tmp_path / "coco", coco)
    result = load_paired_dataset(path, image_root=images)
    assert [r[0] for r in table_rows(result)] == ["1", "3"]
    assert [(r["sample_id"], r["reason"]) for r in result.rejected.to_pylist()] == [("2", "text_not_utf8")]
    every = load_paired_dataset(path, image_root=images, columns=ColumnMap(captions="all"))
    assert ("2-1", "blue, again", "2") in table_rows(every)
    assert [(r["sample_id"], r["reason"]) for r in every.rejected.to_pylist()] == [("2-0", "text_not_utf8")]

    (tmp_path / "k").mkdir()
    karpathy = json.loads(json.dumps(KARPATHY))
    karpathy[0]["sentences"][0]["raw"] = "\udc00 red"
    path = karpathy_layout(tmp_path / "k", karpathy)
    result = load_paired_dataset(path)
    assert [r[0] for r in table_rows(result)] == ["5", "7"]
    [rejected] = result.rejected.to_pylist()
    assert (rejected["sample_id"], rejected["reason"]) == ("11", "text_not_utf8")
    assert "caption holds a lone UTF-16 surrogate (U+DC00 at character 0" in rejected["detail"]

    (tmp_path / "rows").mkdir()
    rows = [{"image": "red.png", "text": "red \ud83d"}, {"image": "blue.png", "text": "blue"}, {"image": "green.png", "text": "green"}]
    result = load_paired_dataset(write_rows(tmp_path / "rows", rows))
    assert sorted(r[1] for r in table_rows(result)) == ["blue", "green"]
    assert [r["reason"] for r in result.rejected.to_pylist()] == ["text_not_utf8"]
    rows = [{"image": "red.png", "text": ["red \ud83d", "red"]}, {"image": "blue.png", "text": ["blue"]}]  # a list: bytes
    every = load_paired_dataset(write_rows(tmp_path / "rows", rows, "lists.json"), columns=ColumnMap(captions="all"))
    assert sorted(r[1] for r in table_rows(every)) == ["blue", "red"]
    rows = [{"image": "red.png\ud83d", "text": "red"}]
    with pytest.raises(ValueError, match=r"ids\.json.*lone UTF-16 surrogate"):
        load_paired_dataset(write_rows(tmp_path / "rows", rows, "ids.json"))


def test_a_file_name_or_id_with_a_lone_surrogate_or_an_integer_too_big_names_the_file_and_entry(tmp_path: Path) -> None:
    """A COCO or Karpathy file name or id holding a lone surrogate was a bare "'utf-8' codec can't
    encode character '\\ud83d'" naming neither the file nor the entry; an id of an array of rows
    beyond 64 bits was a raw ``OverflowError`` from pyarrow."""
    coco = json.loads(json.dumps(COCO))
    coco["images"][1]["file_name"] = "\ud83d.png"
    (tmp_path / "coco").mkdir()
    path, images = coco_layout(tmp_path / "coco", coco)
    with pytest.raises(ValueError, match=r"captions_val\.json': images\[1\] 'file_name' '\\ud83d\.png' holds a lone UTF-16"):
        load_paired_dataset(path, image_root=images)
    coco = json.loads(json.dumps(COCO))
    coco["images"][0]["id"] = coco["annotations"][3]["image_id"] = "3\udc00"  # image 3 and its one caption
    (tmp_path / "coco2").mkdir()
    path, images = coco_layout(tmp_path / "coco2", coco)
    with pytest.raises(ValueError, match=r"captions_val\.json': images\[0\] 'id' .* holds a lone UTF-16 surrogate"):
        load_paired_dataset(path, image_root=images, columns=ColumnMap(captions="all"))

    (tmp_path / "k").mkdir()
    karpathy = json.loads(json.dumps(KARPATHY))
    karpathy[-1]["filename"] = "t\ud83d.png"
    path = karpathy_layout(tmp_path / "k", karpathy)
    split = karpathy[-1]["split"]
    with pytest.raises(ValueError, match=rf"dataset_coco\.json': images\[{len(KARPATHY) - 1}\] 'filename' .* holds a lone"):
        load_paired_dataset(path, split=split)  # the entry's index in the file, not among its split's images

    (tmp_path / "rows").mkdir()
    rows = [{"image": "red.png", "text": "red", "sample_id": 1}, {"image": "blue.png", "text": "blue", "sample_id": 2**70}]
    with pytest.raises(ValueError, match=r"pairs\.json': element 1 key 'sample_id' is the integer 1180591620717411303424, "
                                         r"outside the range of a 64-bit integer \(-9223372036854775808 to 9223372036854775807\): "
                                         "write an id"):
        load_paired_dataset(write_rows(tmp_path / "rows", rows))


@pytest.mark.parametrize("big", [2**63, 2**64 - 1, -2**63 - 1])
@pytest.mark.parametrize("name", ["pairs.json", "pairs.jsonl"])
def test_an_id_just_beyond_a_signed_64_bit_integer_names_its_row_key_and_the_range(tmp_path: Path, big: int, name: str) -> None:
    """2**63 to 2**64 - 1 were taken for integers a column holds (as unsigned), so an array of rows
    said only "a value is an integer"; a JSON Lines table's pyarrow reader made them (and larger
    ones) a ``double`` column, refused as "column 'sample_id' has type double", naming neither
    the line nor the value. Both now name the row, the key, the value and the range."""
    for color in ("red", "blue"):
        (tmp_path / f"{color}.png").write_bytes(png_bytes(color))
    rows = [{"image": "red.png", "text": "red", "sample_id": 1}, {"image": "blue.png", "text": "blue", "sample_id": big}]
    path = tmp_path / name
    path.write_text(json.dumps(rows) if name.endswith(".json") else "".join(json.dumps(row) + "\n" for row in rows))
    where = "element 1" if name.endswith(".json") else "line 2"
    with pytest.raises(ValueError, match=rf"{name}': {where} key 'sample_id' is the integer {big}, outside the range of a "
                                         r"64-bit integer \(-9223372036854775808 to 9223372036854775807\): write an id"):
        load_paired_dataset(path)
