"""Images decoded and resized in worker processes give exactly the features of the in-process path
(EfficientNet-Lite's crop recipe, a Hugging Face image processor); the default plan; the fallback
when the worker pool breaks."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from tasks.extract import extract_all, load_extractor
from tasks.extract import image_pool
from tasks.extract.extractor import PreparePlan, plan_prepare
from tasks.extract.spec import ModelSpec
from tests.tasks.extract.helpers import png_bytes

VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
           patch_size=8)


@pytest.fixture(scope="module")
def many_images() -> list[bytes]:
    colors = [(220, 40, 40), (40, 160, 60), (30, 60, 200), (240, 200, 20), (120, 40, 160), (10, 10, 10)]
    images = [png_bytes(c, shape=i, size=(60 + 7 * i, 48 + 5 * (i % 3))) for i, c in enumerate(colors * 3)]
    return images + [png_bytes((200, 100, 0), mode="RGBA", size=(50, 70))]  # transparent: composited on white


@pytest.fixture(scope="module")
def vit():
    spec = ModelSpec(name="tiny-vit", loader="random_hf", id="ViTConfig", modality="vision", config=VIT, batch_size=4)
    return load_extractor(spec, device="cpu")


@pytest.fixture(autouse=True, scope="module")
def _stop_workers():
    yield
    image_pool.shutdown_pool()


def _identical(a, b) -> None:
    assert len(a.layers) == len(b.layers)
    for x, y in zip(a.layers, b.layers):
        assert x.dtype == np.float32 and np.array_equal(x, y)


def test_worker_processes_give_identical_features(vit, many_images):
    spec = ModelSpec(name="lite0", loader="efficientnet_lite", id="efficientnet-lite0", modality="vision", batch_size=4)
    lite0 = load_extractor(spec, device="cpu")
    for ex in (vit, lite0):
        assert ex.image_recipe() is not None
        inline = extract_all(ex, many_images, prepare="inline")
        _identical(inline, extract_all(ex, many_images, prepare="processes", workers=1))
        _identical(inline, extract_all(ex, many_images, prepare="threads", workers=2))
    # the recipe the workers ran is the one the extractor runs in process
    arr = image_pool.get_pool(1).submit(image_pool.run_recipe, lite0.image_recipe(), many_images[:3]).result()
    assert arr.dtype == np.uint8 and arr.shape == (3, 224, 224, 3)
    torch.testing.assert_close(lite0.from_recipe_output(arr).pixel_values, lite0.prepare(many_images[:3]).pixel_values,
                               rtol=0, atol=0)


def test_a_bad_image_fails_the_same_way_in_a_worker(vit, many_images):
    from PIL import UnidentifiedImageError

    bad = many_images[:5] + [b"not an image"]
    for mode in ("inline", "processes"):
        with pytest.raises(UnidentifiedImageError):
            extract_all(vit, bad, prepare=mode, workers=1)


def test_broken_pool_falls_back_to_in_process(vit, many_images):
    inline = extract_all(vit, many_images, prepare="inline")
    pool = image_pool.get_pool(1)
    pool.submit(int).result()  # workers started
    for pid in list(pool._processes):
        os.kill(pid, signal.SIGKILL)
    with pytest.warns(RuntimeWarning, match="worker processes failed"):
        again = extract_all(vit, many_images, prepare="processes", workers=1)
    _identical(inline, again)
    assert extract_all(vit, many_images[:4], prepare="processes", workers=1).layers[0].shape[0] == 4  # new pool


def test_default_plan(vit, monkeypatch):
    monkeypatch.delenv("PRH_DECODE_WORKERS", raising=False)
    many = image_pool.PROCESS_MIN_ITEMS
    assert plan_prepare(vit, many, cpus=2) == PreparePlan("inline")  # 2 cores: the model needs both
    assert plan_prepare(vit, many, cpus=16) == PreparePlan("processes", 4)
    assert plan_prepare(vit, many - 1, cpus=16) == PreparePlan("inline")  # too few to pay for the start
    monkeypatch.setattr(vit, "device", torch.device("cuda"))  # planning only: nothing runs
    # beside a GPU a Hugging Face processor gets threads (float32 batches cost more to move than to make)
    assert plan_prepare(vit, many, cpus=16) == PreparePlan("threads", 8)
    assert plan_prepare(vit, many, cpus=2) == PreparePlan("threads", 2)
    assert plan_prepare(vit, many, cpus=16, mode="processes") == PreparePlan("processes", 8)  # asked for
    monkeypatch.setenv("PRH_DECODE_WORKERS", "3")
    assert plan_prepare(vit, many, cpus=2) == PreparePlan("threads", 3)
    monkeypatch.setattr(vit, "device", torch.device("cpu"))
    assert plan_prepare(vit, many, cpus=2) == PreparePlan("processes", 3)
    lite0 = load_extractor(ModelSpec(name="lite0", loader="efficientnet_lite", id="efficientnet-lite0",
                                     modality="vision", batch_size=4), device="cpu")
    monkeypatch.setattr(lite0, "device", torch.device("cuda"))
    monkeypatch.delenv("PRH_DECODE_WORKERS")
    assert plan_prepare(lite0, many, cpus=16) == PreparePlan("processes", 8)  # uint8 crops: processes
    monkeypatch.setenv("PRH_DECODE_WORKERS", "lots")
    with pytest.raises(ValueError, match="PRH_DECODE_WORKERS"):
        plan_prepare(vit, many)


def test_language_models_cannot_use_processes():
    spec = ModelSpec(name="tiny-gpt2", loader="random_hf", id="GPT2Config", modality="language",
                     config=dict(n_layer=1, n_embd=16, n_head=2, n_positions=64))
    ex = load_extractor(spec, device="cpu")
    assert plan_prepare(ex, 10_000, cpus=16) == PreparePlan("inline")
    with pytest.raises(ValueError, match="cannot run in worker processes"):
        extract_all(ex, ["a", "b"], prepare="processes")
