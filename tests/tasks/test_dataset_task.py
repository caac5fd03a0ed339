"""publish_dataset: a user's table with its own column names (rows, version, source record), n, and
the demo's pairs drawn once per rendering recipe."""

from __future__ import annotations

import json

import pytest

from storage.store import Store
from tasks.dataset_task import DatasetNotStored, publish_dataset, stored_dataset_manifest
from tasks.params import AlignmentParams, DatasetParams
from tests.tasks.data.sample_images import png_bytes


def test_a_relative_dataset_path_is_recorded_absolute(tmp_path, monkeypatch, caplog):
    """The source recorded the path as typed ('data/pairs' from a config file): the folder it was
    relative to was lost, and the same file named by its absolute path later read as another
    source ('already stored as ... published from data/pairs')."""
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    for colour in ("red", "blue", "green"):
        (images / f"{colour}.png").write_bytes(png_bytes(colour))
    table = tmp_path / "data" / "pairs.csv"
    table.write_text("image,text\n" + "".join(f"{c}.png,a {c} square\n" for c in ("red", "blue", "green")))
    url = str(tmp_path / "store")
    monkeypatch.chdir(tmp_path)
    manifest = publish_dataset(DatasetParams(kind="path", path="data/pairs.csv", image_root="data/images"), url)
    assert manifest["catalog"]["source"]["path"] == str(table) and manifest["catalog"]["source"]["image_root"] == str(images)
    monkeypatch.chdir(images)
    caplog.clear()
    again = publish_dataset(DatasetParams(kind="path", path=str(table), image_root=str(images)), url)
    assert again["key"] == manifest["key"] and manifest["catalog"]["n_samples"] == 3
    assert "already stored as" not in caplog.text


def test_a_version_recorded_with_a_relative_path_is_the_same_source(tmp_path, monkeypatch, caplog):
    """A version published before sources were recorded absolute keeps 'data/pairs.csv': read
    from the same working directory it is the same source, not a warning on every rerun."""
    import tasks.dataset_task as dataset_task

    images = tmp_path / "data"
    images.mkdir()
    for colour in ("red", "blue", "green"):
        (images / f"{colour}.png").write_bytes(png_bytes(colour))
    (images / "pairs.csv").write_text("image,text\n" + "".join(f"{c}.png,a {c} square\n" for c in ("red", "blue", "green")))
    url = str(tmp_path / "store")
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as old:
        old.setattr(dataset_task, "_absolute", lambda path: path)  # as prh recorded it before
        first = publish_dataset(DatasetParams(kind="path", path="data/pairs.csv"), url)
    assert first["catalog"]["source"]["path"] == "data/pairs.csv"
    caplog.clear()
    assert publish_dataset(DatasetParams(kind="path", path="data/pairs.csv"), url)["key"] == first["key"]
    assert "already stored as" not in caplog.text
    publish_dataset(DatasetParams(kind="path", path="data/pairs.csv", name="renamed"), url)
    assert "already stored as dataset 'pairs'" in caplog.text  # what does differ is still said


