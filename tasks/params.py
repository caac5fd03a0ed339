"""Typed pipeline parameters (pydantic): what a config file holds and what the Prefect UI's run
form shows. Pure data; no Prefect, no storage.

Bad values are refused when the config is read, before anything runs: integers must be
integers (``true`` or ``2.5`` is not a ``topk``), floats must be finite, unknown keys are errors
(with the valid keys and a likely intended one), and the parameters must fit together (CKNNA
needs ``topk >= 2``; an OpenMoji sample of ``n`` pairs must hold ``alignment.min_samples()``).
:func:`load_config` names the file, the field path and its line in every message.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from tasks.extract.spec import SEED_MAX, FieldError, ModelSpec

if TYPE_CHECKING:
    from tasks.data.sources import ColumnMap

# Which of the pipeline's metric parameters each metric takes (the paper's parameter names).
METRIC_PARAMETERS: dict[str, tuple[str, ...]] = {
    "mutual_knn": ("topk", "knn_precision"),
    "cycle_knn": ("topk", "knn_precision"),
    "lcs_knn": ("topk", "knn_precision"),
    "edit_distance_knn": ("topk", "knn_precision"),
    "jaccard_knn": ("topk", "knn_precision"),
    "cka": ("kernel_metric", "rbf_sigma"),
    "unbiased_cka": ("kernel_metric", "rbf_sigma"),
    "cknna": ("topk",),
    "svcca": ("cca_dim",),
}


def parameters_of(metric: str) -> tuple[str, ...]:
    """The pipeline parameters ``metric`` takes: the built-ins' from ``METRIC_PARAMETERS``, a
    user metric's (``tasks.metric_plugins``) those named in its defaults."""
    from tasks.metric_plugins import is_builtin, metric_parameters
    from tasks.metrics import METRICS

    if metric not in METRICS:
        return METRIC_PARAMETERS.get(metric, ())
    return METRIC_PARAMETERS.get(metric, ()) if is_builtin(metric) else metric_parameters(metric)


# Metrics built on the unbiased HSIC estimator, which needs at least 4 samples.
_UNBIASED_METRICS = frozenset({"unbiased_cka", "cknna"})

# Integers are integers: no booleans, no strings, no floats with or without a fraction.
Int = Annotated[int, Field(strict=True)]
#: A number written as YAML 1.2 writes one: PyYAML (YAML 1.1) reads ``1e-3`` (no dot) as a string.
_NUMBER_TEXT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


def _number_from_yaml_text(value: Any) -> Any:
    """``float(value)`` for a string that is a plain decimal number (``'1e-3'``, which PyYAML
    leaves a string); anything else unchanged, for the strict check to accept or refuse. A NaN or
    infinite number is refused here, before the field's bounds would name another problem."""
    if isinstance(value, str) and _NUMBER_TEXT.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError("finite_number", "Input should be a finite number")
    return value


# Floats are finite numbers (integers are accepted and widened; `1e-3`, a string to PyYAML, is
# read as the number); no booleans and no other strings: `outlier_quantile: yes` was taken as 1.0
# (no clamp at all) and `rbf_sigma: on` as 1.0.
Float = Annotated[float, BeforeValidator(_number_from_yaml_text), Field(strict=True, allow_inf_nan=False)]
# Booleans are true or false: `outlier_exact: 0` or "no" are errors, not false.
Bool = Annotated[bool, Field(strict=True)]


#: Pairs in the OpenMoji demo's seeded sample when ``dataset.n`` is null.
OPENMOJI_N = 1024

#: The dataset fields that apply to some kinds only (elsewhere they must keep their default).
DATASET_FIELD_KINDS: dict[str, tuple[str, ...]] = {
    "seed": ("openmoji",), "image_size": ("openmoji",),
    "revision": ("huggingface",), "split": ("huggingface", "path"), "image_root": ("path",), "path": ("path", "huggingface"),
    "image_column": ("path", "huggingface"), "text_column": ("path", "huggingface"), "captions": ("path", "huggingface"),
}


