"""Every kind of bad (or merely unusual) image and caption, through the real loaders.

Each case is one extra row beside three good ones, written as a Parquet table, a CSV table and
a folder of images with .txt captions, loaded with ``load_paired_dataset``. A bad row must be
quarantined with its reason and a detail naming the row and the problem, the good rows kept;
an unusual-but-usable row (a non-RGB image, a long caption) must be kept with its bytes as
given. ``publish_dataset`` on a local store stores the quarantine report and leaves the store
untouched when it fails. Non-RGB images are checked against independent conversions.
"""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tasks.data.images import DEFAULT_MAX_IMAGE_PIXELS, check_image, to_rgb
from tasks.data.schema import MAX_CAPTION_CHARS, validate_table
from tasks.data.tables import LoadResult, load_paired_dataset
from tasks.dataset_task import publish_dataset
from tasks.params import AlignmentParams, DatasetParams
from tests.tasks.data.sample_images import bomb_png, png_bytes

# ------------------------------------------------------------------------------------ images


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise(mode: str = "RGB", size: tuple[int, int] = (16, 12), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    return rgb if mode == "RGB" else rgb.convert(mode)


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def gray16() -> np.ndarray:
    """A (12, 16) uint16 ramp over the whole 16-bit range."""
    return np.linspace(0, 65535, 16 * 12).round().astype(np.uint16).reshape(12, 16)


def pgm16(values: np.ndarray) -> bytes:
    """A binary 16-bit PGM (maxval 65535), written by hand."""
    height, width = values.shape
    return f"P5\n{width} {height}\n65535\n".encode() + values.astype(">u2").tobytes()


def float_tiff(values: np.ndarray) -> bytes:
    return encode(Image.fromarray(values.astype(np.float32), mode="F"), "TIFF")


def png_with_garbage_exif() -> bytes:
    """A 16x12 noise PNG whose eXIf chunk is not TIFF data (Pillow's EXIF parser raises on it)."""
    return encode(noise(), exif=b"Exif\x00\x00" + b"\xff" * 20)


def gray16_with_transparent_value() -> bytes:
    """A 16-bit greyscale PNG (I;16) of :func:`gray16` whose value 0 is transparent (tRNS),
    written chunk by chunk (Pillow does not save tRNS for 16-bit)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    values = gray16()
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)
    header = struct.pack(">IIBBBBB", values.shape[1], values.shape[0], 16, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"tRNS", struct.pack(">H", 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def exif_rotated_jpeg() -> bytes:
    """A 16x8 JPEG, left half red, right half blue, tagged Orientation 6 (rotate 90° clockwise)."""
    pixels = np.zeros((8, 16, 3), np.uint8)
    pixels[:, :8] = (255, 0, 0)
    pixels[:, 8:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(pixels), "JPEG", exif=exif, quality=95)


def animated_gif() -> bytes:
    frames = [noise("RGB", seed=1).convert("P"), noise("RGB", seed=2).convert("P")]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def palette_with_transparency() -> bytes:
    image = noise("RGB").convert("P")
    return encode(image, "PNG", transparency=int(np.asarray(image)[0, 0]))


@functools.lru_cache(maxsize=1)
def big_gray_png(width: int = 4000, height: int = 3000) -> bytes:
    """A 12-megapixel greyscale PNG (a phone photo's size), cheap to encode: a horizontal ramp."""
    ramp = np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))
    return encode(Image.fromarray(ramp, mode="L"), "PNG", compress_level=1)


# ------------------------------------------------------------------------------------ layouts

GOOD = [("good-0", png_bytes("red"), b"a red square"), ("good-1", png_bytes("blue"), b"a blue square"),
        ("good-2", png_bytes("green"), b"a green square")]
BAD_ID = "item"


@dataclass(frozen=True)
class Case:
    """One extra row: its image bytes (with a file suffix) and caption bytes, and what must happen."""

    name: str
    image: bytes
    text: bytes
    reason: str | None  # None: the row is accepted
    detail: str = ""  # a fragment the rejection detail must contain
    suffix: str = ".png"
    layouts: tuple[str, ...] = ("parquet", "csv", "folder")
    kept_text: str | None = None  # the caption stored, when accepted (default: text stripped)


