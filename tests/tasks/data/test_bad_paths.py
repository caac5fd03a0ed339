"""Image and caption paths that cannot name a file (a NUL character, a name longer than the file
system allows, a symbolic-link loop) reject their row, and the load goes on; such an input error
never reaches the tasks' retry policy as an ``OSError``. An ImageFolder table naming its images by
absolute paths inside the folder reports none of them as unnamed."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.data import images
from tasks.data.images import ImageProblem, read_image_file
from tasks.data.sources import ColumnMap
from tasks.data.tables import load_paired_dataset
from tasks.dataset_task import publish_dataset
from tasks.params import DatasetParams
from tasks.retries import is_transient
from tests.tasks.data.sample_images import png_bytes

COLOURS = ("red", "green", "blue")
LONG_NAME = "x" * 300 + ".png"  # one name of 304 bytes: more than NAME_MAX (255)


def _images(folder: Path) -> list[str]:
    """Three distinct PNGs in ``folder``; their file names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for colour in COLOURS:
        (folder / f"{colour}.png").write_bytes(png_bytes(colour))
        names.append(f"{colour}.png")
    return names


def _reasons(result) -> list[tuple[int | None, str]]:
    return [(r["row"], r["reason"]) for r in result.rejected.to_pylist()]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize(("bad", "words"), [
    ("blue\x00.png", "NUL character"),
    (LONG_NAME, "304 bytes"),
    ("loop.png", "symbolic-link loop"),
])
def test_a_path_that_names_no_file_rejects_its_row_only(tmp_path, suffix, bad, words):
    names = _images(tmp_path)
    (tmp_path / "loop.png").symlink_to("loop.png")
    paths = [names[0], names[1], bad]
    table = tmp_path / f"pairs{suffix}"
    if suffix == ".csv":
        table.write_text("image,text\n" + "".join(f"{p},caption {i}\n" for i, p in enumerate(paths)))
    else:
        pq.write_table(pa.table({"image": paths, "text": [f"caption {i}" for i in range(3)]}), table)
    result = load_paired_dataset(table)
    assert result.n_valid == 2
    assert _reasons(result) == [(2, "image_missing")]
    detail = result.rejected.column("detail")[0].as_py()
    assert detail.startswith("row 2") and words in detail


def test_a_long_path_is_shown_shortened(tmp_path):
    result = read_image_file(tmp_path, "y" * 5000)
    assert isinstance(result, ImageProblem) and result.reason == "image_missing"
    assert "(5000 characters)" in result.detail and len(result.detail) < 600


def test_a_folder_with_a_looping_image_or_caption_file_loads_the_rest(tmp_path):
    folder = tmp_path / "pets"
    for name in _images(folder):
        (folder / name).with_suffix(".txt").write_text(f"a {name[:-4]} square")
    (folder / "loop.png").symlink_to("loop.png")
    (folder / "loop.txt").write_text("a loop")
    (folder / "cat.png").write_bytes(png_bytes("black"))
    (folder / "cat.txt").symlink_to("cat.txt")
    result = load_paired_dataset(folder)
    assert sorted(result.table.column("text").to_pylist()) == sorted(f"a {c} square" for c in COLOURS)
    rejected = {r["sample_id"]: (r["reason"], r["detail"]) for r in result.rejected.to_pylist()}
    assert rejected.keys() == {"loop", "cat"}
    assert rejected["loop"][0] == "image_missing" and "symbolic-link loop" in rejected["loop"][1]
    assert rejected["cat"][0] == "text_missing" and "cat.txt is a symbolic-link loop" in rejected["cat"][1]


def test_swapped_columns_with_a_long_caption_are_a_clear_error_not_a_retried_one(tmp_path):
    _images(tmp_path)
    long_caption = "A very detailed caption " * 12  # 288 bytes, read as a file name
    (tmp_path / "t.csv").write_text(f"file,caption\nred.png,a cat\ngreen.png,a dog\nblue.png,{long_caption}\n")
    with pytest.raises(ValueError, match=r"0 valid row\(s\).*image_missing: 3") as raised:
        load_paired_dataset(tmp_path / "t.csv", columns=ColumnMap(image="caption", text="file"))
    assert not is_transient(raised.value)