def test_image_folder_with_other_column_names_is_published_with_its_columns(tmp_path):
    root = tmp_path / "pets"
    root.mkdir()
    colours = ["red", "blue", "green"]
    for colour in colours:
        (root / f"{colour}.png").write_bytes(png_bytes(colour))
    (root / "metadata.jsonl").write_text("".join(json.dumps({"path": f"{c}.png", "sentences": [f"a {c} square", c]}) + "\n"
                                                 for c in colours))
    url = str(tmp_path / "store")
    params = DatasetParams(kind="path", path=str(root), image_column="path", text_column="sentences", captions="all")
    manifest = publish_dataset(params, url)
    catalog = manifest["catalog"]
    assert (catalog["name"], catalog["n_samples"], catalog["n_rejected"]) == ("pets", 6, 0)
    assert catalog["source"] == {"kind": "path", "path": str(root), "n": None, "image_column": "path", "text_column": "sentences",
                                 "captions": "all"}
    samples = Store(url).read_table(f"{manifest['key']}/samples.parquet").to_pylist()
    by_image: dict[str, list[str]] = {}
    for row in samples:
        by_image.setdefault(row["image_id"], []).append(row["text"])
    assert sorted(sorted(texts) for texts in by_image.values()) == sorted(sorted([f"a {c} square", c]) for c in colours)
    # an ImageFolder read by the convention's file_name column says so
    (root / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{c}.png", "text": c}) + "\n" for c in colours))
    plain = publish_dataset(DatasetParams(kind="path", path=str(root)), url)
    assert plain["catalog"]["source"] == {"kind": "path", "path": str(root), "n": None, "image_column": "file_name",
                                          "text_column": "text", "captions": "first"}
    (root / "metadata.jsonl").write_text("".join(json.dumps({"path": f"{c}.png", "sentences": [f"a {c} square", c]}) + "\n"
                                                 for c in colours))
    # the same pairs under the default policy: the first caption of each image, another version
    first = publish_dataset(DatasetParams(kind="path", path=str(root), image_column="path", text_column="sentences"), url)
    assert first["catalog"]["n_samples"] == 3 and first["key"] != manifest["key"]


def test_n_of_a_table_is_honoured_and_recorded_and_unset_means_all(tmp_path, caplog):
    root, lines = _three_squares(tmp_path)
    url = str(tmp_path / "store")
    whole = publish_dataset(DatasetParams(kind="path", path=str(root / "pairs.csv")), url)
    assert (whole["catalog"]["n_samples"], whole["catalog"]["source"]["n"]) == (3, None)
    with caplog.at_level("INFO", logger="prh.dataset"):
        head = publish_dataset(DatasetParams(kind="path", path=str(root / "pairs.csv"), n=2), url)
    assert (head["catalog"]["n_samples"], head["catalog"]["source"]["n"]) == (2, 2)
    assert "dataset pairs: 2 pairs from its first 2 rows (dataset.n; null reads all)" in caplog.text
    texts = Store(url).read_table(f"{head['key']}/samples.parquet").column("text").to_pylist()
    assert sorted(texts) == ["a blue square", "a red square"]
    caplog.clear()
    with caplog.at_level("INFO", logger="prh.dataset"):  # the data hunt: "from its first 500 rows" of a 3-row table
        publish_dataset(DatasetParams(kind="path", path=str(root / "pairs.csv"), n=500), url)
    assert "dataset pairs: 3 pairs from all its 3 rows (dataset.n=500 asks for more)" in caplog.text


def test_demo_pairs_are_drawn_once_per_recipe(tmp_path, monkeypatch, caplog):
    """A rerun with the same OpenMoji recipe reuses the stored version without drawing a glyph;
    another recipe, or a store that lost the version, draws again."""
    from tasks.data import openmoji

    url = str(tmp_path / "store")
    params = DatasetParams(kind="openmoji", n=24, seed=3, image_size=32)
    first = publish_dataset(params, url)
    drawn = []
    real = openmoji.build_openmoji_pairs
    monkeypatch.setattr(openmoji, "build_openmoji_pairs", lambda **kw: drawn.append(kw) or real(**kw))
    with caplog.at_level("INFO", logger="prh.dataset"):
        again = publish_dataset(params, url)
    assert again == first and drawn == []
    assert "already stored; same rendering recipe, not drawn again" in caplog.text
    other = publish_dataset(DatasetParams(kind="openmoji", n=24, seed=4, image_size=32), url)
    assert drawn == [{"n": 24, "seed": 4, "image_size": 32}] and other["key"] != first["key"]
    store = Store(url)
    for path in store.fs.find(store.path(first["key"])):  # the version is gone (e.g. removed by hand)
        store.fs.rm(path)
    assert publish_dataset(params, url)["key"] == first["key"] and len(drawn) == 2
    with pytest.raises(ValueError, match=r"24 sample\(s\), too few: alignment.topk=29"):  # the sample check still applies
        publish_dataset(params, url, alignment=AlignmentParams(metrics=["mutual_knn"], topk=29))


def test_image_root_is_used_and_recorded(tmp_path):
    (tmp_path / "val").mkdir()
    (tmp_path / "annotations").mkdir()
    for colour in ("red", "blue"):
        (tmp_path / "val" / f"{colour}.png").write_bytes(png_bytes(colour))
    (tmp_path / "annotations" / "pairs.csv").write_text("image,text\nred.png,red\nblue.png,blue\n")
    params = DatasetParams(kind="path", path=str(tmp_path / "annotations" / "pairs.csv"), image_root=str(tmp_path / "val"))
    manifest = publish_dataset(params, str(tmp_path / "store"))
    assert manifest["catalog"]["n_samples"] == 2 and manifest["catalog"]["source"]["image_root"] == str(tmp_path / "val")
    # absolute paths: read when they lie inside image_root, refused (naming it) elsewhere
    (tmp_path / "annotations" / "absolute.csv").write_text(f"image,text\n{tmp_path / 'val' / 'red.png'},red\n"
                                                           f"{tmp_path / 'val' / 'blue.png'},blue\n{tmp_path / 'annotations' / 'absolute.csv'},x\n")
    absolute = publish_dataset(DatasetParams(kind="path", path=str(tmp_path / "annotations" / "absolute.csv"),
                                             image_root=str(tmp_path / "val")), str(tmp_path / "store2"))
    assert absolute["catalog"]["n_samples"] == 2 and absolute["catalog"]["n_rejected"] == 1
    rejected = Store(str(tmp_path / "store2")).read_table(f"{absolute['key']}/rejected.parquet").to_pylist()
    assert rejected[0]["reason"] == "image_path_unsafe" and "lies outside the dataset folder" in rejected[0]["detail"]
    with pytest.raises(ValueError, match="dataset.image_root applies to kind 'path' only"):
        DatasetParams(image_root="val")


def _coco_params(tmp_path) -> DatasetParams:
    """A COCO captions file of 3 images with 2 captions each; the params draw 2 images (4 pairs)."""
    (tmp_path / "val2017").mkdir()
    (tmp_path / "annotations").mkdir()
    images = [{"id": 7 + i, "file_name": f"{colour}.png"} for i, colour in enumerate(("red", "blue", "green"))]
    for image in images:
        (tmp_path / "val2017" / image["file_name"]).write_bytes(png_bytes(image["file_name"][:-4]))
    annotations = [{"id": 100 + j, "image_id": image["id"], "caption": f"{image['file_name'][:-4]} square {j}"}
                   for j in range(2) for image in images]
    path = tmp_path / "annotations" / "captions_val2017.json"
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": annotations}))
    return DatasetParams(kind="path", path=str(path), image_root=str(tmp_path / "val2017"), captions="all", n=2)


def test_coco_captions_file_is_published_with_every_caption(tmp_path):
    params = _coco_params(tmp_path)
    manifest = publish_dataset(params, str(tmp_path / "store"))
    catalog = manifest["catalog"]
    assert catalog["name"] == "captions_val2017" and (catalog["n_samples"], catalog["n_images"]) == (4, 2)
    per_image = AlignmentParams(metrics=["mutual_knn"], topk=2, unit="image")
    with pytest.raises(ValueError, match=r"dataset 'captions_val2017' has 2 image\(s\) \(alignment.unit 'image'\), too few: "
                                         r"alignment.topk=2 \(mutual_knn\) needs topk \+ 2 = 4"):
        publish_dataset(params, str(tmp_path / "store2"), alignment=per_image)
    assert publish_dataset(params, str(tmp_path / "store2"), alignment=per_image.model_copy(update={"unit": "sample"}))
    assert catalog["source"]["captions"] == "all" and catalog["source"]["n"] == 2
    store = Store(str(tmp_path / "store"))
    rows = store.read_table(f"{manifest['key']}/samples.parquet").to_pylist()
    assert [(r["sample_id"], r["text"], r["image_id"]) for r in rows] == [
        ("7-0", "red square 0", "7"), ("7-1", "red square 1", "7"), ("8-0", "blue square 0", "8"), ("8-1", "blue square 1", "8")]


def test_karpathy_split_is_named_and_recorded(tmp_path):
    images = [{"filepath": "val2014", "filename": f"{colour}.png", "imgid": i, "cocoid": 40 + i, "split": split,
               "sentences": [{"raw": f"a {colour} square"}]}
              for i, (colour, split) in enumerate((("red", "test"), ("blue", "val"), ("green", "test"), ("red", "test")))]
    (tmp_path / "val2014").mkdir()
    for colour in ("red", "blue", "green"):
        (tmp_path / "val2014" / f"{colour}.png").write_bytes(png_bytes(colour))
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    manifest = publish_dataset(DatasetParams(kind="path", path=str(path), split="test"), str(tmp_path / "store"))
    catalog = manifest["catalog"]
    assert (catalog["name"], catalog["n_samples"], catalog["source"]["split"]) == ("dataset_coco-test", 3, "test")
    rows = Store(str(tmp_path / "store")).read_table(f"{manifest['key']}/samples.parquet").to_pylist()
    assert [(r["sample_id"], r["text"]) for r in rows] == [("40", "a red square"), ("42", "a green square"), ("43", "a red square")]
    whole = publish_dataset(DatasetParams(kind="path", path=str(path)), str(tmp_path / "store"))["catalog"]
    assert (whole["name"], whole["n_samples"], "split" in whole["source"]) == ("dataset_coco", 4, False)


def test_the_same_valid_rows_from_another_file_reuse_the_stored_version_and_say_so(tmp_path, caplog):
    """A dataset version is its valid rows: another file (or name) holding them gets the stored
    version, whose name, source and rejected rows stay those of its first publication; a
    warning says which."""
    root = tmp_path / "pairs"
    root.mkdir()
    for colour in ("red", "blue", "green"):
        (root / f"{colour}.png").write_bytes(png_bytes(colour))
    rows = "image,text\n" + "".join(f"{c}.png,a {c} square\n" for c in ("red", "blue", "green"))
    (root / "first.csv").write_text(rows + "gone.png,missing\n")
    (root / "second.csv").write_text(rows + "gone.png,missing\nlost.png,missing too\n")
    url = str(tmp_path / "store")
    first = publish_dataset(DatasetParams(kind="path", path=str(root / "first.csv")), url)
    with caplog.at_level("WARNING", logger="prh.dataset"):
        again = publish_dataset(DatasetParams(kind="path", path=str(root / "first.csv")), url)
    assert again == first and "already stored as dataset" not in caplog.text  # a plain rerun: nothing to say
    with caplog.at_level("WARNING", logger="prh.dataset"):
        second = publish_dataset(DatasetParams(kind="path", path=str(root / "second.csv"), name="renamed"), url)
    version = first["catalog"]["dataset_version"]
    assert second["catalog"] == first["catalog"] and first["catalog"]["n_rejected"] == 1
    assert (f"dataset renamed: its 3 valid rows are already stored as dataset 'first' (version {version}, published from "
            f"{root / 'first.csv'} with 1 rejected rows)") in caplog.text


def _colour_table(root) -> str:
    root.mkdir()
    for colour in ("red", "blue", "green"):
        (root / f"{colour}.png").write_bytes(png_bytes(colour))
    (root / "pairs.csv").write_text("image,text\n" + "".join(f"{c}.png,a {c} square\n" for c in ("red", "blue", "green")))
    return str(root / "pairs.csv")


def test_a_stored_dataset_version_is_read_from_the_store_without_its_source(tmp_path, caplog):
    """What the alignment stage of prh-staged uses: the manifest the extraction stage published,
    equal to what loading the source returns, with the source gone; a config naming another source
    only gets a warning (the version decides); too few rows for the alignment still fail."""
    import shutil

    path = _colour_table(tmp_path / "pairs")
    url = str(tmp_path / "store")
    published = publish_dataset(DatasetParams(kind="path", path=path), url)
    version = published["catalog"]["dataset_version"]
    shutil.rmtree(tmp_path / "pairs")  # the CPU box has no such folder
    with caplog.at_level("INFO", logger="prh.dataset"):
        assert stored_dataset_manifest(version, url, DatasetParams(kind="path", path=path)) == published
    assert f"dataset pairs: 3 pairs, version {version} (from the store; its source is not read here)" in caplog.text
    assert "was published from" not in caplog.text
    with caplog.at_level("WARNING", logger="prh.dataset"):
        assert stored_dataset_manifest(version, url, DatasetParams(kind="path", path=str(tmp_path / "other.csv"))) == published
    assert f"dataset version {version} (dataset 'pairs') was published from {path}, but config.dataset is " in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="prh.dataset"):  # the same table, another row limit: said too
        assert stored_dataset_manifest(version, url, DatasetParams(kind="path", path=path, n=2)) == published
    assert f"was published from {path}, but config.dataset is n 2 (stored: None); the stored version is used" in caplog.text
    with pytest.raises(ValueError, match="topk"):
        stored_dataset_manifest(version, url, alignment=AlignmentParams(metrics=["mutual_knn"], topk=5))


