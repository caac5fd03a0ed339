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
