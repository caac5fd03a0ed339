"""``crop_pct``: the central crop keeps that share of the resized shorter side (timm's eval crop,
the paper's DINOv2 inputs at crop_pct 1.0), checked against resizing and cropping with PIL here."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.extract import extract_all, load_extractor, load_zoo
from tasks.extract.errors import ModelInputError
from tasks.extract.spec import ModelSpec, ZooError
from tasks.extract_task import feature_version

ROOT = Path(__file__).resolve().parents[3]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory) -> Path:
    """A tiny random DINOv2 with the image processor config of facebook/dinov2-* (BitImageProcessor:
    shorter side to 256 bicubic, centre crop 224, ImageNet mean/std)."""
    from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

    path = tmp_path_factory.mktemp("dinov2")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=32,
                             patch_size=8)).save_pretrained(path)
    BitImageProcessorPil(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, resample=3,
                         image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD)).save_pretrained(path)
    return path


def _noise(width: int, height: int, seed: int) -> bytes:
    pixels = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _reference(item: bytes, side: int, resample: int, mean: tuple[float, ...], std: tuple[float, ...],
               edge: int | None = None) -> np.ndarray:
    """`(3, side, side)` float32: shorter side resized to ``edge`` (default ``side``) with PIL,
    the central side x side kept (offsets rounded down), scaled to [0, 1] and normalised."""
    img = Image.open(io.BytesIO(item)).convert("RGB")
    w, h = img.size
    edge = edge or side
    new_w, new_h = (edge, int(edge * h / w)) if w <= h else (int(edge * w / h), edge)
    img = img.resize((new_w, new_h), resample=resample)
    left, top = (new_w - side) // 2, (new_h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    x = np.asarray(img, dtype=np.float64) / 255.0
    return ((x - np.array(mean)) / np.array(std)).transpose(2, 0, 1).astype(np.float32)


def test_dinov2_at_crop_pct_1_sees_the_whole_shorter_side(dinov2_dir, images):
    """crop_pct 1.0 at image_size 40: shorter side to 40 (bicubic), central 40 x 40, as timm's
    vit_*_dinov2.lvd142m transform at its 518 px; without it the processor's 224/256 ratio stays."""
    items = images[:2] + [_noise(90, 50, 1), _noise(45, 90, 2)]  # landscape and portrait
    spec = ModelSpec(name="dino-local", loader="hf", id=str(dinov2_dir), modality="vision", pooling="cls",
                     image_size=40, crop_pct=1.0)
    ex = load_extractor(spec, device="cpu")
    pixels = ex.prepare(items).pixel_values.numpy()
    want = np.stack([_reference(it, 40, Image.BICUBIC, IMAGENET_MEAN, IMAGENET_STD) for it in items])
    assert pixels.shape == (4, 3, 40, 40)
    np.testing.assert_allclose(pixels, want, rtol=0, atol=1e-5)
    with torch.inference_mode():  # these pixels are what the model sees
        states = ex.model(pixel_values=torch.from_numpy(want), output_hidden_states=True).hidden_states
    np.testing.assert_allclose(extract_all(ex, items).layers[-1], states[-1][:, 0].numpy(), rtol=0, atol=1e-4)

    kept_ratio = load_extractor(spec.model_copy(update={"crop_pct": None}), device="cpu")
    ratio = np.stack([_reference(it, 40, Image.BICUBIC, IMAGENET_MEAN, IMAGENET_STD, edge=46) for it in items])
    np.testing.assert_allclose(kept_ratio.prepare(items).pixel_values.numpy(), ratio, rtol=0, atol=1e-5)  # 40*256/224
    half = load_extractor(spec.model_copy(update={"crop_pct": 0.5}), device="cpu")
    np.testing.assert_allclose(half.prepare(items[2:]).pixel_values.numpy(),
                               np.stack([_reference(it, 40, Image.BICUBIC, IMAGENET_MEAN, IMAGENET_STD, edge=80)
                                         for it in items[2:]]), rtol=0, atol=1e-5)


def test_crop_pct_without_image_size_keeps_the_processors_side(dinov2_dir):
    spec = ModelSpec(name="dino-local", loader="hf", id=str(dinov2_dir), modality="vision", crop_pct=1.0)
    ex = load_extractor(spec, device="cpu")
    item = _noise(300, 240, 3)
    np.testing.assert_allclose(ex.prepare([item]).pixel_values.numpy()[0],
                               _reference(item, 224, Image.BICUBIC, IMAGENET_MEAN, IMAGENET_STD), rtol=0, atol=1e-5)


def test_random_vit_crop_pct(images):
    """random_hf: its ViT processor (bilinear, mean/std 0.5) resizes the shorter side to 32 / 0.5."""
    spec = ModelSpec(name="tiny-vit", loader="random_hf", id="ViTConfig", modality="vision", crop_pct=0.5,
                     config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 image_size=32, patch_size=8))
    ex = load_extractor(spec, device="cpu")
    want = np.stack([_reference(it, 32, Image.BILINEAR, (0.5,) * 3, (0.5,) * 3, edge=64) for it in images[:2]])
    np.testing.assert_allclose(ex.prepare(images[:2]).pixel_values.numpy(), want, rtol=0, atol=1e-5)


