"""Hugging Face datasets read with pyarrow: a repository folder (sharded Parquet, splits by file
name), save_to_disk folders (Arrow stream files), a hub id from the hub cache offline and with the
hub unreachable, several captions per image, and the errors a user meets."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.store import Store
from tasks.data.hf_datasets import read_hf_dataset, split_files
from tasks.data.tables import validate_records
from tasks.dataset_task import publish_dataset
from tasks.params import DatasetParams
from tests.tasks.data.sample_images import png_bytes, truncated_png

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


def _rows(start: int, count: int) -> dict[str, list]:
    """Rows ``start…start+count-1``: a distinct image each, two captions (row 5: none)."""
    images = [{"bytes": png_bytes(COLOURS[i % len(COLOURS)], (8 + i, 8)), "path": f"img{i}.png"} for i in range(start, start + count)]
    texts = [[] if i == 5 else [f"caption {i} a", f"caption {i} b"] for i in range(start, start + count)]
    return {"image": images, "text": texts}


def _table(start: int, count: int) -> pa.Table:
    rows = _rows(start, count)
    return pa.table({"image": pa.array(rows["image"], IMAGE), "text": pa.array(rows["text"], pa.list_(pa.string()))})


def _repo(root: Path) -> Path:
    """A dataset repository folder: train in two shards (rows 0-3, 4-6), test in one (rows 7-8)."""
    (root / "data").mkdir(parents=True)
    pq.write_table(_table(0, 4), root / "data" / "train-00000-of-00002.parquet")
    pq.write_table(_table(4, 3), root / "data" / "train-00001-of-00002.parquet")
    pq.write_table(_table(7, 2), root / "data" / "test-00000-of-00001.parquet")
    (root / "README.md").write_text("---\nlicense: cc0\n---\n")
    (root / ".cache").mkdir()
    pq.write_table(_table(0, 1), root / ".cache" / "train-stale.parquet")  # hidden: never read
    return root


def _texts(records) -> list:
    """Captions as text (a reader keeps them as bytes until the checks decode them)."""
    return [r.text.decode() if isinstance(r.text, bytes) else r.text for r in records]


def test_repository_folder_splits_shards_and_first_captions(tmp_path):
    root = _repo(tmp_path / "repo")
    assert [p.name for p in split_files(root, "train")] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    records, _, provenance = read_hf_dataset(str(root))
    assert _texts(records) == [f"caption {i} a" for i in range(5)] + [None, "caption 6 a"]  # shard order, the paper's caption 0
    assert records[2].image == png_bytes("blue", (10, 8))
    assert provenance["files"] == ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    test_records, _, _ = read_hf_dataset(str(root), split="test", n=1)
    assert _texts(test_records) == ["caption 7 a"]
    result = validate_records(records, root, "repo")
    assert result.n_valid == 6 and [(r["row"], r["reason"]) for r in result.rejected.to_pylist()] == [(5, "text_empty")]


def test_all_captions_one_row_each_linked_to_their_image(tmp_path):
    root = _repo(tmp_path / "repo")
    records, _, _ = read_hf_dataset(str(root), captions="all", n=6)
    assert len(records) == 11  # rows 0-5: two captions each, row 5 none (kept, to be reported)
    assert records[3].origin == "row 1, caption 1" and _texts(records)[3] == "caption 1 b" and records[10].origin == "row 5, caption 0"
    result = validate_records(records, root, "repo")
    assert result.n_valid == 10 and result.summary() == {"text_empty": 1}
    by_image: dict[str, set[str]] = {}
    for row in result.table.to_pylist():
        by_image.setdefault(row["image_id"], set()).add(row["text"])
    assert sorted(map(sorted, by_image.values())) == [[f"caption {i} a", f"caption {i} b"] for i in range(5)]


def test_given_sample_ids_get_one_id_per_caption(tmp_path):
    table = _table(0, 3).append_column("sample_id", pa.array(["x0", "x1", "x2"]))
    (tmp_path / "d").mkdir()
    pq.write_table(table, tmp_path / "d" / "train.parquet")
    result = validate_records(*read_hf_dataset(str(tmp_path / "d"), captions="all")[:2], "d")
    assert [(r["sample_id"], r["image_id"], r["text"]) for r in result.table.to_pylist()] == [
        (f"x{i}-{j}", f"x{i}", f"caption {i} {'ab'[j]}") for i in range(3) for j in range(2)]


def _save_to_disk(folder: Path, table: pa.Table, shards: int = 2) -> None:
    """The layout ``Dataset.save_to_disk`` writes: Arrow IPC stream files listed in state.json."""
    folder.mkdir(parents=True)
    names = []
    step = -(-table.num_rows // shards)
    for k in range(shards):
        name = f"data-{k:05d}-of-{shards:05d}.arrow"
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table.slice(k * step, step))
        names.append(name)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": n} for n in names], "_split": None}))
    (folder / "dataset_info.json").write_text("{}")


def test_save_to_disk_folders(tmp_path):
    table = _table(0, 5).rename_columns(["picture", "caption"])
    _save_to_disk(tmp_path / "single", table)
    records, _, _ = read_hf_dataset(str(tmp_path / "single"), image_column="picture", text_column="caption")
    assert _texts(records) == [f"caption {i} a" for i in range(5)]
    assert records[4].image == png_bytes("purple", (12, 8))

    _save_to_disk(tmp_path / "dict" / "train", table, shards=1)
    _save_to_disk(tmp_path / "dict" / "validation", table.slice(0, 2), shards=1)
    (tmp_path / "dict" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "validation"]}))
    records, _, _ = read_hf_dataset(str(tmp_path / "dict"), split="validation", image_column="picture", text_column="caption")
    assert _texts(records) == ["caption 0 a", "caption 1 a"]
    with pytest.raises(ValueError, match="has no split 'test'; its splits: train, validation"):
        read_hf_dataset(str(tmp_path / "dict"), split="test")


def _hub_cache(cache: Path, repo_root: Path) -> None:
    """A hub cache holding dataset ``org/pairs`` at branch ``wit_1024`` (as a download leaves it)."""
    repo = cache / "datasets--org--pairs"
    snapshot = repo / "snapshots" / COMMIT
    for path in repo_root.rglob("*"):
        if path.is_file() and ".cache" not in path.parts:
            target = snapshot / path.relative_to(repo_root)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "wit_1024").write_text(COMMIT)


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "hub-unreachable"])
def test_hub_id_from_the_hub_cache(tmp_path, monkeypatch, offline):
    import huggingface_hub.constants as hub

    _hub_cache(tmp_path / "hub", _repo(tmp_path / "repo"))
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(hub, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: a machine without the hub
    records, _, provenance = read_hf_dataset("org/pairs", revision="wit_1024", n=3)
    assert _texts(records) == ["caption 0 a", "caption 1 a", "caption 2 a"]
    assert provenance["hub_id"] == "org/pairs" and provenance["revision"] == "wit_1024" and provenance["commit"] == COMMIT
    why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
    with pytest.raises(ValueError, match=f"Hugging Face dataset 'org/pairs' at revision 'wit_2048': {why} and it is not in the local hub cache"):
        read_hf_dataset("org/pairs", revision="wit_2048")
    with pytest.raises(ValueError, match="'org/other' at revision 'main'"):
        read_hf_dataset("org/other")


def test_errors_name_the_dataset_and_the_problem(tmp_path):
    root = _repo(tmp_path / "repo")
    with pytest.raises(ValueError, match=r"no files of split 'validation'; splits found: test, train"):
        read_hf_dataset(str(root), split="validation")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['caption'\]; it has \['image', 'text'\] \(set image_column / text_column\)"):
        read_hf_dataset(str(root), text_column="caption")
    with pytest.raises(ValueError, match="no such folder .* and not a hub id"):
        read_hf_dataset(str(tmp_path / "no" / "such" / "folder"))
    with pytest.raises(ValueError, match="is a local folder: revision 'v1' does not apply"):
        read_hf_dataset(str(root), revision="v1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no data files"):
        read_hf_dataset(str(tmp_path / "empty"))
    (tmp_path / "empty" / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "a"}\n')
    with pytest.raises(ValueError, match="it is an ImageFolder .* read it with dataset kind 'path'"):
        read_hf_dataset(str(tmp_path / "empty"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "train.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="train.parquet' could not be read"):
        read_hf_dataset(str(tmp_path / "broken"))
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "state.json").write_text(json.dumps({"_data_files": [{"filename": "../escape.arrow"}]}))
    with pytest.raises(ValueError, match="state.json lists no usable data files"):
        read_hf_dataset(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match="captions must be 'first' or 'all'"):
        read_hf_dataset(str(root), captions="some")


def test_a_split_of_its_own_name(tmp_path):
    (tmp_path / "d" / "validation_matched").mkdir(parents=True)
    pq.write_table(_table(0, 2), tmp_path / "d" / "validation_matched" / "0000.parquet")
    pq.write_table(_table(2, 3), tmp_path / "d" / "train-0000.parquet")
    assert len(read_hf_dataset(str(tmp_path / "d"), split="validation_matched")[0]) == 2
    assert len(read_hf_dataset(str(tmp_path / "d"))[0]) == 3


def test_reading_stops_after_the_first_n_rows(tmp_path):
    root = _repo(tmp_path / "repo")
    (root / "data" / "train-00002-of-00003.parquet").write_bytes(b"never opened")  # a broken later shard
    records, _, provenance = read_hf_dataset(str(root), n=3)
    assert _texts(records) == ["caption 0 a", "caption 1 a", "caption 2 a"]
    assert provenance["files"] == ["data/train-00000-of-00002.parquet"]  # the files actually read
    assert len(read_hf_dataset(str(root), n=5)[0]) == 5  # across a shard boundary
    with pytest.raises(ValueError, match="train-00002-of-00003.parquet' could not be read"):
        read_hf_dataset(str(root), n=None)
    _save_to_disk(tmp_path / "saved", _table(0, 6), shards=3)
    records, _, provenance = read_hf_dataset(str(tmp_path / "saved"), n=3)
    assert _texts(records) == ["caption 0 a", "caption 1 a", "caption 2 a"] and len(provenance["files"]) == 2


def test_arrow_files_in_either_ipc_format(tmp_path):
    (tmp_path / "d").mkdir()
    with pa.OSFile(str(tmp_path / "d" / "train-0.arrow"), "wb") as sink, pa.ipc.new_file(sink, _table(0, 2).schema) as writer:
        writer.write_table(_table(0, 2))  # the random-access file format
    with pa.OSFile(str(tmp_path / "d" / "train-1.arrow"), "wb") as sink, pa.ipc.new_stream(sink, _table(2, 2).schema) as writer:
        writer.write_table(_table(2, 2))  # the stream format datasets writes
    assert _texts(read_hf_dataset(str(tmp_path / "d"))[0]) == [f"caption {i} a" for i in range(4)]


def test_files_without_split_names_are_train(tmp_path):
    (tmp_path / "d" / "shards").mkdir(parents=True)
    pq.write_table(_table(0, 2), tmp_path / "d" / "shards" / "part-0.parquet")
    pq.write_table(_table(2, 2), tmp_path / "d" / "shards" / "part-1.parquet")
    assert len(read_hf_dataset(str(tmp_path / "d"))[0]) == 4
    with pytest.raises(ValueError, match="no files of split 'test'; splits found: train"):
        read_hf_dataset(str(tmp_path / "d"), split="test")


def test_published_as_a_dataset_version(tmp_path):
    """Kind 'huggingface' through the dataset task: bad rows reported and stored, provenance kept."""
    root = _repo(tmp_path / "repo")
    broken = _table(9, 1).set_column(0, "image", pa.array([{"bytes": truncated_png(), "path": None}], IMAGE))
    pq.write_table(broken, root / "data" / "train-00002-of-00003.parquet")
    params = DatasetParams(kind="huggingface", path=str(root), captions="all", n=None)
    manifest = publish_dataset(params, str(tmp_path / "store"))
    catalog = manifest["catalog"]
    assert catalog["n_samples"] == 12 and catalog["n_rejected"] == 3 and catalog["name"] == "repo-train"
    assert catalog["source"]["kind"] == "huggingface" and catalog["source"]["captions"] == "all"
    assert len(catalog["source"]["files"]) == 3
    stored = Store(str(tmp_path / "store")).read_table(f"{manifest['key']}/samples.parquet")
    assert sorted(stored.column("text").to_pylist()) == sorted(f"caption {i} {c}" for i in range(7) if i != 5 for c in "ab")
    rejected = Store(str(tmp_path / "store")).read_table(f"{manifest['key']}/rejected.parquet").to_pylist()
    assert sorted(r["reason"] for r in rejected) == ["image_unreadable", "image_unreadable", "text_empty"]


def test_dataset_params_for_hugging_face():
    assert DatasetParams(kind="huggingface", path="minhuh/prh", revision="wit_1024").split is None  # the reader picks: split_of
    with pytest.raises(ValueError, match="needs dataset.path"):
        DatasetParams(kind="huggingface")
    with pytest.raises(ValueError, match="dataset.revision applies to kind 'huggingface' only"):
        DatasetParams(kind="path", path="x.parquet", revision="v1")
    with pytest.raises(ValueError, match="dataset.captions applies to kind 'path' and 'huggingface' \\(kind is 'openmoji'\\)"):
        DatasetParams(captions="all")
    table = DatasetParams(kind="path", path="x.csv", image_column="file_name", text_column="caption", captions="all")
    assert (table.columns().image, table.columns().text, table.columns().captions) == ("file_name", "caption", "all")
    with pytest.raises(ValueError, match="dataset.image_column and dataset.text_column are both 'x'"):
        DatasetParams(kind="path", path="x.csv", image_column="x", text_column="x")


def test_the_hubs_parquet_conversion_and_a_hub_dataset_without_parquet(tmp_path, monkeypatch):
    """A hub repository kept as images + metadata (no Parquet of its own): the error points to the
    hub's Parquet conversion, whose branch refs/convert/parquet (layout CONFIG/SPLIT/NNNN.parquet)
    reads like any repository, here from the hub cache offline."""
    import huggingface_hub.constants as hub

    repo = tmp_path / "hub" / "datasets--org--images"
    original = repo / "snapshots" / COMMIT
    original.mkdir(parents=True)
    (original / "README.md").write_text("---\nlicense: cc0\n---\n")
    converted_commit = "fedcba9876543210fedcba9876543210fedcba98"
    converted = repo / "snapshots" / converted_commit / "default" / "train"
    converted.mkdir(parents=True)
    pq.write_table(_table(0, 4), converted / "0000.parquet")
    (repo / "refs" / "refs" / "convert").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "refs" / "refs" / "convert" / "parquet").write_text(converted_commit)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"holds no data files .*read revision 'refs/convert/parquet' "
                                         r"\(prh run --dataset hf://datasets/ORG/NAME@refs%2Fconvert%2Fparquet\)"):
        read_hf_dataset("org/images")
    records, _, provenance = read_hf_dataset("org/images", revision="refs/convert/parquet")
    assert _texts(records) == ["caption 0 a", "caption 1 a", "caption 2 a", "caption 3 a"]
    assert provenance["commit"] == converted_commit and provenance["files"] == ["default/train/0000.parquet"]


# ------------------------------------------------------------- found by a hunt of local hub layouts
def test_a_saved_split_is_read_only_as_that_split(tmp_path):
    """A save_to_disk folder of one Dataset records its split in state.json: it was returned for
    any split asked (and described as 'split train')."""
    _save_to_disk(tmp_path / "saved", _table(0, 3))
    state = json.loads((tmp_path / "saved" / "state.json").read_text())
    (tmp_path / "saved" / "state.json").write_text(json.dumps({**state, "_split": "test"}))
    with pytest.raises(ValueError, match=r"is one saved split, 'test' \(state.json\), not 'train': set split: test"):
        read_hf_dataset(str(tmp_path / "saved"), split="train")
    assert len(read_hf_dataset(str(tmp_path / "saved"), split="test")[0]) == 3
    records, _, provenance = read_hf_dataset(str(tmp_path / "saved"))  # split unset: the one it records
    assert len(records) == 3 and provenance["split"] == "test"


def test_a_split_named_by_its_own_files_is_not_merged_with_an_alias(tmp_path):
    """data/eval-*.parquet beside data/test-*.parquet: split 'test' read both (eval is an alias)."""
    (tmp_path / "te" / "data").mkdir(parents=True)
    for name, start in (("train", 0), ("test", 3), ("eval", 6)):
        pq.write_table(_table(start, 2), tmp_path / "te" / "data" / f"{name}-00000-of-00001.parquet")
    assert [p.name for p in split_files(tmp_path / "te", "test")] == ["test-00000-of-00001.parquet"]
    assert [p.name for p in split_files(tmp_path / "te", "eval")] == ["eval-00000-of-00001.parquet"]


def test_several_configs_are_not_merged(tmp_path):
    """The hub's Parquet conversion has <config>/<split>/NNNN.parquet: two configs' train files were
    read as one split."""
    for config, start in (("default", 0), ("other", 50)):
        (tmp_path / "conv" / config / "train").mkdir(parents=True)
        pq.write_table(_table(start, 2), tmp_path / "conv" / config / "train" / "0000.parquet")
    with pytest.raises(ValueError, match=r"holds several configs with a split 'train': default, other; give one config's folder"):
        read_hf_dataset(str(tmp_path / "conv"))
    assert _texts(read_hf_dataset(str(tmp_path / "conv" / "default"))[0]) == ["caption 0 a", "caption 1 a"]


def test_image_paths_are_relative_to_their_own_file(tmp_path):
    """Path-only images of a shard in a subfolder were looked up beside the first shard."""
    root = tmp_path / "paths"
    for folder, start in ((root / "data", 0), (root / "data" / "sub", 3)):
        folder.mkdir(parents=True, exist_ok=True)
        images = []
        for i in range(start, start + 3):
            (folder / f"p{i}.png").write_bytes(png_bytes(COLOURS[i], (8, 8)))
            images.append({"bytes": None, "path": f"p{i}.png"})
        pq.write_table(pa.table({"image": pa.array(images, IMAGE), "text": [f"c{i}" for i in range(start, start + 3)]}),
                       folder / f"train-{start}.parquet")
    records, folder, _ = read_hf_dataset(str(root))
    result = validate_records(records, folder, "paths")
    assert result.n_valid == 6 and result.rejected.num_rows == 0


def test_fixed_length_caption_lists_and_disagreeing_shards(tmp_path):
    """datasets' Sequence(Value('string'), length=3) is a fixed_size_list: it was refused. Shards whose
    columns disagree are named."""
    (tmp_path / "fixed").mkdir()
    texts = pa.array([["a 0", "b 0", "c 0"], ["a 1", "b 1", "c 1"]], pa.list_(pa.string(), 3))
    pq.write_table(pa.table({"image": pa.array(_rows(0, 2)["image"], IMAGE), "text": texts}), tmp_path / "fixed" / "train.parquet")
    assert _texts(read_hf_dataset(str(tmp_path / "fixed"))[0]) == ["a 0", "a 1"]
    assert len(read_hf_dataset(str(tmp_path / "fixed"), captions="all")[0]) == 6
    (tmp_path / "mixed" / "data").mkdir(parents=True)
    pq.write_table(_table(0, 2), tmp_path / "mixed" / "data" / "train-0.parquet")
    pq.write_table(pa.table({"image": [png_bytes("red", (8, 8))], "text": [["x"]]}), tmp_path / "mixed" / "data" / "train-1.parquet")
    with pytest.raises(ValueError, match=r"the columns of data/train-1.parquet do not agree with those of data/train-0.parquet"):
        read_hf_dataset(str(tmp_path / "mixed"))


def test_a_hub_layout_folder_given_as_a_path_dataset_says_how_to_read_it(tmp_path):
    from tasks.data.tables import load_paired_dataset

    root = _repo(tmp_path / "repo")
    with pytest.raises(ValueError, match="looks like a Hugging Face dataset folder .* dataset kind 'huggingface'"):
        load_paired_dataset(root)


# ------------------------------------------------------ split names, hub snapshots, saved datasets
def test_split_names_with_underscores_are_whole_names(tmp_path):
    """data/test-* beside data/test_hard-*: split 'test' read both (file names were cut into words
    at '_'), 'test_hard' was refused, and the error listed 'test' for it. The same for the Parquet
    conversion's default/validation/ beside default/validation_unseen/."""
    (tmp_path / "r" / "data").mkdir(parents=True)
    for name, start in (("train", 0), ("test", 3), ("test_hard", 6)):
        pq.write_table(_table(start, 2), tmp_path / "r" / "data" / f"{name}-00000-of-00001.parquet")
    assert [p.name for p in split_files(tmp_path / "r", "test")] == ["test-00000-of-00001.parquet"]
    assert [p.name for p in split_files(tmp_path / "r", "test_hard")] == ["test_hard-00000-of-00001.parquet"]
    assert _texts(read_hf_dataset(str(tmp_path / "r"), split="test")[0]) == ["caption 3 a", "caption 4 a"]
    with pytest.raises(ValueError, match=r"no files of split 'validation'; splits found: test, test_hard, train \("):
        read_hf_dataset(str(tmp_path / "r"), split="validation")
    with pytest.raises(ValueError, match=r"no files of split 'hard'; splits found: test, test_hard, train \("):
        read_hf_dataset(str(tmp_path / "r"), split="hard")  # a word of another split's name is not a split
    for split, start in (("train", 0), ("validation", 3), ("validation_unseen", 6)):
        (tmp_path / "conv" / "default" / split).mkdir(parents=True)
        pq.write_table(_table(start, 2), tmp_path / "conv" / "default" / split / "0000.parquet")
    assert [p.relative_to(tmp_path / "conv").as_posix() for p in split_files(tmp_path / "conv" / "default", "validation")] == [
        "default/validation/0000.parquet"]
    (tmp_path / "conv" / "default" / "validation" / "0000.parquet").unlink()
    with pytest.raises(ValueError, match=r"no files of split 'validation'; splits found: train, validation_unseen \("):
        split_files(tmp_path / "conv" / "default", "validation")  # not read as validation's by its word