def test_publishing_a_table_with_bad_paths_loads_the_rest_or_fails_without_a_retry(tmp_path):
    names = _images(tmp_path / "data")
    (tmp_path / "data" / "loop.png").symlink_to("loop.png")
    bad = ["a\x00.png", LONG_NAME, "loop.png"]
    table = tmp_path / "data" / "pairs.parquet"
    pq.write_table(pa.table({"image": [*names, *bad], "text": [f"caption {i}" for i in range(6)]}), table)
    manifest = publish_dataset(DatasetParams(kind="path", path=str(table)), str(tmp_path / "store"))
    assert (manifest["catalog"]["n_samples"], manifest["catalog"]["n_rejected"]) == (3, 3)
    # only bad paths: the load fails as a bad input, which the load-dataset task's retry policy does not retry
    pq.write_table(pa.table({"image": bad, "text": ["a", "b", "c"]}), table)
    with pytest.raises(ValueError, match=r"0 valid row\(s\).*image_missing: 3") as raised:
        publish_dataset(DatasetParams(kind="path", path=str(table)), str(tmp_path / "store"))
    assert not is_transient(raised.value)


def test_a_file_system_io_error_is_not_taken_for_a_bad_row(tmp_path, monkeypatch):
    _images(tmp_path)

    def broken(self, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", str(self))

    monkeypatch.setattr(Path, "exists", broken)
    with pytest.raises(OSError) as raised:
        read_image_file(tmp_path, "red.png")
    assert raised.value.errno == errno.EIO and is_transient(raised.value)


def test_a_lookup_the_system_refuses_is_unreadable(tmp_path, monkeypatch):
    _images(tmp_path)

    def refused(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "exists", refused)
    result = read_image_file(tmp_path, "red.png")
    assert isinstance(result, ImageProblem) and result.reason == "image_unreadable"
    assert "Permission denied" in result.detail


def test_a_symlink_loop_as_a_3_13_python_reports_it(tmp_path, monkeypatch):
    """From Python 3.13 ``Path.resolve`` raises ``OSError(ELOOP)`` where 3.11 raises RuntimeError."""

    def looping(self, *args, **kwargs):
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(self))

    real = Path.resolve
    monkeypatch.setattr(Path, "resolve", lambda self, *a, **k: looping(self) if self.name == "loop.png" else real(self, *a, **k))
    result = read_image_file(tmp_path, "loop.png")
    assert isinstance(result, ImageProblem) and result.reason == "image_missing"
    assert "symbolic-link loop" in result.detail
    assert images._lookup_problem("x", OSError(errno.EIO, "Input/output error")) is None


def test_a_dataset_path_or_image_root_too_long_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="dataset path .* is too long to name a file") as raised:
        load_paired_dataset(tmp_path / ("d" * 300 + ".csv"))
    assert not is_transient(raised.value)
    _images(tmp_path)
    (tmp_path / "t.csv").write_text("image,text\nred.png,a\ngreen.png,b\n")
    with pytest.raises(ValueError, match="image_root .* is too long to name a file"):
        load_paired_dataset(tmp_path / "t.csv", image_root=tmp_path / ("r" * 300))


@pytest.mark.parametrize("through_link", [False, True])
def test_an_image_folder_naming_images_by_absolute_paths_reports_none_unnamed(tmp_path, through_link):
    real = tmp_path / "real"
    names = _images(real / "imgs")
    (real / "imgs" / "extra.png").write_bytes(png_bytes("black"))  # really not named by the table
    folder = real
    if through_link:
        folder = tmp_path / "link"
        folder.symlink_to(real, target_is_directory=True)
    named = real.resolve() if through_link else folder  # the folder as the table's writer saw it
    rows = [f"{named}/imgs/{name},caption {i}" for i, name in enumerate(names[1:], start=1)]
    rows.append(f"/{named}/./imgs/../imgs/{names[0]},caption 0")  # another spelling of the same place
    (real / "metadata.csv").write_text("file_name,text\n" + "\n".join(rows) + "\n")
    result = load_paired_dataset(folder)
    assert sorted(result.table.column("text").to_pylist()) == [f"caption {i}" for i in range(3)]
    assert [(r["reason"], r["detail"]) for r in result.rejected.to_pylist()] == [
        ("text_missing", "image imgs/extra.png is not named in metadata.csv")]