class DatasetParams(BaseModel):
    """Where the paired image–caption data comes from."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["openmoji", "path", "huggingface"] = Field(
        "openmoji", description="'openmoji': the embedded demo; 'path': a table or folder; 'huggingface': a Hugging Face dataset")
    name: str | None = Field(None, description="Dataset name (default: derived from the source)")
    n: Int | None = Field(None, ge=2, description="openmoji: number of pairs in the seeded sample (null: 1024); huggingface: "
                          "the first n rows of the split; path: the first n rows of the table or images of the folder "
                          "(null: all of them)")
    seed: Int = Field(0, description="openmoji: sampling seed")
    image_size: Int = Field(224, ge=16, le=2048, description="openmoji: rendered image size in pixels")
    path: str | None = Field(None, description="path: a Parquet/CSV/JSON Lines table (image, text[, sample_id]), a COCO captions "
                             ".json (images + annotations) or a JSON array of rows, a folder of "
                             "images with .txt captions, or a folder with a metadata.jsonl/.csv/.parquet table (Hugging Face "
                             "ImageFolder); huggingface: a hub dataset id (e.g. minhuh/prh) or a local dataset folder")
    revision: str | None = Field(None, description="huggingface: hub branch, tag or commit (the paper's data: wit_1024)")
    split: str | None = Field(None, min_length=1, description="huggingface: split to read (null: train, or the split a save_to_disk folder records); path: the images of "
                              "this split of a Karpathy split file (dataset_coco.json: train, restval, val or test; "
                              "null: all)")
    image_column: str = Field("image", min_length=1, description="path, huggingface: column of the images (an ImageFolder "
                              "metadata table without an 'image' column: file_name)")
    text_column: str = Field("text", min_length=1, description="path, huggingface: column of the caption(s)")
    image_root: str | None = Field(None, min_length=1, description="path, a table: the folder its relative image paths "
                                   "are read from (default: the table's folder)")
    captions: Literal["first", "all"] = Field(
        "first", description="path, huggingface, several captions per image (a list column, a .txt of several lines): "
        "'first' (the paper's) or 'all' (one row per caption)")

    @model_validator(mode="after")
    def _path_needed(self) -> "DatasetParams":
        if self.kind in ("path", "huggingface") and not (self.path or "").strip():
            what = "a table or a folder" if self.kind == "path" else "a hub dataset id or a dataset folder"
            raise FieldError("path", f"dataset.kind {self.kind!r} needs dataset.path ({what})")
        if self.kind == "path" and re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", self.path or ""):
            raise FieldError("path", f"dataset.path {self.path!r} is a URL: kind 'path' reads a table or folder on this "
                                     "machine (copy the data here first; a Hugging Face hub dataset id takes kind 'huggingface')")
        for name, kinds in DATASET_FIELD_KINDS.items():
            if self.kind not in kinds and getattr(self, name) != type(self).model_fields[name].default:
                which = " and ".join(repr(k) for k in kinds) + (" only" if len(kinds) == 1 else "")
                raise FieldError(name, f"dataset.{name} applies to kind {which} (kind is {self.kind!r})")
        if self.image_column == self.text_column:
            raise FieldError("text_column", f"dataset.image_column and dataset.text_column are both {self.text_column!r}")
        return self

    def sample_n(self) -> int | None:
        """The rows to read: ``n``, or for the OpenMoji demo ``OPENMOJI_N`` when ``n`` is null
        (null stays null in the parameters, so that a form pre-filled from the demo config
        carries no row limit into a run switched to another kind)."""
        return OPENMOJI_N if self.kind == "openmoji" and self.n is None else self.n

    def columns(self) -> "ColumnMap":
        """The table column names and caption policy (``tasks.data.sources.ColumnMap``)."""
        from tasks.data.sources import ColumnMap

        return ColumnMap(self.image_column, self.text_column, self.captions)


def _metric_choices(schema: dict[str, Any]) -> None:
    """The UI form's metric list offers the registered names (the server refuses others before a
    run is created): ``items.enum``, no repeats."""
    from tasks.metric_plugins import load_metric_modules
    from tasks.metrics import METRICS

    with contextlib.suppress(ValueError):  # a module that cannot be imported fails the run that names its metric
        load_metric_modules()
    schema.setdefault("items", {})["enum"] = sorted(METRICS)
    schema["uniqueItems"] = True


#: ``alignment.device``: what ``tasks.alignment.alignment_device`` resolves.
ALIGNMENT_DEVICE = re.compile(r"cpu|auto|cuda(:[0-9]+)?")


class AlignmentParams(BaseModel):
    """Which metrics to compute over every layer pair, and how to calibrate them."""

    model_config = ConfigDict(extra="forbid")
    metrics: list[str] = Field(["mutual_knn", "cka", "cknna"], min_length=1, description="Registered metric names",
                               json_schema_extra=lambda schema: _metric_choices(schema))
    topk: Int = Field(10, ge=1, description="Neighbours for k-NN metrics and CKNNA")
    kernel_metric: Literal["ip", "rbf"] = Field("ip", description="CKA kernel")
    rbf_sigma: Float = Field(1.0, gt=0, description="RBF kernel width")
    cca_dim: Int = Field(10, ge=1, description="SVCCA: singular directions kept")
    knn_precision: Literal["exact", "bf16", "bf16-refine"] = Field(
        "exact", description="Neighbour search of the k-NN list metrics: exact fp32; bf16 (faster on GPUs, changes "
        "~10-25% of lists, see docs/metrics.md); bf16-refine (bf16 candidates re-ranked exactly, lists equal exact)")
    outlier_quantile: Float = Field(0.95, gt=0, le=1, description="Clamp features at this quantile of |x| before L2 normalisation")
    outlier_scope: Literal["model", "layer"] = Field(
        "model", description="'model': one clamp threshold for all of a model's layers when they share a width (the paper's "
        "(N, L, D) feature tensor; layers of different widths get one each, as the paper's list of layers); 'layer': one per layer")
    outlier_exact: Bool = Field(False, description="Exact threshold: the sorted |x| element at the quantile (the paper's "
                                "--precise) instead of the mean over samples of per-sample quantiles (the paper's default)")
    permutations: Int = Field(0, ge=0, le=100_000, description="Permutations for the calibrated score and p-value (0: off)")
    bootstrap: Int = Field(0, ge=0, le=100_000, description="Resamples for a 95% CI of each best score (0: off): each scores half the rows (half the "
                           "images with all their captions, where images have several), drawn without replacement "
                           "(m-out-of-n subsampling); see docs/metrics.md")
    seed: Int = Field(0, ge=0, le=SEED_MAX, description="Permutation and bootstrap seed, 0 to 2**32 - 1 (torch's "
                      "generator keeps 32 bits of a seed)")
    pairs: Literal["cross_modal", "all"] = Field("cross_modal", description="vision × language pairs, or every pair of models")
    unit: Literal["sample", "image"] = Field(
        "sample", description="Rows aligned: 'sample', one per image–caption pair (the paper's); 'image', one per image, "
        "the vectors of its captions' samples averaged per model and layer (several captions per image, e.g. COCO)")
    device: str = Field("cpu", description="Where the alignment engine computes: 'cpu'; 'cuda' or 'cuda:N' (a GPU of the "
                        "process aligning: a pair fails naming it where there is none); 'auto' (the first GPU where that "
                        "process sees one, else the CPU). Scores agree within float32 rounding across devices and share "
                        "one version: a result computed on either is reused by the other")

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, names: list[str]) -> list[str]:
        from tasks.metric_plugins import load_metric_modules
        from tasks.metrics import METRICS

        load_metric_modules()  # $PRH_METRIC_MODULES: the user's own metrics

        registered = sorted(METRICS)
        for name in names:
            if name not in METRICS:
                close = difflib.get_close_matches(name, registered, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown metric {name!r}{hint}; registered: {', '.join(registered)} (your own metrics: "
                                 "register them in a module named in $PRH_METRIC_MODULES)")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"metrics listed more than once: {repeated}")
        return names

    @field_validator("device")
    @classmethod
    def _a_device_torch_names(cls, device: str) -> str:
        if not ALIGNMENT_DEVICE.fullmatch(device):
            raise ValueError(f"must be 'cpu', 'cuda', 'cuda:N' (a GPU's index) or 'auto' (a GPU where the aligning process "
                             f"sees one, else the CPU); got {device!r}")
        return device

    @field_validator("bootstrap")
    @classmethod
    def _bootstrap_has_a_spread(cls, n_boot: int) -> int:
        if n_boot == 1:
            raise ValueError("1 resample gives an interval of width 0 (no spread to measure); use 0 (no interval) or at "
                             "least 2 (a few hundred for stable 95% bounds)")
        return n_boot

    @model_validator(mode="after")
    def _parameters_fit_the_metrics(self) -> "AlignmentParams":
        if "cknna" in self.metrics and self.topk < 2:
            raise FieldError("topk", f"cknna needs topk >= 2, got {self.topk}")
        return self

    def metric_params(self, name: str) -> dict[str, Any]:
        """The parameters this metric takes, from the pipeline-wide values: what the catalog's
        ``params`` column shows and versions hash. A built-in's unused or default values are left
        out (labels and version ids stay as they were; its other defaults are fixed by its name and
        code). A user metric gets every pipeline parameter its defaults name, so none of its own
        defaults overrides the config, over its other defaults (``tasks.metric_plugins.own_defaults``):
        they are passed to it anyway, and named here so that its rows say which values gave their
        numbers (they had shown ``{}`` for a metric run with its own defaults)."""
        from tasks.metric_plugins import is_builtin, own_defaults
        from tasks.metrics import METRICS

        params = {p: getattr(self, p) for p in parameters_of(name)}
        if name in METRICS and not is_builtin(name):
            return {**own_defaults(name), **params}
        if params.get("kernel_metric") == "ip":
            params.pop("rbf_sigma", None)
        if params.get("knn_precision") == "exact":  # the default: keeps labels and version ids as they were
            params.pop("knn_precision")
        return params

    def sample_requirements(self) -> dict[str, int]:
        """The fewest paired samples each constraint needs, keyed by what imposes it.

        ``topk + 2`` for the k-NN metrics and CKNNA (each sample needs ``topk`` neighbours
        other than itself, and the alignment stage keeps one more in reserve), ``cca_dim + 1`` for
        SVCCA (centred rows span one dimension fewer than their count), 4 for the unbiased HSIC
        (``unbiased_cka``, ``cknna``), 3 for ``rsa_spearman`` (2 give one distance, no ranks)
        and 3 always (the alignment stage excludes a layer whose samples lie on one line, as 2
        samples always do). With ``bootstrap``, each resample scores half the rows
        (``tasks.metrics.bootstrap``'s default subsample), which must hold ``topk + 1``,
        ``cca_dim + 1``, 4 or 3 rows as above (2 for any score): the fewest samples whose half does.
        """
        needs = {"alignment needs at least": 3}
        in_each: dict[str, int] = {"a score needs 2": 2}  # what one bootstrap resample must hold, rows
        knn = [m for m in self.metrics if "topk" in parameters_of(m)]
        if knn:
            needs[f"alignment.topk={self.topk} ({', '.join(knn)}) needs topk + 2 ="] = self.topk + 2
            in_each[f"alignment.topk={self.topk} ({', '.join(knn)}) needs topk + 1 = {self.topk + 1}"] = self.topk + 1
        if "svcca" in self.metrics:
            # centred, N rows span at most N - 1 dimensions: cca_dim of them need cca_dim + 1 rows
            needs[f"svcca with alignment.cca_dim={self.cca_dim} needs cca_dim + 1 ="] = self.cca_dim + 1
            in_each[f"svcca with alignment.cca_dim={self.cca_dim} needs cca_dim + 1 = {self.cca_dim + 1}"] = self.cca_dim + 1
        unbiased = [m for m in self.metrics if m in _UNBIASED_METRICS]
        if unbiased:
            needs[f"the unbiased HSIC of {', '.join(unbiased)} needs"] = 4
            in_each[f"the unbiased HSIC of {', '.join(unbiased)} needs 4"] = 4
        if "rsa_spearman" in self.metrics:
            needs["rsa_spearman needs"] = 3
            in_each["rsa_spearman needs 3"] = 3
        if self.bootstrap > 0:
            reason = max(in_each, key=lambda k: in_each[k])
            n = _fewest_for_subsample(in_each[reason])
            needs[f"alignment.bootstrap={self.bootstrap} scores half the rows per resample, where {reason}, "
                  "so it needs at least"] = n
        return needs

    def min_samples(self) -> int:
        """The fewest paired samples these metrics and parameters can be computed on."""
        return max(self.sample_requirements().values())

    def check_sample_count(self, n_samples: int, what: str = "the dataset", has: str = "has", advice: str = "") -> None:
        """Raise ``ValueError`` naming the binding constraint if ``n_samples`` is fewer than
        :meth:`min_samples` (e.g. ``the dataset has 9 sample(s), too few: alignment.topk=10
        (mutual_knn) needs topk + 2 = 12``; ``has``: the verb, ``advice``: appended)."""
        needs = self.sample_requirements()
        binding = max(needs, key=lambda k: needs[k])
        if n_samples < needs[binding]:
            rows = "image(s) (alignment.unit 'image')" if self.unit == "image" else "sample(s)"
            raise ValueError(f"{what} {has} {n_samples} {rows}, too few: {binding} {needs[binding]}{advice}")


def _fewest_for_subsample(rows: int) -> int:
    """The fewest samples ``N`` whose bootstrap subsample (``tasks.metrics.bootstrap``'s default,
    half the rows rounded) holds at least ``rows`` rows (and leaves one out)."""
    from tasks.metrics.bootstrap import DEFAULT_SUBSAMPLE, subsample_size

    n = max(3, rows + 1, 2 * rows - 2)  # round(n / 2) >= rows from n = 2 rows - 1 (or one or two more)
    while subsample_size(n, DEFAULT_SUBSAMPLE) < rows:
        n += 1
    return n


#: a UTF-16 surrogate code point: alone in a Python string it is no Unicode character (YAML's and
#: JSON's "\\ud83d" escapes make one; "\\ud83d\\ude00" makes two, not the emoji)
_SURROGATE = re.compile("[\ud800-\udfff]")


#: what Python makes of a byte that is not UTF-8 in a file name or a command-line argument
#: (``surrogateescape``: byte 0xE9 becomes U+DCE9)
_UNDECODED_BYTE = re.compile("[\udc80-\udcff]")


def _undecoded_byte_problem(found: re.Match[str]) -> str:
    """The problem of text holding a byte that is not UTF-8, as the operating system handed it over:
    a path named in another encoding (Latin-1 ``caf\\xe9``), or any non-ASCII path or argument in
    a process whose locale is not UTF-8. The surrogate message (an escaped emoji cut in half)
    sent such a user looking for an emoji that was never there."""
    byte = ord(found.group()) - 0xDC00
    return (f"text holding the byte 0x{byte:02X} at character {found.start() + 1}, which is not UTF-8: a file or "
            "folder named in another encoding (Latin-1, say), or a non-ASCII path given to a process whose locale is "
            "not UTF-8; rename it to UTF-8, or run with a UTF-8 locale (LC_ALL=C.UTF-8 or PYTHONUTF8=1)")


def _surrogate_problems(value: Any, loc: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str]]:
    """``(location, problem)`` of every string in ``value`` (mapping keys too) holding a lone
    UTF-16 surrogate: such text passed validation and ``prh run --check``, then failed the run with
    a bare ``UnicodeEncodeError`` where it was hashed or stored (a model's ``prompt``, ``config``
    or ``id``; the tokenizer's ``TextEncodeInput`` error in the check)."""
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        if found is None:
            return []
        if _UNDECODED_BYTE.fullmatch(found.group()):
            return [(loc, _undecoded_byte_problem(found))]
        return [(loc, f"text with a lone UTF-16 surrogate U+{ord(found.group()):04X} at character {found.start() + 1} "
                      "(an escaped emoji such as \"\\ud83d\\ude00\" is two halves, not the character): not valid "
                      "Unicode, so it cannot be stored or tokenised; write the character itself or \"\\U0001F600\"")]
    out: list[tuple[tuple[Any, ...], str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _surrogate_problems(key, loc + (key,)) + _surrogate_problems(item, loc + (key,))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            out += _surrogate_problems(item, loc + (i,))
    return out


def _shown_path(loc: tuple[Any, ...], raw: Any = None) -> str:
    """``_where(loc, raw)`` with surrogates escaped (``\\udc00``), so that the message itself can be
    printed, logged and stored."""
    return _where(loc, raw).encode("utf-8", "backslashreplace").decode("utf-8")


class PipelineConfig(BaseModel):
    """A whole run: dataset, model zoo, alignment."""

    model_config = ConfigDict(extra="forbid")
    dataset: DatasetParams = Field(default_factory=DatasetParams, description="The paired image-caption data")
    models: list[ModelSpec] = Field(..., min_length=1, description="The model zoo")
    alignment: AlignmentParams = Field(default_factory=AlignmentParams, description="Metrics and their parameters, "
                                       "calibration and which model pairs to compare")

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        """Refuse text that is not valid Unicode anywhere in the config (``validate_config`` reports
        each place with its line first; this covers configs validated from other sources)."""
        found = _surrogate_problems(data)
        if found:
            raise ValueError("; ".join(f"{_shown_path(loc)}: {problem}" for loc, problem in found))
        return data

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        names = [m.name for m in models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            where = {n: [i for i, m in enumerate(names) if m == n] for n in dupes}
            shown = "; ".join(f"{n!r} at models[{', '.join(map(str, idx))}]" for n, idx in where.items())
            raise ValueError(f"model names must be unique; repeated: {shown}")
        clash = _case_clash(names)
        if clash:
            raise ValueError(clash)
        return models

    @model_validator(mode="after")
    def _dataset_is_big_enough(self) -> "PipelineConfig":
        """The OpenMoji sample of ``n`` pairs, and a table's or hub dataset's first ``n`` rows, must
        hold ``alignment.min_samples()``. ``n`` rows give at most ``n`` images, and at most ``n``
        samples with ``captions: first`` (one caption per row; with ``all`` a row gives several,
        so their number is unknown until read: not refused). How many rows the loader rejects is
        known only then too (the dataset task checks the valid rows)."""
        n = self.dataset.sample_n()
        if n is None:
            return self
        if self.dataset.kind == "openmoji":
            words = ("the OpenMoji sample (dataset.n)", "has", "")
        elif self.dataset.captions == "first" or self.alignment.unit == "image":
            words = (f"dataset.n={n} reads at most {n} row(s) of the dataset, so", "at most",
                     " (raise dataset.n, or set it to null to read every row)")
        else:
            return self
        try:
            self.alignment.check_sample_count(n, *words)
        except ValueError as error:
            raise FieldError("dataset.n", str(error)) from None
        return self

    @model_validator(mode="after")
    def _cross_modal_has_pairs(self) -> "PipelineConfig":
        if self.alignment.pairs == "cross_modal" and len(self.models) > 1 and not self.model_pairs():
            modality = self.models[0].modality
            raise FieldError("alignment.pairs", f"'cross_modal' pairs vision with language models, but all {len(self.models)} "
                             f"models are {modality} models, so nothing would be compared; set alignment.pairs: all "
                             "to compare every pair of models")
        return self

    @model_validator(mode="after")
    def _pair_folders_fit(self) -> "PipelineConfig":
        too_long = [(a.name, b.name) for a, b in self.model_pairs() if len(a.name) + 2 + len(b.name) > MAX_PAIR_FOLDER_CHARS]
        if too_long:
            a, b = too_long[0]
            raise FieldError("models", f"{len(too_long)} model pair(s) would get an alignment folder name longer than "
                             f"{MAX_PAIR_FOLDER_CHARS} characters ('<model_a>__<model_b>'), e.g. {a!r} with {b!r} "
                             f"({len(a) + 2 + len(b)}): shorten the names (the alignment would fail after extraction)")
        return self

    def model_pairs(self) -> list[tuple[ModelSpec, ModelSpec]]:
        """Pairs to align, each as ``(model_a, model_b)``: (vision, language) for 'cross_modal';
        for 'all' every unordered pair once, oriented by :func:`pair_order` (not by the models'
        order in the file, so reordering a zoo scores nothing again, and a vision–language pair
        is the same result under either setting)."""
        if self.alignment.pairs == "cross_modal":
            vision = [m for m in self.models if m.modality == "vision"]
            language = [m for m in self.models if m.modality == "language"]
            return [(v, l) for v in vision for l in language]
        return [pair_order(a, b) for i, a in enumerate(self.models) for b in self.models[i + 1 :]]


def pair_order(a: ModelSpec, b: ModelSpec) -> tuple[ModelSpec, ModelSpec]:
    """``a`` and ``b`` as ``(model_a, model_b)`` of their stored pair: the vision model first
    (as 'cross_modal' pairs are), else the name first in case-insensitive order (names differ
    in more than case). Some metrics are not symmetric (``cycle_knn``, ``cknna`` by a little),
    so the direction is part of a result and must not depend on where a model sits in the zoo."""
    def rank(m: ModelSpec) -> tuple[int, str, str]:
        return (0 if m.modality == "vision" else 1, m.name.casefold(), m.name)
    return (a, b) if rank(a) <= rank(b) else (b, a)


def _case_clash(names: list[str]) -> str | None:
    """Why model names that differ only in case cannot live in one store (their folders are one
    on the case-insensitive file systems of macOS and Windows, and on such mounts), or None."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name.casefold(), []).append(i)
    clashes = [idx for idx in groups.values() if len({names[i] for i in idx}) > 1]
    if not clashes:
        return None
    shown = "; ".join(" and ".join(f"{names[i]!r} (models[{i}])" for i in idx) for idx in clashes)
    return (f"model names must differ in more than case (each names a folder of the store, and case-insensitive "
            f"file systems, macOS's and Windows' defaults, would mix them): {shown}")


#: Longest folder name of a model pair's alignments, ``<model_a>__<model_b>`` (a store key
#: component, ``storage.keys.safe_component``).
MAX_PAIR_FOLDER_CHARS = 128


# ------------------------------------------------------------------------------ reading YAML

MAX_YAML_NODES = 100_000
"""Largest config accepted, in YAML nodes after expanding aliases (a guard against alias bombs)."""
MAX_YAML_BYTES = 16 << 20
"""Largest config or zoo file read, in bytes (the demo's is 2 KB; a zoo of a thousand models is
well under 1 MB): ``--config /dev/zero`` was read until memory ran out, a 400 MB file parsed for
minutes."""

# The pydantic model that a location (field path) in a config points into, for "valid keys".
_SECTIONS: dict[str, type[BaseModel]] = {"dataset": DatasetParams, "alignment": AlignmentParams, "models": ModelSpec}


class ConfigError(ValueError):
    """A pipeline config cannot be used; the message names the file, each field path and line."""


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping (instead of keeping the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable key: the base class says so
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key!r} (first given on line {first + 1})", key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """The base class's, with a value that its type cannot be read from refused as a YAML
        error at its line: one whose explicit tag does not fit it (``!!int ten``, ``!!float x``,
        ``!!bool maybe``, ``!!timestamp soon``), or an integer of more than the 4,300 digits
        Python converts. PyYAML raised a bare ``ValueError``, ``KeyError`` or ``AttributeError``
        (``prh run`` printed ``invalid literal for int() with base 10: 'ten'``, naming no file,
        field or line)."""
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as error:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            value = node.value if isinstance(node, yaml.ScalarNode) else "this value"
            implicit = isinstance(node, yaml.ScalarNode) and node.style is None and \
                self.resolve(yaml.ScalarNode, node.value, (True, False)) == node.tag
            if implicit:  # YAML read it as this type itself: too many digits, say
                reason = str(error).split(";")[0]
                problem = f"{_shown(value)} cannot be read as {tag}: {reason}"
            else:
                problem = f"{_shown(value)} cannot be read as {tag}, the type its tag names (remove the tag, or write a value of that type)"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Number of nodes ``node`` stands for once aliases are expanded (shared nodes counted each time)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = MAX_YAML_NODES + 1  # a cycle counts as too big
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = min(size, MAX_YAML_NODES + 1)
    return memo[id(node)]


def parse_yaml_file(path: Path, what: str = "config") -> tuple[Any, yaml.Node | None]:
    """The parsed document of the YAML file ``path`` and its node tree (for line numbers).

    A safe loader that also refuses a key repeated in one mapping and documents of more than
    ``MAX_YAML_NODES`` nodes once aliases are expanded (alias bombs); a file is read up to
    ``MAX_YAML_BYTES``, a longer one refused unparsed. Raises ``ConfigError``
    starting ``"{what} {path}: "`` (``what``: ``config``, ``zoo file``)."""
    where = f"{what} {path}"
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{where}: file not found") from None
    except OSError as error:
        raise ConfigError(f"{where}: cannot be read: {error.strerror or error}") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: more than {MAX_YAML_BYTES:,} bytes, more than a config can need (not a config file?)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ConfigError(f"{where}: not UTF-8 text (byte {error.start}, line {line}: {error.reason})") from None
    try:
        loader = _StrictLoader(text)  # the reader refuses control characters (NUL...) here, before any parsing
    except yaml.reader.ReaderError as error:
        raise ConfigError(f"{where}: not valid YAML: {_reader_message(text, error)}") from None
    loader.name = str(path)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_YAML_NODES:
            raise ConfigError(f"{where}: more than {MAX_YAML_NODES:,} YAML nodes once aliases are expanded")
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as error:
        raise ConfigError(f"{where}: not valid YAML: {_yaml_message(error)}") from None
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested too deeply") from None
    finally:
        loader.dispose()
    return data, node


def _reader_message(text: str, error: yaml.reader.ReaderError) -> str:
    """Where (line, column) and which character YAML's reader refused (a NUL or other control
    character: YAML allows only printable characters, tab and line breaks)."""
    before = text[: error.position]
    line, column = before.count("\n") + 1, error.position - (before.rfind("\n") + 1) + 1
    return (f"line {line}, column {column}: character U+{error.character:04X} is not allowed in YAML (only printable "
            "characters, tabs and line breaks are; is this a text file?)")


def _yaml_message(error: yaml.YAMLError) -> str:
    """A YAML error on one line: where (line, column) and what."""
    if not isinstance(error, yaml.MarkedYAMLError) or error.problem_mark is None:
        return str(error)
    mark = error.problem_mark
    message = f"line {mark.line + 1}, column {mark.column + 1}: {error.problem}"
    if error.context:
        where = f" started on line {error.context_mark.line + 1}" if error.context_mark is not None else ""
        message += f" ({error.context}{where})"
    return message


def _deepest_node(root: yaml.Node | None, loc: tuple[Any, ...]) -> tuple[yaml.Node | None, bool]:
    """The deepest node of the YAML tree that ``loc`` reaches, and whether it reached the end of
    ``loc`` (``(None, False)`` without a tree)."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            found = node.value[part]
        else:
            found = None
        if found is None:
            return node, False
        node = found
    return node, node is not None


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> tuple[int | None, bool]:
    """1-based line of the deepest node ``loc`` reaches in the YAML tree, and whether it reached
    the end of ``loc`` (``(None, False)`` without a tree)."""
    node, complete = _deepest_node(root, loc)
    return (node.start_mark.line + 1 if node is not None else None), complete


def _key_node(root: yaml.Node | None, loc: tuple[Any, ...], key: Any) -> yaml.ScalarNode | None:
    """The key node of the mapping at ``loc`` that YAML reads as ``key`` (a number, date, boolean
    or null, not a string; None where not found)."""
    node, complete = _deepest_node(root, loc)
    if not complete or not isinstance(node, yaml.MappingNode):
        return None
    for k, _ in node.value:
        if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:str":
            try:
                read = yaml.safe_load(k.value or "null")
            except yaml.YAMLError:  # a key that does not read alone (a merge key '<<' left in the tree)
                continue
            if read == key and type(read) is type(key):
                return k
    return None


def _shown(value: Any) -> str:
    """A short description of an input value, in YAML's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field_path(loc: tuple[Any, ...]) -> str:
    """``('models', 1, 'pooling')`` → ``models[1].pooling``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _section(loc: tuple[Any, ...]) -> type[BaseModel]:
    """The model whose keys are valid at ``loc`` (the location of an unknown key's parent)."""
    return _SECTIONS.get(str(loc[0]), PipelineConfig) if loc else PipelineConfig


def _where(loc: tuple[Any, ...], raw: Any) -> str:
    """``loc`` as a field path, a model's entry named by its name too: ``models[1] (model 'bert').pooling``."""
    where = _field_path(loc)
    entry = raw.get("models") if isinstance(raw, dict) else None
    if loc[:1] == ("models",) and len(loc) > 2 and isinstance(entry, list) and isinstance(loc[1], int) \
            and 0 <= loc[1] < len(entry) and isinstance(entry[loc[1]], dict) and isinstance(entry[loc[1]].get("name"), str):
        where = f"models[{loc[1]}] (model {entry[loc[1]]['name']!r}).{_field_path(loc[2:])}"
    return where


def _problem(error: dict[str, Any], raw: Any, root: yaml.Node | None) -> str:
    """One pydantic error as ``field.path (line N): message``."""
    loc = tuple(error["loc"])
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        loc = loc + tuple(cause.field.split("."))
    kind, message = error["type"], error["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        valid = list(_section(loc[:-1]).model_fields)
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        message = f"unknown key{hint}; valid keys here: {', '.join(valid)}"
    elif kind == "missing":
        message = "required, but missing"
    elif kind == "invalid_key" or loc[-1:] == ("[key]",):
        # a YAML key read as a number, boolean or null: of a section (pydantic's loc: the key, or
        # 'None'), or of a mapping field such as a model's config (loc: the key, then '[key]')
        loc, key = loc[:-2] if loc[-1:] == ("[key]",) else loc[:-1], error.get("input")
        node = _key_node(root, loc, key)
        shown = _shown(key) if node is None else node.value if node.value else "null"
        message = f"key {shown} is not a string (YAML reads an unquoted number, date, true/false or null as one: quote it)"
        line = f" (line {node.start_mark.line + 1})" if node is not None else ""
        return f"{_where(loc, raw)}{line}: {message}"
    elif kind not in ("value_error", "assertion_error", "too_short", "too_long"):
        if kind in ("model_type", "dict_type", "model_attributes_type"):
            message = "expected a mapping"
        elif kind == "list_type":
            message = "expected a list"
        message = f"{message} (got {_shown(error.get('input'))})"
    where = _where(loc, raw)
    line, complete = _line_of(root, loc)
    if line is not None and (complete or kind == "missing"):
        where += f" (line {line})"
    return f"{where}: {message}"


def field_problems(error: ValidationError) -> list[str]:
    """Every problem of a validation error as ``field.path: what is wrong (got VALUE)``."""
    return [_problem(e, None, None) for e in error.errors(include_url=False)]


def load_config(path: str | Path) -> PipelineConfig:
    """Parse and validate a YAML pipeline config.

    YAML is read with a safe loader that also refuses repeated keys and alias bombs. Every
    problem found is reported, each as ``field.path (line N): what is wrong (got VALUE)``.

    Raises:
        ConfigError: (a ``ValueError``) naming the file and every bad field.
    """
    path = Path(path)
    raw, root = parse_yaml_file(path)
    if not isinstance(raw, dict):
        got = "empty" if raw is None else f"{_shown(raw)} at the top level"
        raise ConfigError(f"config {path}: is {got}; expected a mapping with keys dataset, models, alignment")
    return validate_config(raw, f"config {path}", root)


def validate_config(raw: dict[str, Any], where: str, root: yaml.Node | None = None) -> PipelineConfig:
    """``raw`` (a config as plain data) validated as a whole, every problem reported as
    :func:`load_config` reports it, after ``where`` (``config FILE``; ``config FILE with
    --permutations -1`` for a config changed by command-line flags). ``root``: the YAML node
    tree the data came from, for line numbers (None: none given).

    Raises:
        ConfigError: naming ``where`` and every bad field (text holding a lone UTF-16 surrogate,
            not valid Unicode, is reported alone, before the fields are validated).
    """
    problems = []
    for loc, problem in _surrogate_problems(raw):
        line, complete = _line_of(root, loc)
        field = _shown_path(loc, raw)  # printable, storable
        problems.append(f"{field}{f' (line {line})' if line is not None and complete else ''}: {problem}")
    if not problems:  # text that is not valid Unicode first: it is reported with its lines
        try:
            return PipelineConfig.model_validate(raw)
        except ValidationError as error:
            problems = [_problem(e, raw, root) for e in error.errors(include_url=False)]
    if len(problems) == 1:
        raise ConfigError(f"{where}: {problems[0]}")
    listing = "\n".join(f"  - {p}" for p in problems)
    raise ConfigError(f"{where}: {len(problems)} problems:\n{listing}")
