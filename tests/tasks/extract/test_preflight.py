"""`tasks.extract.preflight`: an ``hf`` model's ``config:`` overrides must be fields of its config,
never options of how it is read. ``AutoConfig.from_pretrained`` takes both as keyword arguments:
``trust_remote_code``, ``revision`` or ``local_files_only`` there failed with a raw ``TypeError``
(``got multiple values``) that ``prh run --check`` showed as "unchecked", exit 0; ``token``,
``proxies``, ``subfolder``, ``cache_dir`` or ``_configuration_file`` (a config file read from
another folder) were used unseen, and kept in the feature version's record as overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tasks.extract import ModelInputError, check_model
from tasks.extract.hf_models import check_model as check_hf
from tasks.extract.spec import ModelSpec

TINY_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                patch_size=8)


@pytest.fixture(scope="module")
def vit_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny ViT checkpoints, the second 3 layers deep (its config is not the first's)."""
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    root = tmp_path_factory.mktemp("vits")
    torch.manual_seed(0)
    for name, layers in (("a", 2), ("b", 3)):
        ViTModel(ViTConfig(**{**TINY_VIT, "num_hidden_layers": layers})).save_pretrained(root / name)
        ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root / name)
    return root / "a", root / "b"


@pytest.mark.parametrize("override, hint", [
    ({"trust_remote_code": True}, "set 'trust_remote_code' on the model entry"),
    ({"revision": "main"}, "set 'revision' on the model entry"),
    ({"local_files_only": False}, ""),
    ({"token": "hf_secret_token"}, "HF_TOKEN"),
    ({"proxies": {"https": "http://proxy.invalid:3128"}}, ""),
    ({"cache_dir": "/tmp/elsewhere"}, ""),
    ({"subfolder": "../b"}, ""),
    ({"_configuration_file": "../b/config.json"}, ""),
    ({"code_revision": "main", "hidden_size": 32}, ""),
])
def test_loading_options_under_config_are_refused(vit_dirs: tuple[Path, Path], override: dict, hint: str) -> None:
    spec = ModelSpec(name="vit", loader="hf", id=str(vit_dirs[0]), modality="vision", config=override)
    with pytest.raises(ModelInputError) as info:
        check_model(spec)
    msg = str(info.value)
    assert "model 'vit'" in msg and repr(str(vit_dirs[0])) in msg, msg
    for key in override:
        if key != "hidden_size":
            assert repr(key) in msg, msg
    assert "not fields of its config" in msg and hint in msg, msg
    assert "hf_secret_token" not in msg  # a token is not echoed


def test_config_fields_still_apply(vit_dirs: tuple[Path, Path]) -> None:
    spec = ModelSpec(name="vit", loader="hf", id=str(vit_dirs[0]), modality="vision",
                     config={"layer_norm_eps": 1e-5, "attn_implementation": "eager"})
    assert check_hf(spec).config.layer_norm_eps == 1e-5