def write_parquet(root: Path, rows: list[tuple[str, bytes, bytes, str]]) -> Path:
    table = pa.table(
        {"sample_id": [r[0] for r in rows], "image": [r[1] for r in rows], "text": [r[2] for r in rows]},
        schema=pa.schema([("sample_id", pa.string()), ("image", pa.binary()), ("text", pa.binary())]),
    )
    pq.write_table(table, root / "pairs.parquet")
    return root / "pairs.parquet"


def write_csv(root: Path, rows: list[tuple[str, bytes, bytes, str]]) -> Path:
    (root / "img").mkdir()
    lines = [b"sample_id,image,text"]
    for sample_id, image, text, suffix in rows:
        (root / "img" / f"{sample_id}{suffix}").write_bytes(image)
        quoted = b'"' + text.replace(b'"', b'""') + b'"'
        lines.append(f"{sample_id},img/{sample_id}{suffix},".encode() + quoted)
    (root / "pairs.csv").write_bytes(b"\n".join(lines) + b"\n")
    return root / "pairs.csv"


def write_folder(root: Path, rows: list[tuple[str, bytes, bytes, str]]) -> Path:
    folder = root / "pairs"
    folder.mkdir()
    for sample_id, image, text, suffix in rows:
        (folder / f"{sample_id}{suffix}").write_bytes(image)
        (folder / f"{sample_id}.txt").write_bytes(text)
    return folder


WRITERS = {"parquet": write_parquet, "csv": write_csv, "folder": write_folder}
ORIGIN = {"parquet": "row 3", "csv": "row 3 (line 5)", "folder": f"{BAD_ID}."}


def dataset_with(tmp_path: Path, layout: str, case: Case) -> Path:
    rows = [(sid, image, text, ".png") for sid, image, text in GOOD]
    rows.append((BAD_ID, case.image, case.text, case.suffix))
    return WRITERS[layout](tmp_path, rows)


IMAGE_CASES = [
    Case("random bytes", np.random.default_rng(1).bytes(64) + b"not an image", b"noise", "image_unreadable", "not an image format"),
    Case("truncated PNG", half(encode(noise())), b"half a png", "image_unreadable", "truncated"),
    Case("truncated JPEG", half(encode(noise(), "JPEG")), b"half a jpeg", "image_unreadable", "truncated", ".jpg"),
    Case("zero bytes", b"", b"nothing", "image_empty", "0 bytes"),
    Case("bomb header 10000x10000", bomb_png(10_000, 10_000), b"bomb", "image_too_large",
         f"100000000 pixels is more than {DEFAULT_MAX_IMAGE_PIXELS}"),
    Case("float TIFF with NaN", float_tiff(np.full((12, 16), np.nan)), b"nan", "image_unreadable", "NaN", ".tif"),
    Case("big but legal 4000x3000", big_gray_png(), b"twelve megapixels", None, layouts=("parquet",)),
    Case("L", encode(noise("L")), b"grey", None),
    Case("LA", encode(noise("LA")), b"grey with alpha", None),
    Case("RGBA", encode(noise("RGBA")), b"with alpha", None),
    Case("P with transparency", palette_with_transparency(), b"palette", None),
    Case("1-bit", encode(noise("1")), b"bilevel", None),
    Case("CMYK JPEG", encode(noise("CMYK"), "JPEG"), b"cmyk", None, suffix=".jpg"),
    Case("16-bit PNG (I;16)", encode(Image.fromarray(gray16())), b"sixteen bits", None),
    Case("16-bit PGM (I)", pgm16(gray16()), b"sixteen bits pgm", None, suffix=".pgm"),
    Case("float TIFF (F)", float_tiff(np.linspace(0, 1, 192).reshape(12, 16)), b"float", None, suffix=".tif"),
    Case("animated GIF", animated_gif(), b"two frames", None, suffix=".gif"),
    Case("EXIF-rotated JPEG", exif_rotated_jpeg(), b"sideways", None, suffix=".jpg"),
    Case("EXIF that does not parse", png_with_garbage_exif(), b"garbage exif", None),
    Case("16-bit PNG with a transparent value", gray16_with_transparent_value(), b"sixteen bits, one transparent", None),
    Case("strip 1x100", png_bytes(size=(1, 100)), b"a thin strip", "image_aspect", "one side is 100 times the other, more than 32"),
    Case("strip 3000x2", png_bytes(size=(3000, 2)), b"a banner", "image_aspect", "1500 times"),
    Case("banner 320x10 (32:1)", png_bytes(size=(320, 10)), b"a wide banner", None),
]

