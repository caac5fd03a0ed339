"""Typed pipeline parameters (pydantic): what a config file holds and what the Prefect UI's run
form shows. Pure data; no Prefect, no storage."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.extract.spec import ModelSpec

# Which of the pipeline's metric parameters each metric takes (the paper's parameter names).
METRIC_PARAMETERS: dict[str, tuple[str, ...]] = {
    "mutual_knn": ("topk",),
    "cycle_knn": ("topk",),
    "lcs_knn": ("topk",),
    "edit_distance_knn": ("topk",),
    "jaccard_knn": ("topk",),
    "cka": ("kernel_metric", "rbf_sigma"),
    "unbiased_cka": ("kernel_metric", "rbf_sigma"),
    "cknna": ("topk",),
    "svcca": ("cca_dim",),
}


class DatasetParams(BaseModel):
    """Where the paired image–caption data comes from."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["openmoji", "path"] = Field("openmoji", description="'openmoji': the embedded demo; 'path': a table or folder")
    name: str | None = Field(None, description="Dataset name (default: derived from the source)")
    n: int | None = Field(1024, ge=2, description="openmoji: number of pairs in the seeded sample (null: all)")
    seed: int = Field(0, description="openmoji: sampling seed")
    image_size: int = Field(224, ge=16, le=2048, description="openmoji: rendered image size in pixels")
    path: str | None = Field(None, description="path: a Parquet/CSV table (image, text[, sample_id]) or a folder of images with .txt captions")

    @model_validator(mode="after")
    def _path_needed(self) -> "DatasetParams":
        if self.kind == "path" and not self.path:
            raise ValueError("dataset.kind 'path' needs dataset.path")
        return self


class AlignmentParams(BaseModel):
    """Which metrics to compute over every layer pair, and how to calibrate them."""

    model_config = ConfigDict(extra="forbid")
    metrics: list[str] = Field(["mutual_knn", "cka", "cknna"], min_length=1, description="Registered metric names")
    topk: int = Field(10, ge=1, description="Neighbours for k-NN metrics and CKNNA")
    kernel_metric: Literal["ip", "rbf"] = Field("ip", description="CKA kernel")
    rbf_sigma: float = Field(1.0, gt=0, description="RBF kernel width")
    cca_dim: int = Field(10, ge=1, description="SVCCA: singular directions kept")
    outlier_quantile: float = Field(0.95, gt=0, le=1, description="Clamp features at this quantile of |x| before L2 normalisation")
    permutations: int = Field(0, ge=0, le=100_000, description="Permutations for the calibrated score and p-value (0: off)")
    bootstrap: int = Field(0, ge=0, le=100_000, description="Bootstrap resamples for a 95% CI of each best score (0: off); k-NN metrics only, see docs/metrics.md")
    seed: int = Field(0, description="Permutation and bootstrap seed")
    pairs: Literal["cross_modal", "all"] = Field("cross_modal", description="vision × language pairs, or every pair of models")

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, names: list[str]) -> list[str]:
        from tasks.metrics import METRICS

        unknown = [n for n in names if n not in METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; registered: {sorted(METRICS)}")
        return names

    def metric_params(self, name: str) -> dict[str, Any]:
        """The parameters this metric takes, from the pipeline-wide values."""
        params = {p: getattr(self, p) for p in METRIC_PARAMETERS.get(name, ())}
        if params.get("kernel_metric") == "ip":
            params.pop("rbf_sigma", None)
        return params


class PipelineConfig(BaseModel):
    """A whole run: dataset, model zoo, alignment."""

    model_config = ConfigDict(extra="forbid")
    dataset: DatasetParams = Field(default_factory=DatasetParams)
    models: list[ModelSpec] = Field(..., min_length=1, description="The model zoo")
    alignment: AlignmentParams = Field(default_factory=AlignmentParams)

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        names = [m.name for m in models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {dupes}")
        return models

    def model_pairs(self) -> list[tuple[ModelSpec, ModelSpec]]:
        """Pairs to align: (vision, language) for 'cross_modal', else every unordered pair."""
        if self.alignment.pairs == "cross_modal":
            vision = [m for m in self.models if m.modality == "vision"]
            language = [m for m in self.models if m.modality == "language"]
            return [(v, l) for v in vision for l in language]
        return [(a, b) for i, a in enumerate(self.models) for b in self.models[i + 1 :]]


def load_config(path: str | Path) -> PipelineConfig:
    """Parse a YAML pipeline config; errors name the file and the bad field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"config {path}: file not found") from None
    except yaml.YAMLError as error:
        raise ValueError(f"config {path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"config {path}: expected a mapping with 'dataset', 'models', 'alignment'")
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors(include_url=False)
        )
        raise ValueError(f"config {path}: {problems}") from None
