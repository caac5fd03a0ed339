"""Building Hugging Face models, tokenizers and image processors from a `ModelSpec`.

- ``hf``: ``from_pretrained`` on a hub id, a local directory or a ``pkg:`` directory, with
  ``revision`` and ``trust_remote_code`` passed through and ``spec.config`` overriding config
  fields. Safetensors are required when the local directory has them. Image processors use the
  PIL backend (no torchvision).
- ``random_hf``: ``transformers.<ConfigClass>(**spec.config)`` built under
  ``torch.manual_seed(spec.seed)`` on the CPU in float32 (so the same seed gives the same weights on
  any device and dtype), inside ``torch.random.fork_rng`` (the caller's RNG is untouched).
  Language: tokenizer from ``spec.tokenizer``, or a file-free byte-level ``ByT5Tokenizer()`` when
  None; ``vocab_size`` and the pad/bos/eos ids default to the tokenizer's, and no class-default
  special-token id is left outside the vocabulary (`_ids_inside_vocabulary`). Vision: a default
  ``ViTImageProcessorPil`` (resize to S x S bilinear, rescale 1/255, mean/std 0.5), S =
  ``spec.image_size`` or the config's ``image_size`` (224 if it has none); with ``crop_pct``, the
  shorter side resized to ``floor(S / crop_pct)`` (bilinear) and the central S x S kept. A NaFlex
  config (SigLIP 2's ``Siglip2VisionConfig``, or ``Siglip2Config``'s vision tower): its own
  ``Siglip2ImageProcessorPil`` with the config's ``patch_size`` and ``num_patches`` patches at most
  (``image_size`` S: ``(S / patch_size)^2``).

Before any weights load, `check_model` checks what it can and raises `ModelInputError` naming the
model and the problem: the source (`tasks.extract.preflight`: package dir, local path, or hub id
and revision, offline-aware), the config, the class transformers would build, whether it
takes the declared modality's input and builds without a library that is not installed (built on
the ``meta`` device: `meta_model`; the same build tells ``cls`` pooling on a model without a CLS
token: `cls_pooling_problem`), and the tokenizer; with the image processor, a configured
``image_size`` the model does not run at (`check_image_size`). A model that does not build at load
(`build_errors`) is a `ModelInputError` too. Hub ids read from the local cache only
(``local_files_only``) when the hub is offline or unreachable.

Large models: ``spec.device_map: auto`` (or ``load_extractor(spec, device='auto')``) loads with
``device_map='auto'``: `accelerate` spreads the layers over the visible GPUs, then CPU memory, then
disk (``offload_dir()``), and its hooks move activations between devices; inputs go to the first
layer's device (the CPU for offloaded weights). Use it with ``dtype: bfloat16``. Features equal
the single-device ones (tested on a CPU, with part of a model offloaded to disk).

Which model class: language models whose config names a causal-LM architecture (``*ForCausalLM``,
``*LMHeadModel``, or the causal-LM class transformers maps the type to: Gemma 3's
``Gemma3ForConditionalGeneration``) — or, for random configs, whose type has a causal-LM class and no masked-LM class
(GPT-2, Llama yes; BERT no), or is flagged as a decoder — load with ``AutoModelForCausalLM`` (logits
for bits per byte); everything else with ``AutoModel``. Never a model whose LM head sees later
tokens (`left_to_right`): XLNet, CPM-Ant, XLM unless ``causal``, BERT-like types unless
``is_decoder``. Dual-tower checkpoints (CLIP, SigLIP) use their
``vision_model``/``text_model``, vision-language ones (LLaVA, Gemma 3) their ``vision_tower`` /
``language_model``; encoder-decoders use their encoder.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import os
import pickle
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from huggingface_hub.errors import StrictDataclassError

from tasks.extract import preflight
from tasks.extract.base import TORCH_DTYPES, model_errors
from tasks.extract.centre_crop import set_centre_crop, set_resample
from tasks.extract.refusals import check_vocabulary
from tasks.extract.errors import ModelInputError
from tasks.extract.preflight import SourceAccess
from tasks.extract.spec import ModelSpec

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass
class LoadedModel:
    """model: the module whose forward we call for features (the tower / encoder / base model).
    lm: the causal-LM module (logits) when there is one, else None.
    counted: the module whose parameters are counted.
    commit: the hub commit the weights came from (a hub id, also from the local hub cache), else None.
    """

    model: torch.nn.Module
    lm: torch.nn.Module | None
    counted: torch.nn.Module
    commit: str | None = None


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
        names = [n for n in dir(transformers) if n.endswith("Config")]  # names only: nothing imported
        same_letters = [n for n in names if n.lower() in (str(name).lower(), f"{name}config".lower())]
        close = same_letters or difflib.get_close_matches(str(name), names, n=3, cutoff=0.8)
        hint = f"did you mean {' or '.join(repr(n) for n in close)}?" if close else "e.g. 'ViTConfig', 'GPT2Config'"
        raise ValueError(f"{name!r} is not a transformers config class ({hint})")
    return cls


def is_causal_config(config: Any, from_architectures: bool) -> bool:
    """Whether a language config is a causal LM (see module docstring)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if getattr(config, "is_encoder_decoder", False) or not left_to_right(config):
        return False
    archs = getattr(config, "architectures", None) or []
    model_type = getattr(config, "model_type", None)
    if from_architectures and archs:  # or the type's own causal-LM class (Gemma 3's Gemma3ForConditionalGeneration)
        return any(a.endswith(_CAUSAL_SUFFIXES) or a == MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type) for a in archs)
    if _decoder_flag(config):
        return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


#: Model types whose "causal LM" class is not left to right in the forward we call: XLNet (a
#: permutation LM: without a ``perm_mask`` every position sees every other), CPM-Ant (its causal-LM
#: forward marks the whole input as context, attended both ways).
_NEVER_LEFT_TO_RIGHT = ("xlnet", "cpmant")
#: Model types whose causal-LM class is left to right only when the config says it is a decoder
#: (``is_decoder``; XLM: ``causal``), besides the types with a masked-LM class (BERT, RoBERTa, ...).
_DECODER_IF_FLAGGED = ("bert-generation",)


def _decoder_flag(config: Any) -> bool:
    """The config's own "attend left to right" switch: ``causal`` for XLM, else ``is_decoder``."""
    if getattr(config, "model_type", None) == "xlm":
        return bool(getattr(config, "causal", False))
    return bool(getattr(config, "is_decoder", False))


