"""Dataset fields and columns: the OpenMoji-only fields refused with other kinds, the demo's stored
rendering keeping its name (with the warning any stored version gives), binary ids with one row
per caption, and dictionary/view-encoded Parquet columns read as their values with the same
dataset version as plain ones."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from tasks.data.sources import ColumnMap
from tasks.data.tables import load_paired_dataset
from tasks.dataset_task import publish_dataset
from tasks.params import DatasetParams
from tests.tasks.data.sample_images import png_bytes

COLOURS = ("red", "green", "blue", "yellow")


# ----------------------------------------------------------------------- kind-only fields (params)


@pytest.mark.parametrize(("kind", "field", "value"), [
    ("path", "seed", 7), ("path", "image_size", 512), ("huggingface", "seed", 7), ("huggingface", "image_size", 64),
])
def test_openmoji_only_fields_are_refused_with_other_kinds(kind, field, value):
    with pytest.raises(ValidationError, match=rf"dataset\.{field} applies to kind 'openmoji' only \(kind is '{kind}'\)"):
        DatasetParams(kind=kind, path="x.csv", **{field: value})


@pytest.mark.parametrize("kind", ["path", "huggingface"])
def test_openmoji_only_fields_at_their_defaults_are_accepted_with_other_kinds(kind):
    # a form pre-filled from the demo (seed 0, image_size 224) switched to another kind still runs
    params = DatasetParams(kind=kind, path="x.csv", seed=0, image_size=224)
    assert params.model_dump(exclude_defaults=True) == {"kind": kind, "path": "x.csv"}


def test_a_path_without_its_kind_is_refused_not_ignored():
    """`dataset: {path: table.parquet, n: 40}` (no kind: the form's default 'openmoji') ran the
    emoji demo with no word about the table; --check said the dataset was ok."""
    with pytest.raises(ValidationError, match=r"dataset\.path applies to kind 'path' and 'huggingface' \(kind is 'openmoji'\)"):
        DatasetParams(path="table.parquet", n=40)
    assert DatasetParams(kind="openmoji", path=None).path is None


def test_an_empty_image_root_is_refused_not_the_working_directory():
    """`image_root: ""` read the table's images from the working directory (Path("") is "."):
    a dataset version of other images was published."""
    with pytest.raises(ValidationError, match="image_root"):
        DatasetParams(kind="path", path="table.parquet", image_root="")


def test_openmoji_takes_its_fields():
    assert DatasetParams(kind="openmoji", seed=7, image_size=64).model_dump(exclude_defaults=True) == {"seed": 7, "image_size": 64}


# ----------------------------------------------------------- the demo's stored rendering and its name


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_rerendered_demo_under_another_name_warns_that_it_keeps_its_name(tmp_path, caplog):
    url, logger = str(tmp_path / "store"), logging.getLogger("test.dataset_fields")
    first = publish_dataset(DatasetParams(kind="openmoji", n=12, image_size=32), url, logger)
    caplog.set_level(logging.INFO, logger=logger.name)
    again = publish_dataset(DatasetParams(kind="openmoji", n=12, image_size=32), url, logger)
    assert again["catalog"] == first["catalog"] and _warnings(caplog) == []
    renamed = publish_dataset(DatasetParams(kind="openmoji", n=12, image_size=32, name="my-emoji"), url, logger)
    assert renamed["catalog"]["name"] == "openmoji-12"  # the stored version keeps its name
    version = first["catalog"]["dataset_version"]
    assert _warnings(caplog) == [
        f"dataset my-emoji: its 12 valid rows are already stored as dataset 'openmoji-12' (version {version}, published "
        "from openmoji with 0 rejected rows); a version is its valid rows, so that version is used and keeps its name, "
        "source and rejected rows"]


def test_the_stored_warning_reads_the_same_for_a_table(tmp_path, caplog):
    """The wording the demo's warning reuses: a table's rows stored before under another name."""
    for i, colour in enumerate(COLOURS[:2]):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(colour))
    (tmp_path / "a.csv").write_text("image,text\n0.png,red\n1.png,green\n")
    url, logger = str(tmp_path / "store"), logging.getLogger("test.dataset_fields")
    first = publish_dataset(DatasetParams(kind="path", path=str(tmp_path / "a.csv")), url, logger)
    caplog.set_level(logging.INFO, logger=logger.name)
    publish_dataset(DatasetParams(kind="path", path=str(tmp_path / "a.csv"), name="b"), url, logger)
    version = first["catalog"]["dataset_version"]
    assert _warnings(caplog) == [
        f"dataset b: its 2 valid rows are already stored as dataset 'a' (version {version}, published from "
        f"{tmp_path / 'a.csv'} with 0 rejected rows); a version is its valid rows, so that version is used and keeps its "
        "name, source and rejected rows"]


# ------------------------------------------------------------------------- binary ids, all captions


@pytest.mark.parametrize(("captions", "valid", "rejected"), [
    ("first", ["a", "b"], "c\\xff"),
    ("all", ["a-0", "a-1", "b-0"], "c\\xff-0"),
])
def test_a_binary_id_that_is_not_utf8_rejects_its_rows_with_either_caption_policy(tmp_path, captions, valid, rejected):
    table = pa.table({"sample_id": pa.array([b"a", b"b", b"c\xff"], pa.binary()),
                      "image": [png_bytes(c) for c in COLOURS[:3]],
                      "text": pa.array([["x", "y"], ["z"], ["w"]], pa.list_(pa.string()))})
    pq.write_table(table, tmp_path / "t.parquet")
    result = load_paired_dataset(tmp_path / "t.parquet", columns=ColumnMap(captions=captions))
    assert sorted(result.table.column("sample_id").to_pylist()) == valid
    assert [(r["sample_id"], r["reason"]) for r in result.rejected.to_pylist()] == [(rejected, "sample_id_unsafe")]


def test_binary_ids_that_are_utf8_expand_like_string_ids(tmp_path):
    def load(kind: pa.DataType):
        table = pa.table({"sample_id": pa.array(["p", "q"], kind), "image": [png_bytes(c) for c in COLOURS[:2]],
                          "text": pa.array([["x", "y"], ["z"]], pa.list_(pa.string()))})
        pq.write_table(table, tmp_path / "t.parquet")
        return load_paired_dataset(tmp_path / "t.parquet", columns=ColumnMap(captions="all")).table

    as_text = load(pa.string())
    assert as_text.select(["sample_id", "image_id"]).to_pylist() == [
        {"sample_id": "p-0", "image_id": "p"}, {"sample_id": "p-1", "image_id": "p"}, {"sample_id": "q-0", "image_id": "q"}]
    assert load(pa.binary()).equals(as_text) and load(pa.large_binary()).equals(as_text)


# ------------------------------------------------------------------ encodings of the Parquet columns


def _columns(tmp_path) -> dict[str, list]:
    folder = tmp_path / "im"
    folder.mkdir(exist_ok=True)
    for colour in COLOURS:
        (folder / f"{colour}.png").write_bytes(png_bytes(colour))
    return {"sample_id": [f"s{i}" for i in range(4)], "image": [f"im/{c}.png" for c in COLOURS],
            "text": [f"a {c} square" for c in COLOURS], "captions": [[f"a {c} square", c] for c in COLOURS]}


def _encoded(values: list, encoding: str) -> pa.Array:
    """``values`` (strings or lists of strings) stored plainly, dictionary-encoded or as views."""
    nested = isinstance(values[0], list)
    plain = pa.array(values, pa.list_(pa.string()) if nested else pa.string())
    if encoding == "plain":
        return plain
    item = pa.dictionary(pa.int32(), pa.string()) if encoding == "dictionary" else pa.string_view()
    return plain.cast(pa.list_(item) if nested else item)


@pytest.mark.parametrize("encoding", ["dictionary", "view"])
@pytest.mark.parametrize("captions", ["first", "all"])
def test_encoded_columns_read_as_their_values_with_the_same_dataset_version(tmp_path, encoding, captions):
    columns = _columns(tmp_path)
    versions = {}
    for how in ("plain", encoding):
        text = columns["captions"] if captions == "all" else columns["text"]
        table = pa.table({name: _encoded(values, how) for name, values in
                          (("sample_id", columns["sample_id"]), ("image", columns["image"]), ("text", text))})
        path = tmp_path / f"{how}.parquet"
        pq.write_table(table, path)
        if how != "plain":  # the file really holds the encoding
            assert all(pa.types.is_dictionary(t) or pa.types.is_string_view(t) or pa.types.is_list(t)
                       for t in pq.read_schema(path).types)
        params = DatasetParams(kind="path", path=str(path), captions=captions)
        versions[how] = publish_dataset(params, str(tmp_path / f"store-{how}"))["catalog"]
    assert versions["plain"]["n_samples"] == (8 if captions == "all" else 4) and versions["plain"]["n_rejected"] == 0
    assert versions[encoding]["dataset_version"] == versions["plain"]["dataset_version"]
    assert versions[encoding]["n_samples"] == versions["plain"]["n_samples"]


def test_view_typed_image_bytes_and_a_dictionary_encoded_struct_path_are_read(tmp_path):
    columns = _columns(tmp_path)
    data = [png_bytes(c) for c in COLOURS]
    plain = pa.table({"image": pa.array(data, pa.binary()), "text": columns["text"]})
    view = pa.table({"image": pa.array(data, pa.binary()).cast(pa.binary_view()), "text": columns["text"]})
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.dictionary(pa.int32(), pa.string()))])
    structs = pa.table({"image": pa.array([{"bytes": None, "path": p} for p in columns["image"]],
                                          pa.struct([("bytes", pa.binary()), ("path", pa.string())])).cast(struct),
                        "text": columns["text"]})
    loaded = []
    for name, table in (("plain", plain), ("view", view), ("struct", structs)):
        pq.write_table(table, tmp_path / f"{name}.parquet")
        loaded.append(load_paired_dataset(tmp_path / f"{name}.parquet").table)
    assert loaded[0].num_rows == 4 and loaded[1].equals(loaded[0]) and loaded[2].equals(loaded[0])


def test_rejected_ids_are_logged_without_escape_codes(tmp_path, caplog):
    """A security review: ids refused for their characters were logged raw, so an ESC in a sample
    id could clear the terminal, recolour it or open a link during `prh run`."""
    import json

    for i, colour in enumerate(COLOURS[:3]):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(colour))
    rows = [{"sample_id": "a", "image": "0.png", "text": "red"}, {"sample_id": "b", "image": "1.png", "text": "green"},
            {"sample_id": "evil\x1b]0;TITLE\x07\x1b[2J\x1b[31mRED", "image": "2.png", "text": "blue"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    logger = logging.getLogger("test.dataset_fields.escapes")
    caplog.set_level(logging.INFO, logger=logger.name)
    publish_dataset(DatasetParams(kind="path", path=str(tmp_path / "d.jsonl")), str(tmp_path / "store"), logger)
    [warning] = [w for w in _warnings(caplog) if "rejected 1 rows" in w]
    assert "\x1b" not in warning and "\x07" not in warning and "evil\\x1b]0;TITLE\\x07\\x1b[2J" in warning
