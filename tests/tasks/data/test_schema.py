"""The dataset table contract: DATASET_SCHEMA and validate_table."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tasks.data.schema import DATASET_SCHEMA, id_problem, is_safe_id, validate_table
from tests.tasks.data.sample_images import png_bytes


def table(rows: list[dict], schema: pa.Schema = DATASET_SCHEMA) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def good_rows() -> list[dict]:
    return [
        {"sample_id": "a", "image": png_bytes("red"), "text": "a red square", "image_id": "a"},
        {"sample_id": "b-0", "image": png_bytes("blue"), "text": "a blue square", "image_id": "b"},
        {"sample_id": "b-1", "image": png_bytes("blue"), "text": "blue", "image_id": "b"},
    ]


def test_schema_columns_and_types() -> None:
    assert DATASET_SCHEMA.names == ["sample_id", "image", "text", "image_id"]
    assert [f.type for f in DATASET_SCHEMA] == [pa.string(), pa.binary(), pa.string(), pa.string()]


def test_valid_table_passes() -> None:
    validate_table(table(good_rows()))
    validate_table(table([]))


@pytest.mark.parametrize(
    ("value", "safe"),
    [("emoji-1f600", True), ("A.b_c-9", True), ("", False), ("a b", False), ("a/b", False),
     ("é", False), ("x" * 128, True), ("x" * 129, False)],
)
def test_id_rules(value: str, safe: bool) -> None:
    assert is_safe_id(value) is safe
    assert (id_problem(value) is None) is safe


def test_wrong_columns_are_named() -> None:
    rows = good_rows()
    with pytest.raises(ValueError, match="expected exactly"):
        validate_table(table(rows).drop_columns(["image_id"]))
    with pytest.raises(ValueError, match="expected exactly"):
        validate_table(table(rows).select(["image", "sample_id", "text", "image_id"]))
    large = pa.schema([f.with_type(pa.large_binary()) if f.name == "image" else f for f in DATASET_SCHEMA])
    with pytest.raises(ValueError, match="'image' has type large_binary"):
        validate_table(table(rows, large))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({1: {"sample_id": "a"}}, "not sorted|more than once"),
        ({2: {"sample_id": "b-0"}}, "more than once"),
        ({1: {"sample_id": "b 0"}}, "sample_id 'b 0'"),
        ({1: {"image_id": "b/0"}}, "image_id 'b/0'"),
        ({0: {"text": "  "}}, "text of sample 'a' is empty"),
        ({0: {"text": " padded"}}, "surrounding whitespace"),
        ({0: {"text": "a\x00b"}}, "text of sample 'a' has 1 control character"),
        ({1: {"text": "x" * 65_537}}, "text of sample 'b-0' is 65,537 characters long"),
        ({2: {"image": b""}}, "image of sample 'b-1' is empty"),
        ({0: {"text": None}}, "'text' has 1 null"),
    ],
)
def test_bad_values_are_named(change: dict[int, dict], message: str) -> None:
    rows = good_rows()
    for index, values in change.items():
        rows[index].update(values)
    nullable = pa.schema([f.with_nullable(True) for f in DATASET_SCHEMA])
    with pytest.raises(ValueError, match=message):
        validate_table(table(rows, nullable))


def test_unsorted_rows_are_refused() -> None:
    rows = good_rows()[::-1]
    with pytest.raises(ValueError, match="not sorted by sample_id"):
        validate_table(table(rows))


def test_not_a_table() -> None:
    with pytest.raises(ValueError, match="expected a pyarrow.Table"):
        validate_table([])  # type: ignore[arg-type]


def test_invalid_utf8_in_a_text_column_is_refused() -> None:
    """validate_table checks the string columns' UTF-8 (the full validation): a caption holding the
    byte 0xFF is refused, not stored."""
    rows = table(good_rows())
    bad = pa.array([b"a red square", b"\xff blue", b"blue"], pa.binary()).view(pa.string())
    with pytest.raises(ValueError, match="table data is invalid"):
        validate_table(rows.set_column(2, "text", bad))


def test_an_unsafe_id_names_only_its_bad_characters() -> None:
    """The message names what is wrong: the characters outside [A-Za-z0-9._-], each once, sorted."""
    assert id_problem("bad id!/x y") == "has characters outside [A-Za-z0-9._-]: ' !/'"