LONG = "word " * (MAX_CAPTION_CHARS // 5)  # ends with a space: stripped, it is MAX - 1 characters
CAPTION_CASES = [
    Case("empty caption", png_bytes("gray"), b"", "text_empty", "caption is empty"),
    Case("whitespace-only caption", png_bytes("gray"), b" \t  \r\n ", "text_empty", "caption is empty"),
    Case("latin-1 caption", png_bytes("gray"), "café".encode("latin-1"), "text_not_utf8", "not valid UTF-8"),
    Case("UTF-16 caption with BOM", png_bytes("gray"), "a cat".encode("utf-16"), "text_not_utf8",
         "is UTF-16 encoded (it starts with the byte-order mark FF FE), not UTF-8: save it as UTF-8"),
    # UTF-32 LE's mark starts with UTF-16 LE's (FF FE): it was named UTF-16; UTF-32 BE's was "not valid UTF-8"
    Case("UTF-32 LE caption with BOM", png_bytes("gray"), "a cat".encode("utf-32-le").join([b"\xff\xfe\x00\x00", b""]),
         "text_not_utf8", "is UTF-32 encoded (it starts with the byte-order mark FF FE 00 00), not UTF-8: save it as UTF-8"),
    Case("UTF-32 BE caption with BOM", png_bytes("gray"), "a cat".encode("utf-32-be").join([b"\x00\x00\xfe\xff", b""]),
         "text_not_utf8", "is UTF-32 encoded (it starts with the byte-order mark 00 00 FE FF), not UTF-8: save it as UTF-8"),
    Case("UTF-16 caption without BOM", png_bytes("gray"), "a cat".encode("utf-16-le"), "text_control_chars", "U+0000"),
    Case("NUL inside caption", png_bytes("gray"), b"a\x00cat", "text_control_chars", "U+0000 at character 1"),
    Case("terminal colour codes", png_bytes("gray"), b"\x1b[31mred\x1b[0m", "text_control_chars", "2 control character(s), the first U+001B"),
    Case("1 MB caption", png_bytes("gray"), b"x" * 1_000_000, "text_too_long", f"1,000,000 characters long (at most {MAX_CAPTION_CHARS:,})"),
    Case("caption one over the limit", png_bytes("gray"), b"y" * (MAX_CAPTION_CHARS + 1), "text_too_long", f"at most {MAX_CAPTION_CHARS:,}"),
    Case("caption at the limit", png_bytes("gray"), b"  " + b"z" * MAX_CAPTION_CHARS + b"\n", None),
    Case("long caption of words", png_bytes("gray"), LONG.encode(), None),
    Case("tab and newline inside", png_bytes("gray"), b"a\tcat\r\non a mat", None, layouts=("parquet", "csv")),
    Case("C1 control and U+FFFD kept", png_bytes("gray"), "a\u0085b\ufffd".encode(), None, layouts=("parquet", "csv")),
    Case("line and paragraph separators kept", png_bytes("gray"), "a cat\u2028on a\u2029red mat\u0085".encode(), None),
    Case("form feed inside", png_bytes("gray"), b"a cat\x0con a mat", "text_control_chars", "U+000C"),
    Case("zero-width characters only", png_bytes("gray"), "\u200b\u200c\u200d\u2060".encode(), "text_empty",
         "only invisible characters (U+200B, U+200C, U+200D, U+2060)"),
    Case("zero-width joiner inside an emoji kept", png_bytes("gray"), "a family \U0001F468\u200d\U0001F469".encode(), None),
]


def matrix() -> list:
    return [
        pytest.param(layout, case, id=f"{layout}-{case.name}")
        for case in IMAGE_CASES + CAPTION_CASES for layout in case.layouts
    ]


def rejected(result: LoadResult) -> list[dict]:
    return result.rejected.to_pylist()


@pytest.mark.parametrize(("layout", "case"), matrix())
def test_each_input_is_quarantined_or_kept(tmp_path: Path, layout: str, case: Case) -> None:
    result = load_paired_dataset(dataset_with(tmp_path, layout, case))
    ids = result.table.column("sample_id").to_pylist()
    assert [i for i in ids if i.startswith("good-")] == ["good-0", "good-1", "good-2"]
    validate_table(result.table)
    if case.reason is None:
        assert result.n_rejected == 0, rejected(result)
        row = result.table.filter(pc.equal(result.table.column("sample_id"), BAD_ID)).to_pylist()
        assert len(row) == 1
        assert row[0]["image"] == case.image  # stored as given: nothing converted or lost
        expected = case.kept_text if case.kept_text is not None else case.text.decode().strip()
        assert row[0]["text"] == expected
        return
    assert BAD_ID not in ids
    (item,) = rejected(result)
    assert (item["sample_id"], item["reason"]) == (BAD_ID, case.reason)
    assert ORIGIN[layout] in item["detail"], item["detail"]
    assert case.detail.lower() in item["detail"].lower(), item["detail"]
    assert len(item["detail"]) < 300  # a 1 MB caption is described, not copied
    assert result.summary() == {case.reason: 1}
    assert f"{case.reason}: 1 ({BAD_ID})" in result.report()


def test_image_pixel_limit_is_inclusive(tmp_path: Path) -> None:
    image = png_bytes(size=(300, 200))
    path = dataset_with(tmp_path, "parquet", Case("exact", image, b"at the limit", None))
    assert load_paired_dataset(path, max_image_pixels=60_000).n_rejected == 0
    (item,) = rejected(load_paired_dataset(path, max_image_pixels=59_999))
    assert item["reason"] == "image_too_large" and "300x200 = 60000 pixels is more than 59999" in item["detail"]


def test_duplicate_sample_ids_keep_the_first(tmp_path: Path) -> None:
    rows = [(sid, image, text, ".png") for sid, image, text in GOOD]
    rows.append(("good-1", png_bytes("white"), b"a second good-1", ".png"))
    for layout in ("parquet", "csv"):
        root = tmp_path / layout
        root.mkdir()
        result = load_paired_dataset(WRITERS[layout](root, rows))
        assert result.table.column("text").to_pylist() == ["a red square", "a blue square", "a green square"]
        (item,) = rejected(result)
        assert (item["sample_id"], item["reason"]) == ("good-1", "sample_id_duplicate")
        assert "already used by row 1" in item["detail"]


# ----------------------------------------------------------------------- non-RGB conversions


def composite_over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255.0
    return rgb.astype(np.float64) * a + 255.0 * (1.0 - a)


def expected_rgb(name: str, data: bytes) -> np.ndarray:
    """What a person sees, computed from the decoded source pixels without ``to_rgb``."""
    source = Image.open(io.BytesIO(data))
    pixels = np.asarray(source)
    if name in ("L", "1-bit"):
        grey = pixels.astype(np.float64) * (255.0 if pixels.dtype == bool else 1.0)
        return np.repeat(grey[..., None], 3, axis=2)
    if name == "LA":
        return composite_over_white(np.repeat(pixels[..., :1], 3, axis=2), pixels[..., 1])
    if name == "RGBA":
        return composite_over_white(pixels[..., :3], pixels[..., 3])
    if name == "P with transparency":
        palette = np.array(source.getpalette()[: 3 * 256], dtype=np.float64).reshape(-1, 3)
        alpha = np.where(pixels == source.info["transparency"], 0, 255)
        return composite_over_white(palette[pixels], alpha)
    if name == "CMYK JPEG":
        c, m, y, k = (pixels[..., i].astype(np.float64) for i in range(4))
        return np.stack([(255 - c) * (255 - k) / 255, (255 - m) * (255 - k) / 255, (255 - y) * (255 - k) / 255], axis=2)
    if name in ("16-bit PNG (I;16)", "16-bit PGM (I)"):
        return np.repeat((gray16() / 257.0)[..., None], 3, axis=2)
    if name == "float TIFF (F)":
        return np.repeat((np.linspace(0, 1, 192).reshape(12, 16) * 255.0)[..., None], 3, axis=2)
    if name == "animated GIF":
        return np.asarray(source.convert("RGB"), dtype=np.float64)  # frame 0
    if name == "EXIF-rotated JPEG":
        return np.rot90(np.asarray(source.convert("RGB"), dtype=np.float64), k=-1)  # 90° clockwise
    if name == "EXIF that does not parse":
        return np.asarray(noise(), dtype=np.float64)  # as stored
    if name == "16-bit PNG with a transparent value":
        grey = np.where(gray16() == 0, 255.0, gray16() / 257.0)  # the transparent value over white
        return np.repeat(grey[..., None], 3, axis=2)
    if name.startswith("banner"):
        return np.asarray(source.convert("RGB"), dtype=np.float64)
    raise AssertionError(name)


CONVERTED = [case for case in IMAGE_CASES if case.reason is None and not case.name.startswith("big")]


@pytest.mark.parametrize("case", CONVERTED, ids=[c.name for c in CONVERTED])
def test_non_rgb_images_become_the_rgb_a_person_sees(case: Case) -> None:
    assert check_image(case.image) is None
    rgb = to_rgb(Image.open(io.BytesIO(case.image)))
    assert rgb.mode == "RGB"
    expected = expected_rgb(case.name, case.image)
    assert np.asarray(rgb).shape == expected.shape
    assert np.abs(np.asarray(rgb, dtype=np.float64) - expected).max() <= 1.0


def test_exif_rotation_puts_the_red_half_on_top() -> None:
    rgb = np.asarray(to_rgb(Image.open(io.BytesIO(exif_rotated_jpeg()))))
    assert rgb.shape == (16, 8, 3)
    assert rgb[:8, :, 0].mean() > 200 and rgb[8:, :, 2].mean() > 200


def test_int_and_float_images_outside_the_usual_range_are_stretched() -> None:
    values = np.array([[-1000, 0], [1000, 3000]], dtype=np.int32)
    stretched = np.asarray(to_rgb(Image.fromarray(values, mode="I")))[..., 0]
    assert stretched.tolist() == [[0, 64], [128, 255]]
    floats = np.asarray(to_rgb(Image.fromarray(np.array([[2.0, 4.0]], np.float32), mode="F")))[..., 0]
    assert floats.tolist() == [[0, 255]]
    assert np.asarray(to_rgb(Image.fromarray(np.full((2, 2), 7.0, np.float32), mode="F"))).max() == 128


def test_big_legal_image_is_resized_by_the_preprocessing() -> None:
    from tasks.extract.images import center_crop_resize

    rgb = to_rgb(Image.open(io.BytesIO(big_gray_png())))
    assert rgb.size == (4000, 3000)
    pixels = np.asarray(rgb)
    ramp = np.linspace(0, 255, 4000).astype(np.uint8)
    assert (pixels[0, :, 0] == ramp).all() and (pixels[-1, :, 2] == ramp).all()
    small = center_crop_resize(rgb, 224, crop_fraction=224 / 256)
    assert small.size == (224, 224) and small.mode == "RGB"


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CONVERTED])
def test_extractor_decodes_images_as_the_loader_converts_them(case: Case) -> None:
    from tasks.extract.images import decode_image

    ours = np.asarray(to_rgb(Image.open(io.BytesIO(case.image))), dtype=np.int16)
    theirs = np.asarray(decode_image(case.image), dtype=np.int16)
    assert theirs.shape == ours.shape and np.abs(theirs - ours).max() <= 1


