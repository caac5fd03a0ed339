"""``device_map: auto`` (accelerate) through the spec gives the features of the plain path, on a CPU:
whole-model placement, and a model split between CPU memory and disk offload (accelerate's hooks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.extract import extract_all, load_extractor
from tasks.extract.spec import ModelSpec
from tests.tasks.extract.helpers import CAPTIONS

pytest.importorskip("accelerate")


@pytest.fixture(scope="module")
def gpt_dir(tmp_path_factory):
    from transformers import ByT5Tokenizer, GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("gpt")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=384, n_positions=128,
                               bos_token_id=1, eos_token_id=1)).save_pretrained(path)
    ByT5Tokenizer().save_pretrained(path)
    return path


def _same(a, b) -> None:
    assert a.layer_names == b.layer_names and a.param_count == b.param_count
    for x, y in zip(a.layers, b.layers):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
    assert a.extras["bits_per_byte"] == pytest.approx(b.extras["bits_per_byte"], rel=1e-6)


def test_device_map_auto_matches_the_plain_path(gpt_dir, monkeypatch):
    import transformers.integrations.accelerate as hf_accelerate

    maps: list[dict] = []
    real_infer = hf_accelerate.infer_auto_device_map

    def recording_infer(*args, **kwargs):  # the real function; we only keep its answer
        maps.append(real_infer(*args, **kwargs))
        return maps[-1]

    monkeypatch.setattr(hf_accelerate, "infer_auto_device_map", recording_infer)
    monkeypatch.setenv("PRH_OFFLOAD_DIR", str(gpt_dir.parent / "offload"))
    spec = ModelSpec(name="gpt", loader="hf", id=str(gpt_dir), modality="language", pooling="last")
    plain = extract_all(load_extractor(spec, device="cpu"), CAPTIONS, batch_size=2)
    assert maps == []
    auto = extract_all(load_extractor(spec.model_copy(update={"device_map": "auto"})), CAPTIONS, batch_size=2)
    assert maps and set(maps[-1].values()) == {"cpu"}  # went through accelerate's placement
    _same(plain, auto)

    # A machine with too little memory: accelerate keeps what fits in CPU memory and offloads the
    # rest to disk, running those layers through its hooks.
    real_budget = hf_accelerate.get_balanced_memory
    monkeypatch.setattr(hf_accelerate, "get_balanced_memory",
                        lambda *a, **k: {**real_budget(*a, **k), "cpu": 60_000})
    split = load_extractor(spec.model_copy(update={"device_map": "auto"}))
    assert "disk" in set(maps[-1].values())
    assert any(p.device.type == "meta" for p in split.lm.parameters())  # offloaded weights live on disk
    _same(plain, extract_all(split, CAPTIONS, batch_size=2))