def left_to_right(config: Any) -> bool:
    """False for a language config whose LM head's logits at position i can see later tokens, so
    that a next-token NLL from them is no language-model score: XLNet and CPM-Ant always; a model
    type that has a masked-LM class (BERT, RoBERTa, ELECTRA, XLM, ...) or BertGeneration unless its
    config is flagged as a decoder (`_decoder_flag`: their ``*LMHeadModel`` / ``*ForCausalLM``
    class attends both ways otherwise). True otherwise (checked for every causal-LM type of
    transformers that builds tiny: a later token never changes an earlier position's logits)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    if model_type in _NEVER_LEFT_TO_RIGHT:
        return False
    if model_type == "reformer" and "lsh" in (getattr(config, "attn_layers", None) or ()):
        return False  # LSH sorts every position into buckets: a later token moves which earlier ones a position sees
    if getattr(_text_config(config), "use_bidirectional_attention", None) in (True, "all"):
        return False  # Gemma's encoder switch (EmbeddingGemma; Gemma 4's "all"): every token attends both ways
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES or model_type in _DECODER_IF_FLAGGED:
        return _decoder_flag(config)
    return True


def _select_tower(model: torch.nn.Module, modality: str) -> torch.nn.Module:
    """The part that takes one modality: CLIP/SigLIP towers (FLAVA's ``image_model``), the image encoder (``vision_tower``) or
    the language model (``language_model``) of a vision-language model (LLaVA, Gemma 3), the encoder
    of encoder-decoders."""
    names = ("vision_model", "vision_tower", "image_model") if modality == "vision" else ("text_model", "language_model")
    for name in names:
        part = getattr(model, name, None)
        if isinstance(part, torch.nn.Module):
            # a vision_tower may wrap its transformer as CLIPVisionModel does: its own vision_model; a
            # language_model may be an encoder-decoder (Florence-2's BartModel): its encoder
            return _select_tower(part, modality) if name in ("vision_tower", "language_model") else part
    # an encoder-decoder, also when its config says otherwise (transformers 5 saves a T5EncoderModel's
    # config with is_encoder_decoder false, and AutoModel then builds the whole T5Model)
    two_parts = getattr(model.config, "is_encoder_decoder", False) or isinstance(getattr(model, "decoder", None), torch.nn.Module)
    if two_parts and hasattr(model, "get_encoder"):
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
        text = getattr(model.base_model, "language_model", None)
        if isinstance(text, torch.nn.Module):  # a vision-language model (Gemma 3): its language model and LM head
            return LoadedModel(model=text, lm=model, counted=torch.nn.ModuleList([text, model.get_output_embeddings()]))
        return LoadedModel(model=model.base_model, lm=model, counted=model)
    body = _select_tower(model, modality)
    return LoadedModel(model=body, lm=None, counted=body)


@dataclass
class CheckedModel:
    """What `check_model` found, with no weights loaded.

    access / tokenizer_access: where the files come from (``hf`` ids; tokenizer when one is read).
    config: the model config (overrides applied). causal: loads with ``AutoModelForCausalLM``.
    tokenizer: the language tokenizer (already loaded: it is small), else None.
    meta: a vision spec's model built on the ``meta`` device (`meta_model`: no weights), else None
    (a language spec, remote code not built there, a class that does not build there).
    """

    config: Any
    causal: bool
    access: SourceAccess | None = None
    tokenizer: Any | None = None
    meta: torch.nn.Module | None = None


def check_model(spec: ModelSpec) -> CheckedModel:
    """Everything that can be checked without weights; raises `ModelInputError` naming the problem.

    ``hf``: the source exists (package dir, local path, or hub id at that revision: see
    `tasks.extract.preflight`), its config reads, every ``spec.config`` override is a field of it (in
    sub-config dicts too), transformers has a class for it, the class takes the spec's modality
    (vision: ``pixel_values``, language: ``input_ids``). ``random_hf``: the config class exists and
    builds from ``spec.config``, every key of which (sub-config dicts included, recursively) it knows
    (`_refuse_unknown_keys`), same modality check. The model class is
    built on the ``meta`` device (`meta_model`: no weights), which refuses a class that needs a
    library that is not installed (timm, natten), and, for a vision spec, once for both checks, a
    forward that needs other inputs and ``cls`` pooling without a CLS token (`_refuse_vision_problems`).
    Language: the tokenizer loads.
    """
    language = spec.modality == "language"
    if spec.loader == "hf":
        access = preflight.resolve_access(spec, spec.id, spec.revision)
        config = _read_config(spec, access)
        causal = language and is_causal_config(config, from_architectures=True)
        _feature_overrides(config, spec.config)
        remote = bool(spec.trust_remote_code and getattr(config, "auto_map", None))
        if not remote:
            check_modality(spec, type(config), causal)
        meta = None
        if not language and (not remote or spec.pooling == "cls"):  # language: probe_position_offset builds it below
            meta = meta_model(spec, config, causal)
            _refuse_vision_problems(spec, meta, inputs=not remote)
        tokenizer = load_tokenizer(spec, access) if language else None
        if tokenizer is not None:  # a two-tower or vision-language checkpoint keeps these sizes in text_config
            check_vocabulary(spec, tokenizer, _text_config(config))
            _check_max_length(spec, tokenizer, _text_config(config), probe_position_offset(spec, config, causal))
    else:
        access = None
        cls = _config_class(spec)
        probe = _build_config(spec, cls, None)  # enough to tell modality and causal LMs before the tokenizer
        check_modality(spec, cls, language and is_causal_config(probe, from_architectures=False))
        tokenizer = load_tokenizer(spec) if language else None  # its vocabulary sizes the config
        config = _build_config(spec, cls, tokenizer)
        causal = language and is_causal_config(config, from_architectures=False)
        _feature_overrides(config, spec.config)
        meta = meta_model(spec, config, causal) if not language else None
        if not language:
            _refuse_vision_problems(spec, meta)
        if tokenizer is not None:
            check_vocabulary(spec, tokenizer, _text_config(config))
            _check_max_length(spec, tokenizer, _text_config(config), probe_position_offset(spec, config, causal))
    return CheckedModel(config, causal, access, tokenizer, meta)


#: The inputs besides ``pixel_values`` of a vision forward that takes its image as patches cut by its
#: image processor (SigLIP 2's NaFlex ``Siglip2VisionModel``): ``pixel_attention_mask`` `(B, N)`
#: (1 = a patch of the image, 0 = padding) and ``spatial_shapes`` `(B, 2)` (patch rows, columns).
PATCH_INPUTS = ("pixel_attention_mask", "spatial_shapes")


def other_vision_inputs(tower: torch.nn.Module) -> list[str]:
    """The inputs besides ``pixel_values`` that a vision module's forward needs (no default value)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in inspect.signature(tower.forward).parameters.values()
            if p.name != "pixel_values" and p.kind in kinds and p.default is inspect.Parameter.empty]


def takes_patches(tower: torch.nn.Module) -> bool:
    """Whether a vision module's forward takes its image as processor-cut patches: it needs exactly
    the `PATCH_INPUTS` besides ``pixel_values`` (SigLIP 2's NaFlex model)."""
    return sorted(other_vision_inputs(tower)) == sorted(PATCH_INPUTS)


def _refuse_other_inputs(spec: ModelSpec, model: torch.nn.Module | None) -> None:
    """A vision module (the part a vision spec runs: `_select_tower`, of the model built on the
    ``meta`` device; None: not built, not checked) whose forward needs inputs besides
    ``pixel_values`` cannot run on the pixels prh gives it (SegGPT's prompt image and mask), unless
    they are the `PATCH_INPUTS` of a NaFlex model, which its image processor gives (`takes_patches`).
    Nor can one that still takes ``input_ids``: a vision-language model in which `_select_tower` found
    no image encoder (GIT, Fuyu, Qwen2-VL's ``visual``, which needs its patch grid), whose forward
    failed on pixels alone at the load probe (``You must specify exactly one of input_ids or
    inputs_embeds``)."""
    if model is None:
        return
    tower = _select_tower(model, "vision")
    if "input_ids" in inspect.signature(tower.forward).parameters:
        raise ModelInputError(spec.name, spec.id, f"{type(tower).__name__} (model type {getattr(model.config, 'model_type', '?')!r}) "
                              "takes images together with token ids (a vision-language model) and holds no image "
                              "encoder that runs on pixel_values alone (a 'vision_model', 'vision_tower' or 'image_model' module): "
                              "it cannot give image features; use a vision model or an image-encoder checkpoint")
    needed = other_vision_inputs(tower)
    if needed and not takes_patches(tower):
        raise ModelInputError(spec.name, spec.id, f"{type(tower).__name__}'s forward needs input(s) "
                              f"{', '.join(map(repr, needed))} besides pixel_values, which prh does not give: use a "
                              "vision model whose forward takes pixel_values alone")


def _refuse_vision_problems(spec: ModelSpec, model: torch.nn.Module | None, inputs: bool = True) -> None:
    """The checks of a vision spec on its model built on the ``meta`` device (None: not built, not
    checked), built once for all of them: its inputs (`_refuse_other_inputs`; ``inputs`` False: not
    checked, for remote code) and ``cls`` pooling (`cls_pooling_problem`)."""
    if inputs:
        _refuse_other_inputs(spec, model)
    problem = cls_pooling_problem(spec, model)
    if problem is not None:
        raise ModelInputError(spec.name, spec.id, problem)