# --------------------------------------------------------------------------- publish_dataset


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones included) with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_publish_stores_the_quarantine_report(tmp_path: Path) -> None:
    bad = [c for c in IMAGE_CASES + CAPTION_CASES if c.reason is not None and "csv" in c.layouts]
    rows = [(sid, image, text, ".png") for sid, image, text in GOOD]
    rows += [(f"bad-{i}", c.image, c.text, c.suffix) for i, c in enumerate(bad)]
    rows.append(("cmyk", encode(noise("CMYK"), "JPEG"), b"kept as given", ".jpg"))
    rows.append(("good-0", png_bytes("white"), b"duplicate id", ".png"))
    path = write_csv(tmp_path, rows)

    manifest = publish_dataset(DatasetParams(kind="path", path=str(path)), str(tmp_path / "store"))
    assert manifest["catalog"]["n_samples"] == 4 and manifest["catalog"]["n_rejected"] == len(bad) + 1
    assert set(manifest["files"]) == {"samples.parquet", "rejected.parquet"}
    version = tmp_path / "store" / manifest["key"]
    report = pq.read_table(version / "rejected.parquet").to_pylist()
    assert [(r["sample_id"], r["reason"]) for r in report] == (
        [(f"bad-{i}", c.reason) for i, c in enumerate(bad)] + [("good-0", "sample_id_duplicate")]
    )
    samples = pq.read_table(version / "samples.parquet")
    stored = dict(zip(samples.column("sample_id").to_pylist(), samples.column("image").to_pylist()))
    assert stored["cmyk"] == rows[-2][1]  # non-RGB bytes kept as given