def _blob_linked(snapshot: Path, relative: str, data: bytes) -> None:
    """``relative`` in a hub snapshot as a download leaves it: a link to ``../blobs/<sha256>``."""
    import hashlib
    import os

    blobs = snapshot.parent.parent / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    blob = blobs / hashlib.sha256(data).hexdigest()
    blob.write_bytes(data)
    link = snapshot / relative
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))


def test_image_paths_in_a_hub_snapshot_read_through_the_caches_links(tmp_path, monkeypatch):
    """Rows naming image files of a hub dataset: the snapshot's files are links into blobs/, and every
    image was refused as leading outside the dataset folder. A path whose text leaves the folder, or
    a link that leads outside the cache, is still refused."""
    import huggingface_hub.constants as hub

    from tasks.data.hf_datasets import load_hf_dataset

    repo = tmp_path / "hub" / "datasets--org--paths"
    snapshot = repo / "snapshots" / COMMIT
    for i in range(3):
        _blob_linked(snapshot, f"data/images/{i}.png", png_bytes(COLOURS[i], (8, 8)))
    (tmp_path / "secret.png").write_bytes(png_bytes("black", (8, 8)))
    (snapshot / "data" / "images" / "elsewhere.png").symlink_to(tmp_path / "secret.png")
    paths = [f"images/{i}.png" for i in range(3)] + ["../../../../../secret.png", "images/elsewhere.png"]
    table = pa.table({"image": paths, "text": [f"c{i}" for i in range(5)]})
    pq.write_table(table, tmp_path / "t.parquet")
    _blob_linked(snapshot, "data/train-00000-of-00001.parquet", (tmp_path / "t.parquet").read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    result, _ = load_hf_dataset("org/paths")
    assert sorted(result.table.column("text").to_pylist()) == ["c0", "c1", "c2"]
    assert [(r["row"], r["reason"]) for r in result.rejected.to_pylist()] == [(3, "image_path_unsafe"), (4, "image_path_unsafe")]
    assert "is a link that leads outside the dataset folder" in result.rejected.to_pylist()[1]["detail"]


def test_image_files_a_hub_dataset_names_are_fetched(tmp_path, monkeypatch):
    """Only data files and JSON were fetched: image files the rows name were never downloaded.
    They are fetched (those named, from the same commit) after the data files."""
    import huggingface_hub

    snapshot = tmp_path / "hub" / "datasets--org--imgs" / "snapshots" / COMMIT
    pq.write_table(pa.table({"image": ["img/0.png", "img/1.png", "../x.png"], "text": ["a", "b", "c"]}), tmp_path / "t.parquet")
    remote = {"data/train-00000-of-00001.parquet": (tmp_path / "t.parquet").read_bytes(), "README.md": b"",
              **{f"data/img/{i}.png": png_bytes(COLOURS[i], (8, 8)) for i in range(3)}}
    calls = []

    def snapshot_download(repo_id, repo_type, revision, allow_patterns):
        import fnmatch

        calls.append((revision, allow_patterns))
        for name, data in remote.items():
            if any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns):
                (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
                (snapshot / name).write_bytes(data)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    records, folder, _ = read_hf_dataset("org/imgs")
    assert calls[1] == (COMMIT, ["data/img/0.png", "data/img/1.png"])  # not img/2.png, not a path leading outside
    assert not (snapshot / "data" / "img" / "2.png").exists()
    assert validate_records(records, folder, "imgs", min_valid_rows=1).n_valid == 2
    # the image files cannot be fetched (offline, the hub refusing): their rows are image_missing, the load goes on
    from huggingface_hub.errors import LocalEntryNotFoundError

    for name in ("img/0.png", "img/1.png"):
        (snapshot / "data" / name).unlink()
    fetched = []

    def offline(repo_id, repo_type, revision, allow_patterns):
        fetched.append(allow_patterns)
        if len(fetched) > 1:
            raise LocalEntryNotFoundError("offline")
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    records, folder, _ = read_hf_dataset("org/imgs")
    result = validate_records(records, folder, "imgs", min_valid_rows=0)
    assert len(fetched) == 2 and result.n_valid == 0
    assert [r["reason"] for r in result.rejected.to_pylist()] == ["image_missing", "image_missing", "image_path_unsafe"]


def test_an_empty_saved_dataset_says_it_has_no_rows(tmp_path):
    """save_to_disk of 0 rows writes state.json with _data_files []: the error read like a corrupt folder."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "state.json").write_text(json.dumps({"_data_files": [], "_split": None}))
    with pytest.raises(ValueError, match=r"'.*empty', split 'train', has 0 rows \(state.json lists no data files\)"):
        read_hf_dataset(str(tmp_path / "empty"))


def test_a_saved_dataset_without_a_split_is_not_read_as_any_split(tmp_path):
    """A saved Dataset recording no split (_split null) was read for any split asked; a DatasetDict's
    split folder given as the dataset was read and named 'train'."""
    _save_to_disk(tmp_path / "one", _table(0, 3))
    with pytest.raises(ValueError, match=r"'.*one' is one saved Dataset that records no split \(state.json _split is null\), "
                                         r"so it has no split 'test': leave split unset"):
        read_hf_dataset(str(tmp_path / "one"), split="test")
    assert read_hf_dataset(str(tmp_path / "one"))[2]["split"] == "train"
    assert len(read_hf_dataset(str(tmp_path / "one"), split="train")[0]) == 3
    _save_to_disk(tmp_path / "dd" / "train", _table(0, 3), shards=1)
    _save_to_disk(tmp_path / "dd" / "test", _table(3, 2), shards=1)
    (tmp_path / "dd" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    records, _, provenance = read_hf_dataset(str(tmp_path / "dd" / "test"))
    assert _texts(records) == ["caption 3 a", "caption 4 a"] and provenance["split"] == "test"
    with pytest.raises(ValueError, match=r"'.*test' is one saved split, 'test' \(state.json\), not 'train': set split: test"):
        read_hf_dataset(str(tmp_path / "dd" / "test"), split="train")
    params = DatasetParams(kind="huggingface", path=str(tmp_path / "dd" / "test"))
    assert publish_dataset(params, str(tmp_path / "store"))["catalog"]["name"] == "test-test"


def test_a_file_named_exactly_for_the_split_wins_over_a_word_match(tmp_path: Path) -> None:
    """Words of file names (``imdb-train.parquet``) match only when no file is named exactly for
    the split: ``train.parquet`` (a stem that is the split) is such a file, as is ``train_1.parquet``."""
    root = tmp_path / "r"
    root.mkdir()
    for name in ("train.parquet", "imdb-train.parquet", "test.parquet"):
        pq.write_table(pa.table({"image": ["x.png"], "text": [name]}), root / name)
    assert [p.name for p in split_files(root, "train")] == ["train.parquet"]
    (root / "train.parquet").rename(root / "train_1.parquet")
    assert [p.name for p in split_files(root, "train")] == ["train_1.parquet"]


def test_files_of_one_unusual_layout_name_are_the_train_split(tmp_path: Path) -> None:
    """When no file names a usual split, every file is ``train``'s unless the hub layout gives them
    *several* split names: one (``mine-0000x-of-00002``) is not several."""
    root = tmp_path / "r"
    (root / "data").mkdir(parents=True)
    for i in range(2):
        pq.write_table(pa.table({"image": ["x.png"], "text": [str(i)]}), root / "data" / f"mine-0000{i}-of-00002.parquet")
    assert [p.name for p in split_files(root, "train")] == ["mine-00000-of-00002.parquet", "mine-00001-of-00002.parquet"]


def test_the_first_n_rows_read_only_what_each_shard_still_owes(tmp_path, monkeypatch):
    """``n``: the first n rows; a later shard is asked only for the rows still missing (n minus
    those read), and a shard after the n-th row is not opened."""
    from tasks.data import hf_datasets

    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    for s in range(3):
        pq.write_table(pa.table({"image": [png_bytes("red")] * 3, "text": [f"s{s} r{i}" for i in range(3)]}),
                       root / "data" / f"train-0000{s}-of-00003.parquet")
    asked = []
    real = hf_datasets._read_file

    def spy(path, columns, limit=None):
        asked.append((path.name, limit))
        return real(path, columns, limit)

    monkeypatch.setattr(hf_datasets, "_read_file", spy)
    records, _, _ = read_hf_dataset(str(root), n=4)
    assert _texts(records) == ["s0 r0", "s0 r1", "s0 r2", "s1 r0"]
    assert asked == [("train-00000-of-00003.parquet", 4), ("train-00001-of-00003.parquet", 1)]
