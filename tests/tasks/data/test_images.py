"""Image decoding checks and safe reading of image files."""

from __future__ import annotations

import os
from pathlib import Path

from tasks.data.images import ImageProblem, check_image, read_image_file
from tests.tasks.data.sample_images import bomb_png, png_bytes, truncated_png


def test_valid_images_pass() -> None:
    assert check_image(png_bytes()) is None


def test_each_bad_image_gets_its_reason() -> None:
    assert check_image(b"").reason == "image_empty"
    assert check_image(b"not an image at all").reason == "image_unreadable"
    truncated = check_image(truncated_png())
    assert truncated.reason == "image_unreadable" and "truncated" in truncated.detail
    assert check_image(png_bytes(size=(100, 100)), max_pixels=5_000).reason == "image_too_large"
    # Pillow's own decompression-bomb error (header claims 1.6 G pixels) is caught too.
    assert check_image(bomb_png()).reason == "image_too_large"
    assert check_image(bomb_png(3000, 3000), max_pixels=1_000_000).reason == "image_too_large"


def test_read_image_file_stays_inside_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(png_bytes())
    (tmp_path / "secret.png").write_bytes(png_bytes("blue"))
    os.symlink(tmp_path / "secret.png", root / "link.png")

    assert read_image_file(root, "sub/a.png") == png_bytes()
    assert read_image_file(root, "sub/../sub/a.png") == png_bytes()  # stays inside: allowed
    assert read_image_file(root, str(root / "sub" / "a.png")) == png_bytes()  # absolute, inside: allowed
    for path, reason in [
        ("../secret.png", "image_path_unsafe"),
        ("sub/../../secret.png", "image_path_unsafe"),
        (str(tmp_path / "secret.png"), "image_path_unsafe"),
        ("link.png", "image_path_unsafe"),
        (str(root / "link.png"), "image_path_unsafe"),
        ("\\sub\\a.png", "image_path_unsafe"),
        (str(root / "nope.png"), "image_missing"),
        ("nope.png", "image_missing"),
        ("sub", "image_missing"),
        ("  ", "image_missing"),
    ]:
        outcome = read_image_file(root, path)
        assert isinstance(outcome, ImageProblem) and outcome.reason == reason, (path, outcome)


def _one_bit_png_with_transparent_value(bits: list[list[int]], transparent: int) -> bytes:
    """A 1-bit greyscale PNG (colour type 0) of ``bits`` whose value ``transparent`` is marked
    transparent by a tRNS chunk, written chunk by chunk (as a scanner or a fax converter writes
    line art on a transparent page)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    height, width = len(bits), len(bits[0])
    rows = b""
    for row in bits:
        packed = int("".join(str(b) for b in row).ljust(8 * -(-width // 8), "0"), 2)
        rows += b"\x00" + packed.to_bytes(-(-width // 8), "big")
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"tRNS", struct.pack(">H", transparent))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_a_one_bit_image_with_a_transparent_value_is_composited_over_white() -> None:
    """Its transparent pixels are white, as for any greyscale image with a transparent value (the
    2-, 4- and 8-bit ones were; the 1-bit one kept its transparent black pixels black)."""
    import io

    import numpy as np
    from PIL import Image

    from tasks.data.images import to_rgb
    from tasks.extract.images import decode_image

    bits = [[0, 1, 0, 1, 1], [1, 0, 0, 1, 0], [0, 0, 1, 1, 1]]
    for transparent in (0, 1):
        data = _one_bit_png_with_transparent_value(bits, transparent)
        assert check_image(data) is None
        # by hand: a transparent pixel is white, an opaque one black (0) or white (1)
        expected = np.array([[255 if (b == transparent or b == 1) else 0 for b in row] for row in bits], np.uint8)
        expected = np.repeat(expected[:, :, None], 3, axis=2)
        with Image.open(io.BytesIO(data)) as image:
            converted = to_rgb(image)
        assert converted.mode == "RGB"
        assert np.array_equal(np.asarray(converted), expected), (transparent, np.asarray(converted)[:, :, 0])
        assert np.array_equal(np.asarray(decode_image(data)), expected)


def test_an_image_written_as_text_in_the_path_column_is_named_as_such(tmp_path):
    """A JSONL/CSV image column holding data: URIs or base64 text (an export of a web tool) was
    refused as 'image file ... does not exist' (or, past 255 bytes, 'is the image column holding
    captions?'): the detail now says what the text is and what prh reads instead."""
    import base64
    import io

    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.new("RGB", (40, 30), (200, 10, 10)).save(buf, "PNG")
    encoded = base64.b64encode(buf.getvalue()).decode()
    for text, what in ((f"data:image/png;base64,{encoded}", "a data: URI"), (encoded, "base64 text"),
                       (encoded[:100], "base64 text")):
        problem = read_image_file(tmp_path, text)
        assert isinstance(problem, ImageProblem) and problem.reason == "image_missing", problem
        assert f"it is {what}" in problem.detail and "decode the column into bytes" in problem.detail, problem.detail
        assert "holding captions" not in problem.detail, problem.detail
    plain = read_image_file(tmp_path, "images/cat-0001.png")
    assert isinstance(plain, ImageProblem) and "it is" not in plain.detail, plain.detail
    long_caption = read_image_file(tmp_path, "a photo of a cat sitting on a red sofa. " * 10)
    assert isinstance(long_caption, ImageProblem) and "holding captions" in long_caption.detail, long_caption.detail