def test_a_stored_demo_version_asked_for_with_other_rows_says_so(tmp_path, caplog):
    """``dataset_version`` with the demo's ``n`` (or seed, image size) changed: the stored
    version's rows are used, as the version decides, but nothing said so (a user who asked for
    16 pairs got 8 without a word)."""
    url = str(tmp_path / "store")
    published = publish_dataset(DatasetParams(kind="openmoji", n=8, image_size=32), url)
    version = published["catalog"]["dataset_version"]
    with caplog.at_level("WARNING", logger="prh.dataset"):
        assert stored_dataset_manifest(version, url, DatasetParams(kind="openmoji", n=8, image_size=32)) == published
        assert "config.dataset is" not in caplog.text
        assert stored_dataset_manifest(version, url, DatasetParams(kind="openmoji", n=16, seed=1, image_size=32)) == published
    assert f"dataset version {version} (dataset 'openmoji-8') was published from openmoji, but config.dataset is n 16 " \
        "(stored: 8), seed 1 (stored: 0); the stored version is used (dataset_version decides)" in caplog.text


def test_a_version_stored_without_its_image_count_is_counted_from_its_samples(tmp_path):
    """A dataset published before prh recorded ``n_images``: a unit 'image' run with too few
    images was checked against the caption count, passed, and failed only after extraction."""
    url = str(tmp_path / "store")
    published = publish_dataset(_coco_params(tmp_path), url)
    older = {**published, "catalog": {k: v for k, v in published["catalog"].items() if k != "n_images"}}
    Store(url).write_json(f"{published['key']}/manifest.json", older)
    version = published["catalog"]["dataset_version"]
    per_image = AlignmentParams(metrics=["mutual_knn"], topk=2, unit="image")
    with pytest.raises(ValueError, match=r"has 2 image\(s\) \(alignment.unit 'image'\), too few"):
        stored_dataset_manifest(version, url, alignment=per_image)
    assert stored_dataset_manifest(version, url, alignment=AlignmentParams(metrics=["mutual_knn"], topk=2))["catalog"] == older["catalog"]