def cls_pooling_problem(spec: ModelSpec, model: torch.nn.Module | None) -> str | None:
    """Why ``pooling: cls`` cannot work for a vision spec whose model, built on the ``meta`` device,
    is ``model``: the part a vision spec runs (`_select_tower`) holds no CLS or register token in its
    ``embeddings`` (SigLIP, ConvNeXt and other CNNs), so its first batch would refuse it after the
    weights load (``pooling.pool_vision``). None when it can work or cannot be told (another pooling,
    no model, no ``embeddings`` module to read)."""
    if spec.modality != "vision" or spec.pooling != "cls" or model is None:
        return None
    from tasks.extract.hf_vision import declared_prefix_tokens

    if declared_prefix_tokens(_select_tower(model, "vision")) != 0:
        return None
    return (f"'cls' pooling needs a model with a CLS token, and {type(model).__name__}'s embeddings hold none "
            "(no CLS or register token): use 'avg'")


def _text_config(config: Any) -> Any:
    """The config of the part that reads token ids: ``text_config`` of a two-tower model (CLIP, SigLIP)
    or of a vision-language one (LLaVA, Gemma 3)."""
    return getattr(config, "text_config", None) or config


def _read_config(spec: ModelSpec, access: SourceAccess) -> Any:
    from transformers import AutoConfig

    try:
        config, unused = AutoConfig.from_pretrained(access.source, revision=spec.revision, trust_remote_code=spec.trust_remote_code,
                                                    local_files_only=access.local_files_only, return_unused_kwargs=True,
                                                    **spec.config)
    except (OSError, ValueError, KeyError, StrictDataclassError) as exc:
        raise ModelInputError(spec.name, spec.id, f"cannot read its config from {access.source!r}: {_first_line(exc)}") from exc
    if unused:  # from_pretrained sets only attributes the checkpoint's config has: the rest did nothing
        raise ModelInputError(spec.name, spec.id, f"config override key(s) {_with_hints(unused, config)} not applied: "
                              f"not fields of its {type(config).__name__}")
    nested = _unknown_sub_keys(spec.config, config, "")  # a sub-config override dict is merged in, typos kept
    if nested:
        raise ModelInputError(spec.name, spec.id, "; ".join(nested) + " (a config class keeps any key without using it)")
    return config


def _with_hints(keys: Any, config: Any, path: str = "") -> str:
    """``'hidden_sizee' (did you mean 'hidden_size'?), 'x'``: each key (after ``path``, e.g.
    ``'config.vision_config.'``), with the closest field of ``config`` (its attributes and
    ``attribute_map`` aliases) where one is close."""
    fields = sorted(k for k in vars(config) if not k.startswith("_")) + sorted(getattr(type(config), "attribute_map", {}) or {})
    return ", ".join(f"{path + key!r}" + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(key, fields, n=1)) else "")
                     for key in sorted(keys))


def _config_class(spec: ModelSpec) -> type:
    try:
        return config_class(spec.id)
    except ValueError as exc:
        raise ModelInputError(spec.name, spec.id, str(exc)) from None


def _build_config(spec: ModelSpec, cls: type, tokenizer: Any | None) -> Any:
    """``cls(**spec.config)``, with the vocabulary size and the pad/bos/eos ids of ``tokenizer`` where
    the config does not name them, and no default special-token id outside the vocabulary
    (`_ids_inside_vocabulary`); ``tokenizer`` None: before it loads (modality and causal-LM probe)."""
    kwargs = dict(spec.config)
    subs = getattr(cls, "sub_configs", None) or {}
    text, text_cls = kwargs, cls  # the vocabulary belongs to the text tower of a two-tower config (CLIPConfig)
    if "text_config" in subs and (tokenizer is not None or isinstance(kwargs.get("text_config"), dict)):
        text = kwargs["text_config"] = dict(kwargs.get("text_config") or {})
        text_cls = subs["text_config"]
    if tokenizer is not None:
        text.setdefault("vocab_size", len(tokenizer))
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):  # None where the tokenizer has none
            text.setdefault(key, getattr(tokenizer, key, None))
    if isinstance(text_cls, type):
        _ids_inside_vocabulary(text_cls, text, tokenizer)
    try:
        config = cls(**kwargs)
    except ImportError as exc:  # a sub-config class that needs a library that is not installed (EdgeTAM's timm backbone)
        raise ModelInputError(spec.name, spec.id, f"config {spec.config} needs a library that is not installed: "
                              f"{_first_line(exc)}") from exc
    except (TypeError, ValueError, StrictDataclassError) as exc:
        raise ModelInputError(spec.name, spec.id, f"config {spec.config} is not valid for {spec.id}: {_first_line(exc)}") from exc
    _refuse_unknown_keys(spec, config)
    return config


def _ids_inside_vocabulary(cls: type, kwargs: dict[str, Any], tokenizer: Any | None) -> None:
    """Set in ``kwargs`` (the arguments ``cls`` is built from) each special-token id (``*_token_id``)
    that they do not name and whose class default lies outside the vocabulary they give
    (``vocab_size``, else the class default): to the tokenizer's id of that name where it has one
    inside the vocabulary, else None. GPT-2's default bos/eos 50256 with a vocabulary of 400, or
    ModernBERT's cls/sep 50281/50282 with the byte-level tokenizer's 384 tokens, made transformers
    warn that they lie outside it. Only an id that cannot name a row of the embedding table
    changes (no default inside the vocabulary, as a ``padding_idx`` is, moves): the weights and the
    features stay as they were (the forward of these models reads no such id)."""
    defaults = {name: p.default for name, p in _signature_parameters(cls).items()}
    vocab = kwargs.get("vocab_size", defaults.get("vocab_size"))
    if not isinstance(vocab, int) or isinstance(vocab, bool):
        return
    for name, default in defaults.items():
        if not name.endswith("_token_id") or name in kwargs or not is_int(default) or 0 <= default < vocab:
            continue
        own = getattr(tokenizer, name, None) if tokenizer is not None else None
        kwargs[name] = own if is_int(own) and 0 <= own < vocab else None