def test_processors_that_cannot_crop_so_are_refused():
    from transformers import ConvNextImageProcessorPil, DeiTImageProcessorPil

    from tasks.extract.centre_crop import set_centre_crop

    spec = ModelSpec(name="conv", loader="hf", id="org/conv", modality="vision", crop_pct=1.0)
    with pytest.raises(ModelInputError, match=r"model 'conv' \(id 'org/conv'\): crop_pct needs .*ConvNextImageProcessorPil"):
        set_centre_crop(ConvNextImageProcessorPil(), spec)
    oblong = DeiTImageProcessorPil(crop_size={"height": 32, "width": 48})
    with pytest.raises(ModelInputError, match=r"model 'conv'.*does not output a square; set image_size"):
        set_centre_crop(oblong, spec)
    set_centre_crop(oblong, spec.model_copy(update={"image_size": 24}))  # a squashing processor can: size set
    assert oblong(Image.new("RGB", (50, 30)), return_tensors="np")["pixel_values"].shape == (1, 3, 24, 24)


def test_crop_pct_validation_and_fingerprint():
    base = dict(name="dino", loader="hf", id="facebook/dinov2-base", modality="vision", pooling="cls", image_size=518)
    plain = ModelSpec(**base)
    assert "crop_pct" not in plain.fingerprint()  # specs without it keep their feature versions
    assert ModelSpec(**base, crop_pct=None).fingerprint() == plain.fingerprint()
    assert ModelSpec(**base, crop_pct=1).fingerprint() == {**plain.fingerprint(), "crop_pct": 1.0}
    versions = {feature_version("d1", ModelSpec(**base, crop_pct=c)) for c in (None, 1.0, 0.875, 0.5)}
    assert len(versions) == 4 and feature_version("d1", plain) in versions
    for bad, field in [(dict(crop_pct=0), "crop_pct"), (dict(crop_pct=0.49), "crop_pct"), (dict(crop_pct=1e-6), "crop_pct"), (dict(crop_pct=1.5), "crop_pct"), (dict(crop_pct=True), "crop_pct"),
                       (dict(crop_pct="0.9"), "crop_pct"), (dict(crop_pct=float("nan")), "crop_pct"),
                       (dict(modality="language", pooling="avg", image_size=None, crop_pct=1.0), "crop_pct")]:
        with pytest.raises(ZooError, match=rf"models\[0\] \(name 'dino'\): field '{field}'"):
            load_zoo({"models": [{**base, **bad}]})


def test_the_paper_zoo_crops_dinov2_as_timm():
    dinos = [s for s in load_zoo(ROOT / "configs" / "prh-val.yaml") if s.name.startswith("dinov2")]
    assert len(dinos) == 4 and all((s.image_size, s.crop_pct) == (518, 1.0) for s in dinos)


def test_efficientnet_lite_keeps_crop_pct_of_the_shorter_side(images):
    """EfficientNet-Lite: the central crop_pct of the shorter side, resized to S in one step
    (instead of S/(S+32)), then (pixel - 127) / 128."""
    spec = ModelSpec(name="lite0", loader="efficientnet_lite", id="efficientnet-lite0", modality="vision", image_size=64,
                     crop_pct=0.5)
    ex = load_extractor(spec, device="cpu")
    want = []
    for item in images[:2]:
        img = Image.open(io.BytesIO(item)).convert("RGB")
        w, h = img.size
        side = min(w, h) * 0.5
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        crop = np.asarray(img.resize((64, 64), resample=Image.BICUBIC, box=box), dtype=np.float32)
        want.append(((crop - 127.0) / 128.0).transpose(2, 0, 1))
    np.testing.assert_allclose(ex.prepare(images[:2]).pixel_values.numpy(), np.stack(want), rtol=0, atol=1e-6)


def test_timm_vit_recipe_crop_pct_09_bicubic(images, dinov2_dir):
    """``crop_pct: 0.9, resample: bicubic``: timm's eval transform of its ViTs (the paper's
    in21k and MAE inputs): shorter side to floor(32 / 0.9) = 35 bicubic, central 32 x 32. The
    filter alone can be changed too (DINOv2's bicubic to bilinear)."""
    spec = ModelSpec(name="tiny-vit", loader="random_hf", id="ViTConfig", modality="vision", crop_pct=0.9, resample="bicubic",
                     config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 image_size=32, patch_size=8))
    ex = load_extractor(spec, device="cpu")
    want = np.stack([_reference(it, 32, Image.BICUBIC, (0.5,) * 3, (0.5,) * 3, edge=35) for it in images[:3]])
    np.testing.assert_allclose(ex.prepare(images[:3]).pixel_values.numpy(), want, rtol=0, atol=1e-5)
    bilinear = np.stack([_reference(it, 32, Image.BILINEAR, (0.5,) * 3, (0.5,) * 3, edge=35) for it in images[:3]])
    assert np.abs(want - bilinear).max() > 0.05  # the filter shows in the pixels

    dino = ModelSpec(name="dino-local", loader="hf", id=str(dinov2_dir), modality="vision", pooling="cls", image_size=40,
                     crop_pct=1.0, resample="bilinear")
    got = load_extractor(dino, device="cpu").prepare(images[:1]).pixel_values.numpy()[0]
    np.testing.assert_allclose(got, _reference(images[0], 40, Image.BILINEAR, IMAGENET_MEAN, IMAGENET_STD), rtol=0, atol=1e-5)


