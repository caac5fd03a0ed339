"""Building Hugging Face models, tokenizers and image processors from a `ModelSpec`.

- ``hf``: ``from_pretrained`` on a hub id, a local directory or a ``pkg:`` directory, with
  ``revision`` and ``trust_remote_code`` passed through and ``spec.config`` overriding config
  fields. Safetensors are required when the local directory has them. Image processors use the
  PIL backend (no torchvision).
- ``random_hf``: ``transformers.<ConfigClass>(**spec.config)`` built under
  ``torch.manual_seed(spec.seed)`` on the CPU in float32 (so the same seed gives the same weights on
  any device and dtype), inside ``torch.random.fork_rng`` (the caller's RNG is untouched).
  Language: tokenizer from ``spec.tokenizer``, or a file-free byte-level ``ByT5Tokenizer()`` when
  None; ``vocab_size`` and the pad/bos/eos ids default to the tokenizer's. Vision: a default
  ``ViTImageProcessorPil`` (resize to S x S bilinear, rescale 1/255, mean/std 0.5), S =
  ``spec.image_size`` or the config's ``image_size`` (224 if it has none).

Which model class: language models whose config names a causal-LM architecture (``*ForCausalLM``,
``*LMHeadModel``) — or, for random configs, whose type has a causal-LM class and no masked-LM class
(GPT-2, Llama yes; BERT no) — load with ``AutoModelForCausalLM`` (logits for bits per byte);
everything else with ``AutoModel``. Dual-tower checkpoints (CLIP, SigLIP) use their
``vision_model``/``text_model``; encoder-decoders use their encoder.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from tasks.extract import sources
from tasks.extract.base import TORCH_DTYPES
from tasks.extract.spec import ModelSpec

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass
class LoadedModel:
    """model: the module whose forward we call for features (the tower / encoder / base model).
    lm: the causal-LM module (logits) when there is one, else None.
    counted: the module whose parameters are counted.
    """

    model: torch.nn.Module
    lm: torch.nn.Module | None
    counted: torch.nn.Module


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide transformers' per-weight loading progress bar (our caller shows its own progress)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def config_class(name: str) -> type:
    """``transformers.<name>``, checked to be a config class."""
    import transformers
    from transformers import PretrainedConfig

    cls = getattr(transformers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, PretrainedConfig)):
        raise ValueError(f"{name!r} is not a transformers config class (e.g. 'ViTConfig', 'GPT2Config')")
    return cls


def is_causal_config(config: Any, from_architectures: bool) -> bool:
    """Whether a language config is a causal LM (see module docstring)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if getattr(config, "is_encoder_decoder", False):
        return False
    archs = getattr(config, "architectures", None) or []
    if from_architectures and archs:
        return any(a.endswith(_CAUSAL_SUFFIXES) for a in archs)
    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_decoder", False):
        return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _select_tower(model: torch.nn.Module, modality: str) -> torch.nn.Module:
    """The part that takes one modality: CLIP/SigLIP towers, the encoder of encoder-decoders."""
    tower = "vision_model" if modality == "vision" else "text_model"
    if hasattr(model, tower) and isinstance(getattr(model, tower), torch.nn.Module):
        return getattr(model, tower)
    if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        return model.get_encoder()
    return model


def _feature_overrides(config: Any, user: dict[str, Any]) -> None:
    """Config changes needed for deterministic features (applied unless the user set them)."""
    if getattr(config, "model_type", None) == "vit_mae" and "mask_ratio" not in user:
        config.mask_ratio = 0.0  # MAE masks 75% of patches at random in every forward otherwise


def _finish(model: torch.nn.Module, modality: str, causal: bool, device: torch.device, dtype: torch.dtype,
            device_map: bool) -> LoadedModel:
    model.eval()
    if not device_map:
        model.to(device=device, dtype=dtype)
    if causal:
        return LoadedModel(model=model.base_model, lm=model, counted=model)
    body = _select_tower(model, modality)
    return LoadedModel(model=body, lm=None, counted=body)