def is_int(value: Any) -> bool:
    """Whether ``value`` is a Python integer and not a bool (a config field's value)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _signature_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword parameters of a config class's constructor (none where it has no signature)."""
    try:
        return dict(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        return {}


def _refuse_unknown_keys(spec: ModelSpec, config: Any) -> None:
    """`ModelInputError` for a key of ``spec.config`` that ``config`` (built with it) merely kept: a
    config class stores any keyword it does not know as an attribute, unused, so ``hidden_sizee: 64``
    changed nothing but the feature version. Checked at the top level and in every sub-config given
    as a dict (``vision_config``/``text_config`` of CLIP or SigLIP, an encoder's config, ...),
    recursively: `_unknown_keys`."""
    problems = _unknown_keys(spec.config, config, "")
    if problems:
        raise ModelInputError(spec.name, spec.id, "; ".join(problems) + " (a config class keeps any key without using it)")


def _unknown_keys(overrides: dict[str, Any], config: Any, path: str, placed: tuple[Any, ...] = ()) -> list[str]:
    """What is wrong with ``overrides`` applied to ``config`` (built or updated with them), one text per
    config class: keys stored on ``config`` but unknown (named ``path + key``, with a did-you-mean
    hint), then the same in its sub-configs (`_unknown_sub_keys`). Known: an attribute of the class's
    default instance, or (a sub-config) a key that a parent's default instance puts on its own
    sub-config of this class at this place, ``placed`` (Llava gives its ``vision_config`` a
    ``vocab_size``, T5Gemma its decoder a ``cross_attention_hidden_size``). A keyword ``__init__``
    turns into other fields (``rope_theta`` -> ``rope_parameters``, Bloom's ``n_embed``,
    ``attn_implementation``) is not stored, so it passes. A level whose class's default instance
    cannot be built is not checked (its sub-configs are)."""
    default = _default_config(type(config))
    stored = vars(config)
    extra = {key for p in placed if type(p) is type(config) for key in vars(p)}
    unknown = sorted(key for key in overrides
                     if key in stored and default is not None and key not in extra and not _has_field(default, key)
                     and not _read_by_its_code(type(config), key))
    here = [f"config key(s) {_with_hints(unknown, default, path)} not known to {type(config).__name__}"] if unknown else []
    return here + _unknown_sub_keys(overrides, config, path, (*placed, default) if default is not None else placed)


def _unknown_sub_keys(overrides: dict[str, Any], config: Any, path: str, defaults: tuple[Any, ...] | None = None) -> list[str]:
    """`_unknown_keys` of each override whose value is a dict and whose attribute on ``config`` is a
    sub-config (``vision_config`` -> ``CLIPVisionConfig``), named ``config.vision_config.<key>``.
    defaults: configs standing where ``config`` stands in default instances (its class's default,
    its parents' defaults' sub-configs); None: its class's default instance."""
    from transformers import PretrainedConfig

    if defaults is None:
        default = _default_config(type(config))
        defaults = (default,) if default is not None else ()
    problems = []
    for key, value in overrides.items():
        sub = vars(config).get(key) if isinstance(value, dict) else None
        if isinstance(sub, PretrainedConfig):
            placed = tuple(p for d in defaults if isinstance(p := vars(d).get(key), PretrainedConfig))
            problems += _unknown_keys(value, sub, f"{path or 'config.'}{key}.", placed)
    return problems


def _read_by_its_code(config_cls: type, key: str) -> bool:
    """Whether the config class's own transformers code (the ``configuration_*.py`` and
    ``modeling_*.py`` beside it) reads ``key`` although its default instance has no such field:
    ``getattr(config, "key", default)`` (DeBERTa-v2's ``position_buckets``, ``share_att_key``,
    ``norm_rel_ebd``), ``kwargs.get("key")`` in ``__init__`` (ModernBERT's
    ``global_attn_every_n_layers``), ``config.key``. A misspelt key is in no such code."""
    if _sibling_configs(config_cls):  # CLIP's text, vision and joint configs: `config.key` could be any of them
        return False
    pattern = re.compile(rf"(?<![\w.])(?:self\.)?config\.{re.escape(key)}\b|getattr\(\s*(?:self\.)?config\s*,\s*[\"']{re.escape(key)}[\"']"
                         rf"|kwargs\.(?:get|pop)\(\s*[\"']{re.escape(key)}[\"']")
    return any(pattern.search(text) for text in _family_sources(config_cls.__module__))


def _sibling_configs(config_cls: type) -> bool:
    """Whether the config class's module defines other config classes (CLIP, SigLIP, Gemma 3's text
    config beside its joint one) or has sub-configs (LLaVA): their code reads each one's keys alike."""
    from transformers import PretrainedConfig

    module = sys.modules.get(config_cls.__module__)
    others = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, PretrainedConfig)
              and v.__module__ == config_cls.__module__ and v is not config_cls] if module is not None else []
    return bool(others or getattr(config_cls, "sub_configs", None))


@functools.lru_cache(maxsize=32)
def _family_sources(module_name: str) -> tuple[str, ...]:
    """The text of the ``configuration_*.py`` and ``modeling_*.py`` files in a transformers config
    module's folder (none for a module outside ``transformers``: remote code is not read)."""
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if not module_name.startswith("transformers.") or not path:
        return ()
    folder = Path(path).parent
    return tuple(f.read_text(encoding="utf-8", errors="replace")
                 for f in sorted([*folder.glob("configuration_*.py"), *folder.glob("modeling_*.py")]))


def _has_field(config: Any, key: str) -> bool:
    """Whether a (default) config has attribute ``key``; one whose reading raises (a per-layer field
    of a heterogeneous config: ``AmbiguousGlobalPerLayerAttributeError``) is a field."""
    try:
        return hasattr(config, key)
    except Exception:  # noqa: BLE001 - the class knows the key, it only guards reading it
        return True


def _default_config(cls: type) -> Any | None:
    """``cls()``, or None for a config class that cannot be built without arguments."""
    try:
        return cls()
    except Exception:  # noqa: BLE001 - a config class that needs arguments: nothing to compare with
        return None


def model_class(spec: ModelSpec, config_cls: type, causal: bool) -> type:
    """The transformers class that `from_pretrained` / `from_config` will build for a config class."""
    from transformers import AutoModel, AutoModelForCausalLM

    auto = AutoModelForCausalLM if causal else AutoModel
    try:
        cls = auto._model_mapping[config_cls]
        # a type mapped to several classes (Funnel: FunnelModel, FunnelBaseModel): from_config builds the
        # first unless the config's architectures name another, which a modality check need not tell
        return cls[0] if isinstance(cls, (tuple, list)) else cls
    except KeyError:
        raise ModelInputError(spec.name, spec.id, f"transformers {auto.__name__} has no class for config "
                              f"{config_cls.__name__} (model type {getattr(config_cls, 'model_type', '?')!r}): "
                              f"{_whole_model_hint(config_cls, auto, spec.modality)}") from None
    except ImportError as exc:  # a class that needs a missing library (timm, torchvision, ...)
        raise ModelInputError(spec.name, spec.id, f"its model class cannot be imported: {_first_line(exc)}") from None


#: The sub-config keys of a two-tower config whose tower a spec of each modality runs (`_select_tower`).
_TOWER_CONFIGS = {"vision": ("vision_config", "image_config"), "language": ("text_config",)}


def _whole_model_hint(config_cls: type, auto: Any, modality: str) -> str:
    """What to use instead of a config class that ``auto`` (AutoModel / AutoModelForCausalLM) has no
    class for: the config classes of its own transformers module that ``auto`` builds and that hold
    it as the sub-config of the tower a ``modality`` spec runs (BlipVisionConfig: BlipConfig's
    ``vision_config``), else any model type ``auto`` builds."""
    module = sys.modules.get(config_cls.__module__)
    wholes = []
    for other in (vars(module).values() if module is not None else ()):
        subs = getattr(other, "sub_configs", None) if isinstance(other, type) else None
        keys = [key for key, sub in subs.items() if sub is config_cls and key in _TOWER_CONFIGS.get(modality, ())] \
            if isinstance(subs, dict) else []
        if keys and other in auto._model_mapping:
            wholes.append(f"{other.__name__} (its {keys[0]}: prh runs that part of the model)")
    if wholes:
        return f"it is a part of a model; use {' or '.join(wholes)}"
    return f"use a model type that transformers' {auto.__name__} builds"