def test_an_absolute_path_outside_the_image_folder_is_still_refused_and_its_images_reported(tmp_path):
    outside = tmp_path / "outside"
    _images(outside)
    folder = tmp_path / "ds"
    names = _images(folder)
    rows = [f"{folder}/{names[0]},a", f"{folder}/{names[1]},b", f"{outside}/{names[2]},c"]
    (folder / "metadata.csv").write_text("file_name,text\n" + "\n".join(rows) + "\n")
    result = load_paired_dataset(folder)
    assert result.n_valid == 2
    assert sorted(_reasons(result), key=str) == sorted([(2, "image_path_unsafe"), (None, "text_missing")], key=str)


def _outside_row_detail(result) -> str:
    (detail,) = [r["detail"] for r in result.rejected.to_pylist() if r["reason"] == "image_path_unsafe"]
    return detail


def test_an_absolute_path_outside_a_table_advises_image_root(tmp_path):
    _images(tmp_path / "outside")
    names = _images(tmp_path / "ds")
    (tmp_path / "ds" / "pairs.csv").write_text(f"image,text\n{names[0]},a\n{names[1]},b\n{tmp_path}/outside/{names[2]},c\n")
    detail = _outside_row_detail(load_paired_dataset(tmp_path / "ds" / "pairs.csv"))
    assert "lies outside the dataset folder" in detail and "set image_root to a folder that holds the images" in detail


def test_an_absolute_path_outside_an_image_folder_gives_advice_that_works_for_a_folder(tmp_path):
    """A folder with a metadata table refuses image_root: the refusal of an absolute path outside it
    advised setting image_root all the same. It names what works (the table given as the path,
    with image_root), and that advice does work: the table given itself reads ``file_name`` as its
    image column, as the folder does (the advice had to add "and image_column 'file_name'")."""
    _images(tmp_path / "outside")
    folder = tmp_path / "ds"
    names = _images(folder)
    rows = [f"{folder}/{names[0]},a", f"{folder}/{names[1]},b", f"{tmp_path}/outside/{names[2]},c"]
    (folder / "metadata.csv").write_text("file_name,text\n" + "\n".join(rows) + "\n")
    detail = _outside_row_detail(load_paired_dataset(folder))
    assert "lies outside the dataset folder" in detail and "set image_root to" not in detail
    assert detail.endswith("image_root applies to a table, not to a folder: give its metadata.csv itself as the dataset "
                           "path, with image_root a folder that holds the images)")
    with pytest.raises(ValueError, match="image_root applies to a table"):
        load_paired_dataset(folder, image_root=tmp_path)
    followed = DatasetParams(kind="path", path=str(folder / "metadata.csv"), image_root=str(tmp_path))
    assert publish_dataset(followed, str(tmp_path / "store"))["catalog"]["n_samples"] == 3


def test_an_absolute_path_outside_a_hugging_face_dataset_does_not_advise_image_root(tmp_path):
    """A `kind: huggingface` dataset takes no image_root (`DatasetParams` refuses it): the refusal
    says where such a dataset's images may be instead."""
    from tasks.data.hf_datasets import load_hf_dataset

    _images(tmp_path / "outside")
    folder = tmp_path / "hf"
    names = _images(folder / "data")
    paths = [names[0], names[1], f"{tmp_path}/outside/{names[2]}"]
    pq.write_table(pa.table({"image": paths, "text": ["a", "b", "c"]}), folder / "data" / "train-00000-of-00001.parquet")
    result, _ = load_hf_dataset(str(folder))
    detail = _outside_row_detail(result)
    assert "lies outside the dataset folder" in detail and "image_root" not in detail.replace("takes no image_root", "")
    assert "takes no image_root" in detail and "image bytes" in detail
    with pytest.raises(ValueError, match="image_root applies to kind 'path' only"):
        DatasetParams(kind="huggingface", path=str(folder), image_root=str(tmp_path))