def test_a_dataset_version_not_in_the_store_is_refused_naming_store_and_version(tmp_path):
    path = _colour_table(tmp_path / "pairs")
    url = str(tmp_path / "store")
    publish_dataset(DatasetParams(kind="path", path=path), url)
    with pytest.raises(DatasetNotStored) as refused:
        stored_dataset_manifest("0123456789abcdef", url)
    message = str(refused.value)
    assert "dataset version 0123456789abcdef is not in the store " in message and Store(url).display_url in message
    assert "prh-extract" in message
    with pytest.raises(DatasetNotStored, match="not in the store"):  # an empty store: no datasets/ at all
        stored_dataset_manifest("0123456789abcdef", str(tmp_path / "empty"))
    for bad in ("rendered", "../x", "0123456789ABCDEF", ""):
        with pytest.raises(ValueError, match="is not a dataset version id"):
            stored_dataset_manifest(bad, url)


def test_too_few_valid_rows_for_the_alignment_are_refused_counting_the_rejected_rows_per_reason(tmp_path, caplog):
    """Fewer valid rows than ``alignment.min_samples()``: nothing is published; the error (and the
    warning before it) count the rejected rows of each reason."""
    root = tmp_path / "pairs"
    (root / "pairs.csv").parent.mkdir()
    for colour in ("red", "blue", "green"):
        (root / f"{colour}.png").write_bytes(png_bytes(colour))
    (root / "pairs.csv").write_text("image,text\n" + "".join(f"{c}.png,a {c} square\n" for c in ("red", "blue", "green"))
                                    + "gone.png,missing\nlost.png,missing too\n")
    alignment = AlignmentParams(metrics=["mutual_knn"], topk=10)
    with caplog.at_level("WARNING", logger="prh.dataset"), pytest.raises(ValueError) as refused:
        publish_dataset(DatasetParams(kind="path", path=str(root / "pairs.csv")), str(tmp_path / "store"), alignment=alignment)
    message = str(refused.value)
    reason = message.rsplit("rejected rows by reason: ", 1)[1].split(": ")[0]
    assert message.endswith(f"rejected rows by reason: {reason}: 2") and f"rejected 2 rows ({reason}: 2)" in caplog.text
    assert not list((tmp_path / "store").glob("datasets/*/manifest.json"))