def check_modality(spec: ModelSpec, config_cls: type, causal: bool) -> None:
    """The model class must take the spec's input: ``pixel_values`` (vision) or ``input_ids`` (language)."""
    cls = model_class(spec, config_cls, causal)
    params = inspect.signature(cls.forward).parameters
    takes_images, takes_text = "pixel_values" in params, "input_ids" in params
    kind = f"{cls.__name__} (model type {getattr(config_cls, 'model_type', '?')!r})"
    if spec.modality == "vision" and not takes_images:
        if takes_text:
            raise ModelInputError(spec.name, spec.id, f"declared modality 'vision', but {kind} is a language model "
                                  "(its forward takes input_ids, not pixel_values): set modality: language")
        raise ModelInputError(spec.name, spec.id, f"{kind} takes no images (no pixel_values input): not a vision model; "
                              "use a model whose forward takes pixel_values")
    if spec.modality == "language" and not takes_text:
        if takes_images:
            raise ModelInputError(spec.name, spec.id, f"declared modality 'language', but {kind} is a vision model "
                                  "(its forward takes pixel_values, not input_ids): set modality: vision")
        raise ModelInputError(spec.name, spec.id, f"{kind} takes no token ids (no input_ids input): not a language model; "
                              "use a model whose forward takes input_ids")


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """The exception's message on one line, shortened."""
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_pretrained(spec: ModelSpec, device: torch.device, device_map: bool = False,
                    checked: CheckedModel | None = None) -> LoadedModel:
    """An ``hf`` model (see module docstring). ``device_map=True`` uses ``device_map='auto'``."""
    from transformers import AutoModel, AutoModelForCausalLM

    checked = checked or check_model(spec)
    assert checked.access is not None
    src = checked.access.source
    cls = AutoModelForCausalLM if checked.causal else AutoModel
    kwargs: dict[str, Any] = {"config": checked.config, "dtype": TORCH_DTYPES[spec.dtype], "revision": spec.revision,
                              "trust_remote_code": spec.trust_remote_code,
                              "local_files_only": checked.access.local_files_only}
    if Path(src).is_dir() and any(Path(src).glob("*.safetensors")):
        kwargs["use_safetensors"] = True
    if device_map:
        kwargs["device_map"] = "auto"
        kwargs["offload_folder"] = str(offload_dir())  # used only when GPUs and CPU memory are not enough
    try:
        with quiet_loading():
            model = cls.from_pretrained(src, **kwargs)
    except ImportError as exc:  # a class that needs a library that is not installed (remote code, or not pre-checked)
        raise ModelInputError(spec.name, spec.id, missing_library(exc)) from exc
    except OSError as exc:  # missing or unreadable weight files
        raise ModelInputError(spec.name, spec.id, f"cannot load its weights from {src!r}: {_first_line(exc)}") from exc
    except pickle.UnpicklingError as exc:  # a pickle checkpoint holding more than tensors: never unpickled
        raise ModelInputError(spec.name, spec.id, f"its weights in {src!r} are a pickle that holds more than tensors, which "
                              "is not loaded (it could run code); use a safetensors checkpoint") from exc
    loaded = _finish(model, spec.modality, checked.causal, device, TORCH_DTYPES[spec.dtype], device_map)
    if checked.access.kind == "hub":  # the commit from_pretrained just read, through the hub cache
        loaded.commit = preflight.cached_commit(src, spec.revision or "main")
    return loaded


def offload_dir() -> Path:
    """Where ``device_map='auto'`` offloads weights that fit neither the GPUs nor CPU memory:
    ``PRH_OFFLOAD_DIR`` (``~`` expanded), else ``<tmp>/prh-offload``."""
    import tempfile

    path = Path(os.environ.get("PRH_OFFLOAD_DIR") or Path(tempfile.gettempdir()) / "prh-offload").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def input_device(module: torch.nn.Module, param: torch.nn.Parameter | None = None) -> torch.device:
    """Device to put a model's inputs on: its first (or the given) parameter's, or the CPU for
    weights offloaded by `accelerate` (``meta``; its hooks move inputs to the execution device)."""
    p = param if param is not None else next(module.parameters())
    return torch.device("cpu") if p.device.type == "meta" else p.device


def load_random(spec: ModelSpec, device: torch.device, checked: CheckedModel | None = None) -> LoadedModel:
    """A ``random_hf`` model from a config class, seeded (see module docstring)."""
    from transformers import AutoModel, AutoModelForCausalLM

    checked = checked or check_model(spec)
    cls = AutoModelForCausalLM if checked.causal else AutoModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        with build_errors(spec):
            model = cls.from_config(checked.config, dtype=torch.float32)
    return _finish(model, spec.modality, checked.causal, device, TORCH_DTYPES[spec.dtype], False)


def missing_library(exc: ImportError) -> str:
    """The `ModelInputError` text for a model class that needs a library that is not installed."""
    return f"its model class needs a library that is not installed: {_first_line(exc)}"


def build_errors(spec: ModelSpec) -> contextlib.AbstractContextManager[None]:
    """`model_errors` of building a model from its config (``from_config``): widths that do not
    divide, negative sizes, CvT's ``IndexError`` for lists of the wrong length, a missing library."""
    return model_errors(spec, lambda exc: missing_library(exc) if isinstance(exc, ImportError) else
                        f"cannot build the model from config {spec.config}: {type(exc).__name__}: {_first_line(exc)}")


def load_tokenizer(spec: ModelSpec, access: SourceAccess | None = None) -> Any:
    """Tokenizer for a language spec: ``spec.tokenizer`` if set, else the model's own (``hf``) or
    a byte-level ``ByT5Tokenizer()`` (``random_hf``). A missing pad token falls back to eos/unk/id 0.

    access: the model's checked source (``hf``); resolved here when None."""
    from transformers import AutoTokenizer, ByT5Tokenizer

    if spec.tokenizer is not None:
        tok_access = preflight.resolve_access(spec, spec.tokenizer, spec.tokenizer_revision, what="tokenizer")
        revision = spec.tokenizer_revision
    elif spec.loader == "random_hf":
        tok_access, revision = None, None
    else:
        tok_access, revision = access or preflight.resolve_access(spec, spec.id, spec.revision), spec.revision
    if tok_access is None:
        tok = ByT5Tokenizer()
    else:
        try:
            tok = AutoTokenizer.from_pretrained(tok_access.source, revision=revision, trust_remote_code=spec.trust_remote_code,
                                                local_files_only=tok_access.local_files_only)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelInputError(spec.name, spec.id, f"cannot load a tokenizer from {tok_access.source!r}: "
                                  f"{_first_line(exc)}") from exc
    if tok.pad_token_id is None:
        fallback = tok.eos_token or tok.unk_token or tok.convert_ids_to_tokens(0)
        tok.pad_token = fallback
    return tok


def position_offset(model: torch.nn.Module) -> int:
    """Position ids a language model skips before its first token: ``padding_idx + 1`` when its
    ``embeddings`` have a ``padding_idx`` (RoBERTa, XLM-R, MPNet, Data2Vec-text, X-MOD, ...: they
    compute positions from ``input_ids`` themselves, starting after the padding index), else 0.
    `HFLanguageExtractor` leaves such models their own positions (offset > 0), and
    `_check_max_length` takes the offset off the position table: one rule for both."""
    pad = getattr(getattr(model, "embeddings", None), "padding_idx", None)
    return pad + 1 if is_int(pad) and pad >= 0 else 0


def meta_model(spec: ModelSpec, config: Any, causal: bool) -> torch.nn.Module | None:
    """The model class built from the config on the ``meta`` device: no weights, no memory, no
    random draws. None when it does not build there (remote code or a class that needs real
    tensors: the real build reports its own errors, `build_errors`); a class that needs a library
    that is not installed (transformers' ``requires_backends``: TimmWrapper needs timm, DINAT
    natten), or whose constructor refuses the config (a ``ValueError`` raised while building it,
    e.g. GPT-2's ``n_embd`` not divisible by ``n_head``), is a `ModelInputError`: found before any
    weights load or any other model of the zoo is extracted."""
    import copy

    from transformers import AutoModel, AutoModelForCausalLM

    auto = AutoModelForCausalLM if causal else AutoModel
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            return auto.from_config(copy.deepcopy(config), trust_remote_code=spec.trust_remote_code)
    except ImportError as exc:
        raise ModelInputError(spec.name, spec.id, missing_library(exc)) from exc
    except ValueError as exc:
        if "meta" in str(exc).lower():  # a class that needs real tensors: the real build decides
            return None
        raise ModelInputError(spec.name, spec.id, f"{type(config).__name__} does not build its model: {exc}") from exc
    except Exception:  # noqa: BLE001 - a probe only: the real build reports its own errors
        return None


def probe_position_offset(spec: ModelSpec, config: Any, causal: bool) -> int | None:
    """`position_offset` of the module a language spec will run (the base model of a causal LM, the
    text tower or the encoder otherwise), built from the config on the ``meta`` device (`meta_model`).
    None when it does not build there (then `position_limit` falls back to a list of model types)."""
    model = meta_model(spec, config, causal)
    if model is None:
        return None
    body = model.base_model if causal else _select_tower(model, "language")
    return position_offset(body)