def test_efficientnet_lite_resample(images):
    spec = ModelSpec(name="lite0", loader="efficientnet_lite", id="efficientnet-lite0", modality="vision", image_size=64,
                     crop_pct=0.5, resample="bilinear")
    item = images[0]
    img = Image.open(io.BytesIO(item)).convert("RGB")
    w, h = img.size
    side = min(w, h) * 0.5
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    crop = np.asarray(img.resize((64, 64), resample=Image.BILINEAR, box=box), dtype=np.float32)
    got = load_extractor(spec, device="cpu").prepare([item]).pixel_values.numpy()[0]
    np.testing.assert_allclose(got, ((crop - 127.0) / 128.0).transpose(2, 0, 1), rtol=0, atol=1e-6)


def test_resample_validation_fingerprint_and_refusal():
    from transformers import Owlv2ImageProcessorPil

    from tasks.extract.centre_crop import set_resample

    base = dict(name="vit", loader="hf", id="google/vit-base-patch16-224-in21k", modality="vision", pooling="cls")
    plain = ModelSpec(**base)
    assert "resample" not in plain.fingerprint()
    assert ModelSpec(**base, resample="bicubic").fingerprint() == {**plain.fingerprint(), "resample": "bicubic"}
    assert len({feature_version("d1", ModelSpec(**base, resample=r)) for r in (None, "bicubic", "bilinear")}) == 3
    for bad in [dict(resample="cubic"), dict(resample=3), dict(modality="language", pooling="avg", resample="bicubic")]:
        with pytest.raises(ZooError, match=r"models\[0\] \(name 'vit'\): field 'resample'"):
            load_zoo({"models": [{**base, **bad}]})
    with pytest.raises(ModelInputError, match=r"model 'vit' .*resample needs .*Owlv2ImageProcessorPil"):
        set_resample(Owlv2ImageProcessorPil(), ModelSpec(**base, resample="bicubic"))  # its resize takes no filter


@pytest.mark.parametrize("name, edge", [("ConvNextImageProcessorPil", 256), ("PoolFormerImageProcessorPil", 248),
                                        ("LevitImageProcessorPil", 256)])
def test_resample_on_processors_that_work_out_their_own_resize(name, edge):
    """ConvNeXt's (crop_pct below 384), PoolFormer's (crop_pct) and LeViT's (256/224) processors
    work out the shorter side's size themselves and resize with the filter they are given: with
    ``resample: nearest`` a square image comes out as a by-hand nearest resize to ``edge`` pixels,
    its central 224 x 224, rescaled and normalised (it was refused: their resize is their own)."""
    import transformers

    from tasks.extract.centre_crop import set_resample

    settings = {"size": {"shortest_edge": 224}}  # ConvNeXt's default 384 squashes the image, the rest crop
    proc = getattr(transformers, name)(**settings)
    spec = ModelSpec(name="cnn", loader="hf", id="org/cnn", modality="vision", pooling="avg", resample="nearest")
    set_resample(proc, spec)
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8))
    got = proc(images=[img], return_tensors="np")["pixel_values"][0]
    off = (edge - 224) // 2
    crop = np.asarray(img.resize((edge, edge), resample=Image.NEAREST), dtype=np.float64)[off:off + 224, off:off + 224]
    want = ((crop / 255.0 - np.asarray(proc.image_mean)) / np.asarray(proc.image_std)).transpose(2, 0, 1)
    np.testing.assert_allclose(got, want, atol=1e-5)
    default = getattr(transformers, name)(**settings)(images=[img], return_tensors="np")["pixel_values"][0]
    assert np.abs(default - want).max() > 0.1  # its own filter gives other pixels: the setting is used


def test_the_paper_zoo_gives_timm_vits_timms_inputs():
    """The paper's timm ViTs (augreg/orig in21k, MAE) evaluate at crop_pct 0.9, bicubic; their
    transformers checkpoints' processors squash the image to 224 x 224 bilinear."""
    zoo = {s.name: s for s in load_zoo(ROOT / "configs" / "prh-val.yaml")}
    vits = [s for name, s in zoo.items() if name.startswith(("vit-", "vit-mae-"))]
    assert len(vits) == 6 and all((s.crop_pct, s.resample) == (0.9, "bicubic") for s in vits)