@pytest.mark.parametrize(
    ("setup", "alignment", "message"),
    [
        ("all_bad", None, r"has 0 valid row\(s\), at least 2 needed; rejected rows by reason: image_empty: 1, text_control_chars: 1, text_empty: 1"),
        ("few", AlignmentParams(topk=10), r"dataset 'few' has 3 sample\(s\), too few: alignment.topk=10 \(mutual_knn, cknna\) needs topk \+ 2 = 12; rejected rows by reason: image_unreadable: 1"),
        ("missing", None, r"missing\.csv' does not exist"),
        ("unsupported", None, r"unsupported file type '\.xml'"),
        ("json_object", None, r"pairs\.json' is an object with keys \[\]; expected a COCO captions file"),
        ("no_text_column", None, r"lacks required column\(s\) \['text'\]"),
    ],
)
def test_failed_publish_leaves_the_store_as_it_was(tmp_path: Path, setup: str, alignment, message: str) -> None:
    store = tmp_path / "store"
    first = write_csv(tmp_path, [(sid, image, text, ".png") for sid, image, text in GOOD])
    earlier = publish_dataset(DatasetParams(kind="path", path=str(first)), str(store))
    before = snapshot(store)

    source = tmp_path / "sources"
    source.mkdir()
    if setup == "all_bad":
        path = write_csv(source, [("a", b"", b"zero", ".png"), ("b", png_bytes(), b"   ", ".png"), ("c", png_bytes(), b"x\x00", ".png")])
    elif setup == "few":
        rows = [(sid, image, text, ".png") for sid, image, text in GOOD] + [("d", b"junk", b"junk", ".png")]
        path = write_csv(source, rows).rename(source / "few.csv")
    elif setup == "missing":
        path = source / "missing.csv"
    elif setup == "unsupported":
        path = source / "pairs.xml"
        path.write_text("<pairs/>")
    elif setup == "json_object":
        path = source / "pairs.json"
        path.write_text("{}")
    else:
        path = source / "pairs.csv"
        path.write_text("image,caption\nimg/a.png,a\n")
    with pytest.raises(ValueError, match=message):
        publish_dataset(DatasetParams(kind="path", path=str(path)), str(store), alignment=alignment)

    assert snapshot(store) == before  # no partial version, no claim or temporary file
    assert publish_dataset(DatasetParams(kind="path", path=str(first)), str(store)) == earlier


def test_enough_rows_for_the_alignment_publish(tmp_path: Path) -> None:
    rows = [(f"s{i}", png_bytes(size=(4 + i, 4)), f"caption {i}".encode(), ".png") for i in range(12)]
    path = write_csv(tmp_path, rows)
    manifest = publish_dataset(DatasetParams(kind="path", path=str(path)), str(tmp_path / "store"), alignment=AlignmentParams(topk=10))
    assert manifest["catalog"]["n_samples"] == 12


def test_csv_field_limit_does_not_hide_a_long_caption(tmp_path: Path) -> None:
    """Python's csv refuses fields over 128 KiB by default; the loader reads them and rejects the row."""
    previous = csv.field_size_limit(131_072)  # Python's default, whatever ran before
    try:
        path = dataset_with(tmp_path, "csv", Case("huge", png_bytes("gray"), b"q" * 300_000, "text_too_long"))
        (item,) = rejected(load_paired_dataset(path))
    finally:
        csv.field_size_limit(max(previous, csv.field_size_limit()))
    assert item["reason"] == "text_too_long" and "300,000 characters" in item["detail"]