#: Fallback when the model cannot be built on the meta device (`probe_position_offset`): model types
#: whose positions start after the padding index (RoBERTa style): usable = max - pad - 1.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer", "xlm-roberta-xl", "mpnet", "data2vec-text",
                     "xmod", "roberta-prelayernorm", "ibert", "luke", "esm")


def position_limit(config: Any, offset: int | None = None) -> int | None:
    """Tokens a language model can take (its position table less ``offset``, the positions its
    embeddings skip: `position_offset`), or None when it has no fixed limit (relative or ALiBi
    positions: T5, BLOOM). ``offset`` None: from the model type (`_OFFSET_POSITIONS`) and
    ``pad_token_id``."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            if offset is None:
                pad = getattr(config, "pad_token_id", None)
                offset = pad + 1 if getattr(config, "model_type", None) in _OFFSET_POSITIONS and isinstance(pad, int) else 0
            return value - offset
    return None


def _check_max_length(spec: ModelSpec, tokenizer: Any, config: Any, offset: int | None = None) -> None:
    """``max_length`` must fit the model's positions (else the forward fails at the first long
    caption, mid-run) and leave room for a caption token after the tokenizer's special tokens
    (below that the tokenizer silently does not truncate) and the prompt's own tokens
    (`_check_prompt_room`). ``offset``: `position_limit`."""
    limit = position_limit(config, offset)
    if limit is not None and spec.max_length > limit:
        raise ModelInputError(spec.name, spec.id, f"max_length {spec.max_length} is more than the {limit} positions the "
                              f"model takes: set max_length: {limit} or less")
    special = int(tokenizer.num_special_tokens_to_add(pair=False))
    if spec.max_length <= special:
        raise ModelInputError(spec.name, spec.id, f"max_length {spec.max_length} leaves no caption token: the tokenizer "
                              f"adds {special} special token(s) to each text; set max_length: {special + 1} or more")
    if spec.prompt is not None:
        _check_prompt_room(spec, tokenizer, special, limit)


def prompt_pieces(prompt: str) -> list[str]:
    """The prompt's own text around its ``{text}`` placeholders (first = before the first caption,
    last = after the last one)."""
    return prompt.split("{text}")


def piece_ids(tokenizer: Any, piece: str) -> list[int]:
    """Token ids of a piece of prompt tokenized alone, without special tokens."""
    return list(tokenizer(piece, add_special_tokens=False)["input_ids"]) if piece else []


def _check_prompt_room(spec: ModelSpec, tokenizer: Any, special: int, limit: int | None) -> None:
    """The prompt's own tokens (each piece around ``{text}`` tokenized alone) plus the special tokens
    must leave a caption token within ``max_length``. A prompted caption too long is shortened to
    fit beside the whole prompt (`HFLanguageExtractor.fitted`): with no room, every caption would be
    cut away (refused at run time, caption by caption)."""
    assert spec.prompt is not None
    n_prompt = sum(len(piece_ids(tokenizer, piece)) for piece in prompt_pieces(spec.prompt))
    need = n_prompt + special + 1
    if spec.max_length >= need:
        return
    fix = "shorten the prompt" if limit is not None and need > limit else f"set max_length: {need} or more, or shorten the prompt"
    raise ModelInputError(spec.name, spec.id, f"the prompt {spec.prompt!r} takes {n_prompt} tokens and the tokenizer adds "
                          f"{special} special token(s): max_length {spec.max_length} leaves no room for a caption token beside "
                          f"them (every caption would be cut away); {fix}"
                          + (f" (the model takes {limit} positions)" if limit is not None else ""))


#: Vision model types whose forward takes processor-cut patches (`takes_patches`), and the PIL image
#: processor class that cuts them for a ``random_hf`` model of that type.
_PATCH_PROCESSORS = {"siglip2_vision_model": "Siglip2ImageProcessorPil"}


def is_patch_processor(proc: Any) -> bool:
    """Whether an image processor is a plain patch processor: one patch sequence per image, with its
    mask and grid (`PATCH_INPUTS`: SigLIP 2's ``Siglip2ImageProcessorPil``), rather than ``(B, 3, H, W)``
    pixels. LFM2-VL's ``Lfm2VlImageProcessor`` outputs the same inputs but splits an image into tiles
    (`tiles_images`): it is not one."""
    return set(PATCH_INPUTS) <= set(getattr(proc, "model_input_names", None) or ()) and not tiles_images(proc)


def tiles_images(proc: Any) -> bool:
    """Whether an image processor splits an image into tiles (``do_image_splitting``: LFM2-VL's,
    Idefics3's and SmolVLM's vision-language processors cut a large image into a grid of tiles,
    plus a thumbnail), each its own entry of ``pixel_values``: not one row per image."""
    return bool(getattr(proc, "do_image_splitting", False))


def load_image_processor(spec: ModelSpec, model_config: Any, access: SourceAccess | None = None) -> Any:
    """Image processor (PIL backend) for a vision spec, resized to ``spec.image_size`` if set and
    centre-cropping ``spec.crop_pct`` of the resized shorter side if set (`centre_crop`). A patch
    processor (NaFlex: `is_patch_processor`) takes ``image_size`` as its patch budget (`_set_patch_budget`)."""
    from transformers import AutoImageProcessor, ViTImageProcessorPil

    if spec.loader == "random_hf":
        vision = vision_config(model_config)
        if getattr(vision, "model_type", None) in _PATCH_PROCESSORS:
            return _patch_settings(_random_patch_processor(vision), spec)
        size = spec.image_size or getattr(vision, "image_size", None) or 224
        size = size if isinstance(size, int) else int(size[0])
        proc = ViTImageProcessorPil(size={"height": size, "width": size})
        if spec.crop_pct is not None:
            set_centre_crop(proc, spec.model_copy(update={"image_size": size}))
        if spec.resample is not None:
            set_resample(proc, spec)
        return proc
    access = access or preflight.resolve_access(spec, spec.id, spec.revision)
    try:
        proc = AutoImageProcessor.from_pretrained(access.source, revision=spec.revision, trust_remote_code=spec.trust_remote_code,
                                                  backend="pil", local_files_only=access.local_files_only)
    except (OSError, ValueError, KeyError) as exc:
        missing = _missing_processor_backend(exc)
        if missing is not None:  # LFM2-VL's processor: a torchvision class only
            raise ModelInputError(spec.name, spec.id, f"needs a library that is not installed here: {missing}") from exc
        raise ModelInputError(spec.name, spec.id, f"no usable image processor config (preprocessor_config.json) in "
                              f"{access.source!r}: {_first_line(exc)}; a vision checkpoint needs its model's "
                              "preprocessor_config.json beside its config") from exc
    except ImportError as exc:  # a processor class that needs a library that is not installed (DINOv3's: torchvision)
        missing = " ".join(str(exc).split()).split(". ")[0].rstrip(".")
        raise ModelInputError(spec.name, spec.id, f"needs a library that is not installed here: {missing}") from exc
    if tiles_images(proc):
        raise ModelInputError(spec.name, spec.id, f"its image processor {type(proc).__name__} splits each image into tiles "
                              "(do_image_splitting: a grid of tiles and a thumbnail, each its own entry of pixel_values), "
                              "so the model's features would not be one row per image: prh takes a vision model whose "
                              "processor gives one image per row"
                              + (" (a checkpoint folder whose preprocessor_config.json sets do_image_splitting: false "
                                 "gives one: each image squashed to max_image_size)" if hasattr(proc, "max_image_size") else ""))
    if is_patch_processor(proc):
        return _patch_settings(proc, spec)
    if spec.crop_pct is not None:
        set_centre_crop(proc, spec)
    elif spec.image_size is not None and squares_images(proc):
        _set_square_side(proc, spec)
    elif spec.image_size is not None:
        _resize_processor(proc, spec.image_size)
    if spec.resample is not None:
        set_resample(proc, spec)
    _refuse_several_images_per_row(spec, proc)
    return proc


def _refuse_several_images_per_row(spec: ModelSpec, proc: Any) -> None:
    """`ModelInputError` for an image processor that gives several images per input image without a
    ``do_image_splitting`` switch to tell it (LLaVA-NeXT's any-resolution grid, `(B, 1 + tiles, 3, H,
    W)`), found on two probe images (`image_pool.one_row_per_image`): it had passed the check and
    failed at the load probe inside the model, after the weights loaded. A processor that fails on
    the probe for another reason is left to the load probe, which names its error."""
    from PIL import Image

    from tasks.extract.image_pool import NotOneImagePerRow, apply_processor

    probe = [Image.new("RGB", (64, 48), (127, 127, 127)), Image.new("RGB", (48, 64), (30, 160, 60))]
    try:
        apply_processor(proc, probe)
    except NotOneImagePerRow as exc:
        raise ModelInputError(spec.name, spec.id, f"{exc}, so the model's features would not be one row per image: prh takes "
                              "a vision model whose processor gives one image per row") from exc
    except Exception:  # noqa: BLE001 - a probe only: the load probe reports the processor's own error
        return


def vision_config(config: Any) -> Any:
    """The config of a model's image encoder: ``vision_config`` of a two-tower or vision-language
    config (CLIP, LLaVA), ``image_config`` (FLAVA), else the config itself."""
    return getattr(config, "vision_config", None) or getattr(config, "image_config", None) or config


def check_image_size(spec: ModelSpec, checked: CheckedModel, processor: Any) -> None:
    """`ModelInputError` naming the model and the sizes for a configured ``image_size`` the model
    cannot run at: it had passed the check and failed at the load probe, inside the model, after the
    weights loaded (``Kernel size can't be greater than actual input size`` for an image smaller
    than a ViT's patch; SAM's ``Input image size (32*32) doesn't match model (64*64)``; position
    embeddings that do not interpolate, as AIMv2's, at a larger size).

    The model built on the ``meta`` device (``checked.meta``: no weights, no arithmetic) runs on
    pixels of the shape the configured processor gives the two probe images the load probe uses,
    with the forward arguments the extractor will pass (`hf_vision.vision_forward_kwargs`): accepted
    when that runs (one forward), refused when it fails while the same forward at the model's own
    size (its config's ``image_size``) runs, so that a forward the meta device cannot run (a
    ``.item()``: Idefics3) refuses nothing. Where that cannot tell (no meta model; the forward
    fails and there is no own size, or it fails there too), an ``image_size`` smaller than the
    patch stride (`hf_vision.patch_stride`) is refused: no whole patch to cut. A patch processor's
    ``image_size`` is its patch budget (`_set_patch_budget`), checked there; a processor that fails on the probe images is left to the load probe."""
    from tasks.extract.hf_vision import patch_stride

    if spec.image_size is None or spec.modality != "vision" or is_patch_processor(processor):
        return
    tower = _select_tower(checked.meta, "vision") if checked.meta is not None else None
    told, problem = _meta_size_problem(spec, tower, processor) if tower is not None else (False, None)
    if problem is not None:
        raise ModelInputError(spec.name, spec.id, problem)
    config = tower.config if tower is not None else vision_config(checked.config)
    stride = patch_stride(config)
    if not told and stride is not None and spec.image_size < max(stride):
        own = _own_size(config)
        raise ModelInputError(spec.name, spec.id, f"image_size {spec.image_size} is smaller than the patch size "
                              f"{_side_text(stride)} of its {type(config).__name__}: no whole patch fits in {spec.image_size} x "
                              f"{spec.image_size} pixels; set image_size: {max(stride)} or more"
                              + (f" (the model's own size: {_side_text(own)})" if own is not None else ""))


def _side_text(side: tuple[int, int]) -> str:
    """``16`` for a square (16, 16), ``16 x 8`` otherwise."""
    return str(side[0]) if side[0] == side[1] else f"{side[0]} x {side[1]}"


def _own_size(config: Any) -> tuple[int, int] | None:
    """A vision config's ``image_size`` as (height, width) (an int: a square; YOLOS: a list), else None."""
    size = getattr(config, "image_size", None)
    if is_int(size) and size > 0:
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(is_int(v) and v > 0 for v in size):
        return int(size[0]), int(size[1])
    return None


def _probe_shape(processor: Any) -> tuple[int, ...] | None:
    """The `(B, C, H, W)` shape of the pixels ``processor`` gives the load probe's images
    (`hf_vision.probe_images`); None when it fails on them or gives no such pixels."""
    from tasks.extract.hf_vision import probe_images
    from tasks.extract.image_pool import apply_processor

    try:
        pixels = apply_processor(processor, probe_images())
    except Exception:  # noqa: BLE001 - a probe only: the load probe reports the processor's own error
        return None
    shape = getattr(pixels, "shape", None)
    return tuple(int(v) for v in shape) if shape is not None and len(shape) == 4 else None


def _meta_forward(tower: torch.nn.Module, shape: tuple[int, ...], image_size: int | None) -> tuple[str | None, list[tuple[int, ...]]]:
    """The forward of a vision module built on the ``meta`` device on ``shape`` pixels, with the
    arguments the extractor passes at ``image_size`` (`hf_vision.vision_forward_kwargs`): (its error,
    ``Type: first line``, or None when it runs; the shapes of its hidden states, empty when it fails).
    It runs on a copy of ``tower``: a forward may change its model (Swin shrinks its layers' attention
    window to a smaller image), and the next forward, at another size, is to find it as built."""
    import copy

    from tasks.extract.hf_vision import vision_forward_kwargs

    dtype = next((p.dtype for p in tower.parameters() if p.is_floating_point()), torch.float32)
    try:
        fresh = copy.deepcopy(tower)  # meta tensors: no memory copied (a few ms to 0.3 s for a large model)
        with torch.inference_mode(), torch.random.fork_rng(devices=[]), torch.device("meta"):
            out = fresh(pixel_values=torch.empty(shape, dtype=dtype), output_hidden_states=True, return_dict=True,
                        **vision_forward_kwargs(fresh, image_size))
    except Exception as exc:  # noqa: BLE001 - what the forward (or a copy that cannot be made) raised is the answer
        return f"{type(exc).__name__}: {_first_line(exc, 200).rstrip('.')}", []
    states = getattr(out, "hidden_states", None)
    return None, [tuple(h.shape) for h in states if isinstance(h, torch.Tensor)] if isinstance(states, (tuple, list)) else []


def _meta_forward_error(tower: torch.nn.Module, shape: tuple[int, ...], image_size: int | None) -> str | None:
    """The error of `_meta_forward`, None when it runs."""
    return _meta_forward(tower, shape, image_size)[0]


def _meta_size_problem(spec: ModelSpec, tower: torch.nn.Module, processor: Any) -> tuple[bool, str | None]:
    """(whether the ``meta`` forward tells, the problem): see `check_image_size`. Told when the
    forward runs at the configured size (the one forward of an accepted size; a model without a
    size of its own is accepted so too: its config's ``patch_size`` may be one its model does not
    use, PoolFormer's), or fails there while it runs at the model's own size; the problem is then
    the configured size's error, with a size to use instead (`_size_to_use`)."""
    from tasks.extract.hf_vision import patch_stride

    shape = _probe_shape(processor)
    if shape is None:
        return False, None
    error = _meta_forward_error(tower, shape, spec.image_size)
    if error is None:
        return True, None
    own = _own_size(tower.config)
    if own is None or _meta_forward_error(tower, (*shape[:2], *own), None) is not None:
        return False, None
    size, (height, width) = spec.image_size, shape[-2:]
    stride = patch_stride(tower.config)
    small = stride is not None and (height < stride[0] or width < stride[1])
    pixels = f"{height} x {width} pixels" + ("" if (height, width) == (size, size) else
                                           f" (its image processor {type(processor).__name__}'s output at image_size {size})")
    why = (f", smaller than its patch size {_side_text(stride)} (no whole patch)" if small and stride is not None else
           " (its forward takes no interpolate_pos_encoding: its position embeddings may fit its own size only)"
           if _fixed_position_embeddings(tower) else "")
    return True, (f"image_size {size}: {type(tower).__name__} does not run on {pixels}{why}, though it runs at its own "
                  f"{_side_text(own)}: {error}; {_size_to_use(tower, shape, size, own, stride, small)}")


def _fixed_position_embeddings(tower: torch.nn.Module) -> bool:
    """Whether a vision module has absolute position embeddings (a parameter named ``pos_embed`` or
    ``position_embedding(s)``: ViT, AIMv2, SAM, PVT) and a forward that cannot interpolate them (no
    ``interpolate_pos_encoding``). A convolutional model (ConvNeXt, EfficientNet) has none: its
    failure at a size is its downsampling's, not a grid of positions."""
    if "interpolate_pos_encoding" in inspect.signature(tower.forward).parameters:
        return False
    return any(re.search(r"pos_embed|position_embedding", name) for name, _ in tower.named_parameters())


def _size_to_use(tower: torch.nn.Module, shape: tuple[int, ...], size: int, own: tuple[int, int],
                 stride: tuple[int, int] | None, small: bool) -> str:
    """What to set instead of an ``image_size`` the model does not run at: its patch size (an image
    smaller than one patch: ``small``) or the multiple of it below ``size``, when the ``meta`` forward
    runs on such a square and its hidden states differ in shape from those at its own size, else the
    model's own size (which runs). The same shapes at another size are a fixed grid of position
    embeddings broadcast over fewer patches (AIMv2 at one patch: it ran on ``meta``, and its
    extraction is refused for its tokens outnumbering its patches)."""
    side = max(stride) if stride is not None else None
    candidate = side if small else (size // side * side if side and size % side and size > side else None)
    if candidate is not None and candidate not in own:
        error, states = _meta_forward(tower, (*shape[:2], candidate, candidate), candidate)
        if error is None and states != _meta_forward(tower, (*shape[:2], *own), None)[1]:
            return (f"set image_size: {candidate} or more" if small else
                    f"use a multiple of its patch size {side} (e.g. image_size: {candidate})")
    return f"set image_size: {own[0]}, its own size, or remove image_size" if own[0] == own[1] else "remove image_size"


def squares_images(proc: Any) -> bool:
    """Whether an image processor is a vision-language one that can split images into tiles but
    does not (Idefics3's, SmolVLM's with ``do_image_splitting: false``): it squashes each whole
    image to a ``max_image_size`` x ``max_image_size`` square (``{"longest_edge": side}``), one image
    per row, which is what the model's vision encoder sees (`image_pool.one_row_per_image`)."""
    side = getattr(proc, "max_image_size", None)
    return (hasattr(proc, "do_image_splitting") and not tiles_images(proc) and isinstance(side, dict)
            and is_int(side.get("longest_edge")))


def _set_square_side(proc: Any, spec: ModelSpec) -> None:
    """``image_size: S`` for a processor that squares images (`squares_images`): its
    ``max_image_size`` becomes S (its ``size``, the resize before it, is its own); a probe image
    must come out S x S (else the setting would be silently ignored)."""
    from PIL import Image

    assert spec.image_size is not None
    proc.max_image_size = {"longest_edge": spec.image_size}
    probe = Image.new("RGB", (3, 2), (127, 127, 127))
    shape = tuple(proc(images=[probe], return_tensors="np")["pixel_values"].shape[-2:])
    if shape != (spec.image_size, spec.image_size):
        raise ModelInputError(spec.name, spec.id, f"image_size {spec.image_size}: the image processor {type(proc).__name__} "
                              f"gave {shape} pixels instead of a {spec.image_size} x {spec.image_size} square: remove image_size")


#: transformers' error when a checkpoint's image processor exists only for a backend that cannot be
#: imported here (``AutoImageProcessor``: LFM2-VL's ``Lfm2VlImageProcessor`` is a torchvision class).
_UNAVAILABLE_BACKEND = re.compile(r"following image processor classes: (?P<classes>.+?)\. None of these classes could be "
                                  r"imported\. Missing optional dependencies: (?P<missing>[^.]+)\.")


def _missing_processor_backend(exc: BaseException) -> str | None:
    """``its image processor (<backend>: <class>) needs <library>`` when ``exc`` is transformers'
    error for an image processor whose only backends need a library that is not installed; else None."""
    found = _UNAVAILABLE_BACKEND.search(" ".join(str(exc).split()))
    return None if found is None else f"its image processor ({found['classes']}) needs {found['missing']}"


def _random_patch_processor(vision: Any) -> Any:
    """The patch processor of a ``random_hf`` NaFlex config (`_PATCH_PROCESSORS`), with the class's
    resizing and normalisation, the config's ``patch_size`` and, as patch budget, its ``num_patches``
    (the position-embedding grid, which the model interpolates to each image's patch grid)."""
    import transformers

    cls = getattr(transformers, _PATCH_PROCESSORS[vision.model_type])
    return cls(patch_size=int(vision.patch_size), max_num_patches=int(vision.num_patches))


def _patch_settings(proc: Any, spec: ModelSpec) -> Any:
    """Apply a spec's image settings to a patch processor: ``crop_pct`` is refused (it keeps the
    whole image, resized keeping its aspect ratio), ``image_size`` sets the patch budget
    (`_set_patch_budget`), ``resample`` the resize filter (`set_resample`)."""
    if spec.crop_pct is not None:
        raise ModelInputError(spec.name, spec.id, f"crop_pct: the image processor {type(proc).__name__} does not crop (it "
                              "resizes the whole image, keeping its aspect ratio, to at most max_num_patches patches): "
                              "remove crop_pct")
    if spec.image_size is not None:
        _set_patch_budget(proc, spec)
    if spec.resample is not None:
        set_resample(proc, spec)
    return proc


def _set_patch_budget(proc: Any, spec: ModelSpec) -> None:
    """``image_size: S`` for a patch processor: at most as many patches as an S x S image has,
    ``max_num_patches = (S / patch_size)^2`` (each image is resized keeping its aspect ratio to fit
    them); S must be a multiple of the patch size."""
    assert spec.image_size is not None
    patch = int(proc.patch_size)
    if spec.image_size % patch:
        raise ModelInputError(spec.name, spec.id, f"image_size {spec.image_size}: for {type(proc).__name__} it sets the patch "
                              f"budget of an image_size x image_size image, so it must be a multiple of its patch size "
                              f"{patch} (e.g. {spec.image_size // patch * patch or patch})")
    proc.max_num_patches = (spec.image_size // patch) ** 2


def _resize_processor(proc: Any, s: int) -> None:
    """Make a processor output S x S images the way it resizes now: a centre-cropping processor
    keeps its resize/crop ratio and its kind of resize (to a shortest edge, keeping the aspect, as
    CLIP / DINOv2; or to a fixed height x width, squashing, as DeiT); one that resizes to a
    shortest edge without a crop step (ConvNeXt: ``crop_pct``) gets that edge; any other S x S."""
    size = {k: v for k, v in dict(getattr(proc, "size", None) or {}).items() if v is not None}
    crop = {k: v for k, v in dict(getattr(proc, "crop_size", None) or {}).items() if v is not None}
    if getattr(proc, "do_center_crop", False) and crop:
        crop_h, crop_w = crop.get("height") or crop.get("width") or s, crop.get("width") or crop.get("height") or s
        proc.crop_size = {"height": s, "width": s}
        if "height" in size and "width" in size:
            proc.size = {"height": int(round(s * size["height"] / crop_h)), "width": int(round(s * size["width"] / crop_w))}
        else:
            proc.size = {"shortest_edge": int(round(s * (size.get("shortest_edge") or crop_h) / crop_h))}
    elif "shortest_edge" in size:
        proc.size = {"shortest_edge": s}
    else:
        proc.size = {"height": s, "width": s}