def test_a_new_version_of_a_stored_dataset_says_how_it_differs(tmp_path, caplog):
    """Reviewer R: a new dataset version (its rows changed: another n, an edited file, other
    dataset code) re-extracts every model with a plain "to extract"; the dataset stage now says
    why, from the stored version of that name closest to the run."""
    root, lines = _three_squares(tmp_path)
    url = str(tmp_path / "store")
    with caplog.at_level("INFO", logger="prh.dataset"):
        whole = publish_dataset(DatasetParams(kind="path", path=str(root / "pairs.csv")), url)
    assert "a new version" not in caplog.text  # the first of its name: nothing to explain
    caplog.clear()
    with caplog.at_level("INFO", logger="prh.dataset"):
        head = publish_dataset(DatasetParams(kind="path", path=str(root / "pairs.csv"), n=2), url)
    version = whole["catalog"]["dataset_version"]
    assert (f"dataset pairs: a new version, so every model is extracted again over it: the store's version {version} "
            f"of 'pairs' (published ") in caplog.text
    assert "was read with another n (None, now 2)" in caplog.text and "code" not in caplog.text.split("a new version")[1]
    caplog.clear()
    (root / "pairs.csv").write_text("\n".join(lines[:3] + ["green.png,a green box"]) + "\n")  # the file edited
    with caplog.at_level("INFO", logger="prh.dataset"):
        publish_dataset(DatasetParams(kind="path", path=str(root / "pairs.csv")), url)
    # the closest stored version is the whole file's (same settings): its rows changed
    assert f"the store's version {version} of 'pairs' (published " in caplog.text
    assert "has the same source settings and code: the source's rows themselves changed" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="prh.dataset"):  # stored already: no new version, nothing to explain
        assert publish_dataset(DatasetParams(kind="path", path=str(root / "pairs.csv"), n=2), url)["key"] == head["key"]
    assert "a new version" not in caplog.text