def load_pretrained(spec: ModelSpec, device: torch.device, device_map: bool = False) -> LoadedModel:
    """An ``hf`` model (see module docstring). ``device_map=True`` uses ``device_map='auto'``."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    src = sources.resolve_source(spec.id)
    common = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    config = AutoConfig.from_pretrained(src, **common, **spec.config)
    _feature_overrides(config, spec.config)
    causal = spec.modality == "language" and is_causal_config(config, from_architectures=True)
    cls = AutoModelForCausalLM if causal else AutoModel
    kwargs: dict[str, Any] = {"config": config, "dtype": TORCH_DTYPES[spec.dtype], **common}
    if Path(src).is_dir() and any(Path(src).glob("*.safetensors")):
        kwargs["use_safetensors"] = True
    if device_map:
        kwargs["device_map"] = "auto"
    with quiet_loading():
        model = cls.from_pretrained(src, **kwargs)
    return _finish(model, spec.modality, causal, device, TORCH_DTYPES[spec.dtype], device_map)


def load_random(spec: ModelSpec, device: torch.device, tokenizer: Any | None) -> LoadedModel:
    """A ``random_hf`` model from a config class, seeded (see module docstring)."""
    from transformers import AutoModel, AutoModelForCausalLM

    kwargs = dict(spec.config)
    if tokenizer is not None:
        kwargs.setdefault("vocab_size", len(tokenizer))
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):  # None where the tokenizer has none
            kwargs.setdefault(key, getattr(tokenizer, key, None))
    config = config_class(spec.id)(**kwargs)
    _feature_overrides(config, spec.config)
    causal = spec.modality == "language" and is_causal_config(config, from_architectures=False)
    cls = AutoModelForCausalLM if causal else AutoModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = cls.from_config(config, dtype=torch.float32)
    return _finish(model, spec.modality, causal, device, TORCH_DTYPES[spec.dtype], False)


def load_tokenizer(spec: ModelSpec) -> Any:
    """Tokenizer for a language spec: ``spec.tokenizer`` if set, else the model's own (``hf``) or
    a byte-level ``ByT5Tokenizer()`` (``random_hf``). A missing pad token falls back to eos/unk/id 0."""
    from transformers import AutoTokenizer, ByT5Tokenizer

    if spec.tokenizer is not None:
        tok = AutoTokenizer.from_pretrained(sources.resolve_source(spec.tokenizer), trust_remote_code=spec.trust_remote_code)
    elif spec.loader == "random_hf":
        tok = ByT5Tokenizer()
    else:
        tok = AutoTokenizer.from_pretrained(
            sources.resolve_source(spec.id), revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
    if tok.pad_token_id is None:
        fallback = tok.eos_token or tok.unk_token or tok.convert_ids_to_tokens(0)
        tok.pad_token = fallback
    return tok


def load_image_processor(spec: ModelSpec, model_config: Any) -> Any:
    """Image processor (PIL backend) for a vision spec, resized to ``spec.image_size`` if set."""
    from transformers import AutoImageProcessor, ViTImageProcessorPil

    if spec.loader == "random_hf":
        size = spec.image_size or getattr(model_config, "image_size", None) or 224
        size = size if isinstance(size, int) else int(size[0])
        return ViTImageProcessorPil(size={"height": size, "width": size})
    proc = AutoImageProcessor.from_pretrained(
        sources.resolve_source(spec.id), revision=spec.revision, trust_remote_code=spec.trust_remote_code, backend="pil"
    )
    if spec.image_size is not None:
        _resize_processor(proc, spec.image_size)
    return proc


def _resize_processor(proc: Any, s: int) -> None:
    """Make a processor output S x S images, keeping its resize/crop ratio when it centre-crops."""
    size = dict(getattr(proc, "size", None) or {})
    crop = dict(getattr(proc, "crop_size", None) or {})
    if getattr(proc, "do_center_crop", False) and crop:
        crop_side = crop.get("height") or crop.get("width") or s
        ratio = (size.get("shortest_edge") or size.get("height") or crop_side) / crop_side
        proc.crop_size = {"height": s, "width": s}
        proc.size = {"shortest_edge": int(round(s * ratio))}
    else:
        proc.size = {"height": s, "width": s}