def _three_squares(tmp_path) -> tuple:
    """A folder ``pairs`` with three coloured squares and ``pairs.csv`` naming them (header first):
    the folder and the CSV's lines."""
    root = tmp_path / "pairs"
    root.mkdir()
    lines = ["image,text"]
    for colour in ("red", "blue", "green"):
        (root / f"{colour}.png").write_bytes(png_bytes(colour))
        lines.append(f"{colour}.png,a {colour} square")
    (root / "pairs.csv").write_text("\n".join(lines) + "\n")
    return root, lines


@pytest.mark.parametrize("layout", ["csv", "jsonl", "json", "metadata"])
def test_a_misspelt_caption_column_is_refused_naming_the_key_to_set(tmp_path, layout):
    """The researcher review: `text_column: captoin` (or --text-column captoin) was refused with
    "lacks required column(s) ['captoin']; it has ['image', 'caption']": the columns, but not the
    setting that named the missing one. The error now names dataset.text_column (and the flag),
    with the column it likely meant; nothing is published."""
    root = tmp_path / "pairs"
    root.mkdir()
    colours = ("red", "blue", "green")
    for colour in colours:
        (root / f"{colour}.png").write_bytes(png_bytes(colour))
    image = "file_name" if layout == "metadata" else "image"
    rows = [{image: f"{c}.png", "caption": f"a {c} square"} for c in colours]
    path = {"csv": root / "pairs.csv", "jsonl": root / "pairs.jsonl", "json": root / "pairs.json",
            "metadata": root}[layout]
    if layout == "csv":
        path.write_text("image,caption\n" + "".join(f"{r['image']},{r['caption']}\n" for r in rows))
    elif layout == "json":
        path.write_text(json.dumps(rows))
    else:
        (root / "metadata.jsonl" if layout == "metadata" else path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    url = str(tmp_path / "store")
    with pytest.raises(ValueError) as refused:
        publish_dataset(DatasetParams(kind="path", path=str(path), text_column="captoin"), url)
    message = str(refused.value)
    assert "'captoin'" in message.split("dataset.text_column")[0]  # the loader's own words come first
    assert message.endswith("dataset.text_column is 'captoin', which the dataset lacks: set it to its caption column "
                            "('caption'?); on the command line --text-column, with --dataset"), message
    with pytest.raises(ValueError) as refused:  # the default name, not in the table either: the key is named too
        publish_dataset(DatasetParams(kind="path", path=str(path)), url)
    assert str(refused.value).endswith("dataset.text_column is 'text', which the dataset lacks: set it to its caption "
                                       "column; on the command line --text-column, with --dataset"), str(refused.value)
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").glob("datasets/*/manifest.json"))


def test_a_misspelt_image_column_is_refused_naming_the_key_to_set(tmp_path):
    """As the caption column: `image_column: img` names dataset.image_column and the likely column."""
    root = tmp_path / "pairs"
    root.mkdir()
    (root / "red.png").write_bytes(png_bytes("red"))
    (root / "pairs.csv").write_text("images,text\nred.png,a red square\n")
    with pytest.raises(ValueError) as refused:
        publish_dataset(DatasetParams(kind="path", path=str(root / "pairs.csv"), image_column="imags"), str(tmp_path / "s"))
    assert str(refused.value).endswith("dataset.image_column is 'imags', which the dataset lacks: set it to its image "
                                       "column ('images'?); on the command line --image-column, with --dataset")


def test_a_misspelt_caption_column_of_a_hugging_face_dataset_names_the_key_too(tmp_path):
    """A hub dataset's file that lacks the caption column: its error names dataset.text_column."""
    from tests.tasks.data.test_hf_datasets import _repo

    root = _repo(tmp_path / "repo")
    with pytest.raises(ValueError) as refused:
        publish_dataset(DatasetParams(kind="huggingface", path=str(root), text_column="txt"), str(tmp_path / "store"))
    assert "lacks column(s) ['txt']; it has ['image', 'text']" in str(refused.value)
    assert str(refused.value).endswith("dataset.text_column is 'txt', which the dataset lacks: set it to its caption column "
                                       "('text'?); on the command line --text-column, with --dataset"), str(refused.value)
