"""Registry, parameter handling, input forms and import hygiene of ``tasks.metrics``."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import tasks.metrics as tm
from tasks.metrics import METRICS, PAPER_METRICS, get_metric, layer_matrix, register_metric, score

from . import reference as ref
from .conftest import layers, paired


def test_paper_metrics_registered_with_metadata() -> None:
    for name in PAPER_METRICS:
        assert name in METRICS
        spec = METRICS[name]
        lo, hi = spec.bounds_for({})
        assert lo < hi and spec.locality in ("local", "global") and spec.higher_is_better
    assert set(PAPER_METRICS) <= set(iter(METRICS))
    assert METRICS["cycle_knn"].symmetric is False and METRICS["cka"].symmetric is True
    assert METRICS["lcs_knn"].bounds_for({"topk": 7}) == (0.0, 7.0)
    for extra in ("cka_rbf_median", "procrustes", "linear_regression", "rsa_spearman",
                  "jaccard_knn"):
        assert extra in METRICS


def test_cka_with_unbiased_true_has_the_unbiased_estimators_range_and_chance() -> None:
    """``cka(unbiased=True)`` is ``unbiased_cka``, whose estimate goes below 0: its interval was
    clipped at 0 and its chance level unknown."""
    assert METRICS["cka"].bounds_for({"unbiased": True}) == METRICS["unbiased_cka"].bounds_for({}) == (-1.0, 1.0)
    assert METRICS["cka"].bounds_for({}) == (0.0, 1.0)
    assert METRICS["cka_rbf_median"].bounds_for({"unbiased": True}) == (-1.0, 1.0)
    assert tm.chance_level("cka_rbf_median", 50, unbiased=True) == 0.0
    assert tm.chance_level("cka", 50, unbiased=True) == 0.0 and tm.chance_level("cka", 50) is None
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 8)), rng.normal(size=(60, 8))
    as_cka = tm.bootstrap_ci("cka", x, y, n_boot=60, seed=1, unbiased=True)
    as_unbiased = tm.bootstrap_ci("unbiased_cka", x, y, n_boot=60, seed=1)
    assert as_cka.low == pytest.approx(as_unbiased.low, abs=1e-12) and as_cka.low < 0
    assert as_cka.high == pytest.approx(as_unbiased.high, abs=1e-12)


def test_unknown_metric_lists_valid_names() -> None:
    x, y = paired()
    with pytest.raises(ValueError, match="mutual_knn") as err:
        score("mutal_knn", x, y)
    assert "cknna" in str(err.value)
    with pytest.raises(KeyError):
        METRICS["nope"]
    assert "nope" not in METRICS and METRICS.get("nope") is None


def test_unknown_parameter_is_an_error_but_other_metrics_params_are_ignored() -> None:
    x, y = paired()
    with pytest.raises(TypeError, match="topkk"):
        score("cka", x, y, topkk=3)
    assert score("cka", x, y, topk=3) == score("cka", x, y)  # like the paper's loop passing topk


@pytest.mark.parametrize(
    ("metric", "params", "message"),
    [
        ("cka", {"unbiased": "False"}, "unbiased must be True or False, got 'False'"),  # a string would read as true
        ("cknna", {"distance_agnostic": "no"}, "distance_agnostic must be True or False, got 'no'"),
        ("svcca", {"cca_dim": 2.7}, "cca_dim must be an integer, got 2.7"),  # not truncated to 2
        ("svcca", {"cca_dim": None}, "cca_dim must be an integer, got None"),
        ("mutual_knn", {"topk": True}, "topk must be an integer, got True"),
        ("cka", {"kernel_metric": "rbf", "rbf_sigma": None}, "rbf_sigma must be a number, got None"),
        ("cka", {"device": "tpu"}, "device must be a torch device such as 'cpu' or 'cuda:0', got 'tpu'"),
    ],
)
def test_parameter_values_of_the_wrong_kind_are_refused(metric: str, params: dict, message: str) -> None:
    x, y = paired()
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        score(metric, x, y, **params)


def test_a_parameter_error_names_its_metric_and_nan_is_refused() -> None:
    """Several metrics share parameter names (``topk``): the error says whose it is. A NaN for a
    number had passed and every score came back NaN."""
    x, y = paired()
    with pytest.raises(ValueError, match=re.escape("topk must be an integer, got True (a parameter of metric 'mutual_knn')")):
        score("mutual_knn", x, y, topk=True)
    with pytest.raises(ValueError, match=re.escape("rbf_sigma must be a number, got nan (a parameter of metric 'cka')")):
        score("cka", x, y, kernel_metric="rbf", rbf_sigma=float("nan"))
    register_metric("test_scaled_cos", lambda a, b, scale: float(scale), defaults={"scale": 1.0}, bounds=(-10, 10))
    try:
        with pytest.raises(ValueError, match=re.escape("scale must be a number, got nan (a parameter of metric "
                                                       "'test_scaled_cos')")):
            score("test_scaled_cos", x, y, scale=float("nan"))
    finally:
        tm.unregister_metric("test_scaled_cos")


def test_accepted_parameter_forms() -> None:
    x, y = paired()
    assert score("cknna", x, y, topk=np.int64(5), unbiased=np.bool_(False)) == score("cknna", x, y, topk=5, unbiased=False)
    assert score("cka", x, y, kernel_metric="rbf", rbf_sigma=np.float32(2)) == pytest.approx(score("cka", x, y, kernel_metric="rbf", rbf_sigma=2.0))
    assert score("cka", x, y, kernel_metric="rbf", rbf_sigma="median") == score("cka_rbf_median", x, y)
    assert np.isfinite(score("cknna", x, y, topk=None))  # cknna: no mask
    with pytest.raises(ValueError, match=r"permutations must be an integer >= 1, got 2\.5"):
        tm.calibrate("cka", x, y, permutations=2.5)


@pytest.mark.parametrize(
    ("xs", "ys", "message"),
    [
        ("x", lambda y: [y, y[:20]], r"^y: layers disagree on the number of samples: \[20, 30\]"),
        ("x", lambda y: [], r"^y: no layers given"),
        (lambda x: {"a": x}, "y", r"^x: unsupported feature container: dict"),
        # a layer that is not (N, D) says what it is (it said "got shape None" for lists)
        (lambda x: [x, [1.0, 2.0]], "y", r"^x: each layer must be an \(N, D\) array, tensor or nested list of rows; "
                                         r"layer 1 is nested lists of shape \(2,\)$"),
        ("x", lambda y: [y, 3.0], r"^y: each layer must be .*; layer 1 is a float$"),
        ("x", lambda y: [y[0]], r"^y: each layer must be .*; layer 0 is an array of shape \(9,\)$"),
        ("x", lambda y: [[[1.0, 2.0], [3.0]]], r"^y: layer 0 is nested lists that do not form an array"),
    ],
)
def test_input_errors_name_the_side(xs, ys, message: str) -> None:
    x, y = paired()
    x, y = x[:30], y[:30]
    side = {"x": x, "y": y}
    with pytest.raises(ValueError, match=message):
        layer_matrix("cka", side[xs] if isinstance(xs, str) else xs(x), side[ys] if isinstance(ys, str) else ys(y))
    with pytest.raises(ValueError, match=r"^y: cca_dim must be in \[1, min\(N, D\)\] = \[1, 3\] for layer 0, got 5"):
        score("svcca", x, y[:, :3], cca_dim=5)


def test_register_user_metric_function_and_decorator() -> None:
    def mean_cos(x: torch.Tensor, y: torch.Tensor, shift: float = 0.0) -> float:
        return float((x[:, :3] * y[:, :3]).sum(1).mean()) + shift

    spec = register_metric("test_mean_cos", mean_cos, bounds=(-1.0, 1.0), symmetric=True,
                           defaults={"shift": 0.0}, overwrite=True)
    assert spec.name in METRICS and get_metric("test_mean_cos") is spec
    xs, ys = layers(seed=1), layers(seed=2)
    m = layer_matrix("test_mean_cos", xs, ys, shift=1.0)
    assert m[1, 2] == pytest.approx(float((xs[1][:, :3] * ys[2][:, :3]).sum(1).mean()) + 1.0)
    res = tm.calibrate("test_mean_cos", xs, ys, permutations=5)
    assert res.permutations == 5

    @register_metric("test_const", bounds=(0.0, 1.0), overwrite=True)
    def const(x, y):
        return 0.5

    assert score("test_const", *paired()) == 0.5
    with pytest.raises(ValueError):
        register_metric("test_const", const)  # no overwrite
    for name in ("test_mean_cos", "test_const"):
        tm.unregister_metric(name)
        assert name not in METRICS


@pytest.mark.parametrize("form", ["list", "stack_np", "stack_torch"])
def test_input_forms(form: str) -> None:
    xs, ys = layers(widths=(8, 8, 8), seed=3), layers(widths=(5, 5), seed=4)
    expected = layer_matrix("mutual_knn", xs, ys, topk=5)
    if form == "stack_np":
        a, b = np.stack(xs), np.stack(ys)
    elif form == "list":
        a, b = [torch.from_numpy(x) for x in xs], ys
    else:
        a, b = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
    np.testing.assert_array_equal(layer_matrix("mutual_knn", a, b, topk=5, device="cpu"), expected)


def test_mismatched_samples_and_bad_shapes() -> None:
    x, y = paired()
    with pytest.raises(ValueError):
        score("cka", x, y[:-1])
    with pytest.raises(ValueError):
        score("cka", np.stack([x, x]), np.stack([x, x]))


@pytest.mark.parametrize("bad, message", [
    (np.nan, "non-finite values (NaN or inf) in 1 of its"), (np.inf, "non-finite"), (-np.inf, "non-finite")])
def test_non_finite_features_are_refused_naming_side_and_layer(bad: float, message: str) -> None:
    xs, ys = layers(seed=7), layers(seed=8)
    ys[2] = ys[2].copy()
    ys[2][4, 1] = bad
    for metric in ("mutual_knn", "cka", "svcca"):
        with pytest.raises(ValueError, match="^y: layer 2 has " + re.escape(message)):
            layer_matrix(metric, xs, ys, topk=3, cca_dim=2)


@pytest.mark.parametrize("bad, message", [
    (np.nan, "non-finite values"), (-np.inf, "non-finite values"), (1e-23, "values of magnitude at most"),
    (None, "is constant"), (1e20, "rows of norm up to")])
def test_a_stacked_array_is_checked_layer_by_layer_as_a_list_is(bad: float | None, message: str) -> None:
    """An ``(L, N, D)`` array's layers are views of one tensor, whose peaks a CPU now takes a layer
    at a time (as a list's): the same refusal, naming the same layer, in either form."""
    xs = np.stack(layers(seed=7, widths=(8, 8, 8, 8))).astype(np.float32)
    if bad is None:
        xs[2] = 0.25
    elif abs(bad) < 1 or abs(bad) > 1e10:
        xs[2] *= np.float32(bad)
    else:
        xs[2, 4, 1] = bad
    for form in (xs, list(xs)):
        with pytest.raises(ValueError, match="^x: layer 2 .*" + re.escape(message)):
            layer_matrix("cka", form, xs[:1])
    assert layer_matrix("cka", np.delete(xs, 2, axis=0), xs[:1]).shape == (3, 1)


@pytest.mark.parametrize("n, width, message", [(1, 4, "need at least 2 paired samples, got N=1"),
                                               (0, 4, "got N=0"), (10, 0, "layer 0 has width 0")])
def test_degenerate_shapes_are_refused(n: int, width: int, message: str) -> None:
    x = np.ones((n, width))
    for metric in ("cka", "procrustes"):
        with pytest.raises(ValueError, match="^x: .*" + message):
            score(metric, x, np.ones((n, 3)))


def test_constant_layers_are_refused_by_every_metric() -> None:
    """A layer whose rows are all equal has no geometry: CKA would be 0/0, k-NN lists ties only
    (mutual k-NN then scored ~0.2 at N=50, CKNNA ~0.36 before this check)."""
    xs, ys = layers(seed=3), layers(seed=4)
    ys[1] = np.full_like(ys[1], 0.25)
    for metric in METRICS:
        with pytest.raises(ValueError, match=r"^y: layer 1 is constant \(all \d+ rows identical\)"):
            layer_matrix(metric, xs, ys, topk=3, cca_dim=2)
        with pytest.raises(ValueError, match=r"^x: layer 0 is constant"):
            score(metric, ys[1], xs[0], topk=3, cca_dim=2)


def test_mixed_dtypes_compute_in_float64() -> None:
    """float32 against float64 (or integers, bools) is promoted, not a dtype error."""
    x, y = paired()
    want = score("cka", x.astype(np.float32).astype(np.float64), y)
    assert score("cka", x.astype(np.float32), y) == pytest.approx(want, abs=1e-12)
    x32 = x.astype(np.float32)
    assert score("cka", y, x32) == pytest.approx(score("cka", y, x32.astype(np.float64)), abs=1e-12)
    ints = np.round(x * 10).astype(np.int64)
    np.testing.assert_allclose(layer_matrix("cka", [ints], [y]),
                               layer_matrix("cka", [ints.astype(np.float64)], [y]), atol=1e-12)
    assert score("mutual_knn", x.tolist(), y, topk=3) == score("mutual_knn", x, y, topk=3)


def test_representation_reuses_work() -> None:
    """After a first call, Grams and kNN lists come from the caches, never from the features."""
    xs, ys = layers(seed=5), layers(seed=6)
    ra, rb = tm.Representation(xs), tm.Representation(ys)
    first = layer_matrix("mutual_knn", ra, rb, topk=5)
    layer_matrix("cka", ra, rb)
    for rep in (ra, rb):  # poison the features
        rep.layers = [torch.full_like(x, float("nan")) for x in rep.layers]
    np.testing.assert_array_equal(layer_matrix("mutual_knn", ra, rb, topk=5), first)
    assert np.isfinite(layer_matrix("jaccard_knn", ra, rb, topk=5)).all()
    assert np.isfinite(layer_matrix("cknna", ra, rb, topk=5)).all()
    np.testing.assert_allclose(layer_matrix("cka", ra, rb), layer_matrix("cka", xs, ys))


def test_cached_grams_are_shared_and_give_the_same_numbers() -> None:
    xs, ys = layers(seed=5), layers(seed=6)
    ra, rb = tm.Representation(xs).cache_grams(), tm.Representation(ys).cache_grams()
    assert all(ra.cached_gram(l) is not None for l in range(3))
    for metric in ("mutual_knn", "cka", "unbiased_cka", "cknna"):
        np.testing.assert_allclose(layer_matrix(metric, ra, rb, topk=5),
                                   layer_matrix(metric, xs, ys, topk=5), atol=1e-12)


class _ProjectedCos(tm.Engine):
    """Toy user engine: cosine of the first ``dims`` coordinates; ``dims`` from the constructor or,
    when None, from the metric parameter ``dims``; counts its encodings."""

    def __init__(self, dims: int | None = None, encode_params: tuple[str, ...] | None = None) -> None:
        self.dims, self.calls = dims, 0
        if encode_params is not None:
            self.encode_params = encode_params

    def encode(self, rep, params):
        self.calls += 1
        d = self.dims if self.dims is not None else params["dims"]
        return [torch.nn.functional.normalize(x[:, :d], dim=1) for x in rep.layers]

    def matrix(self, a, b, params):
        return torch.tensor([[float((x * y).sum(1).mean()) for y in b] for x in a], dtype=torch.float64)

    def permute(self, state, perm, inv):
        return [x[perm] for x in state]


def test_user_engines_never_share_an_encoding_they_should_not() -> None:
    """Reusing a Representation gives the numbers raw arrays give. The cache key was the engine's
    class name + ``variant`` + ``encode_params`` (default empty): two metrics from one Engine class
    with different constructor settings, or an engine whose ``encode`` reads a parameter it did not
    list, silently reused the first encoding (0.44 / 0.44 instead of 0.44 / 0.697)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4))
    y = x + 0.8 * rng.normal(size=(50, 4))
    names = ("test_cos1", "test_cos3", "test_pcos", "test_pcos_shared")
    try:
        register_metric("test_cos1", engine=_ProjectedCos(1), bounds=(-1, 1), overwrite=True)
        register_metric("test_cos3", engine=_ProjectedCos(3), bounds=(-1, 1), overwrite=True)
        register_metric("test_pcos", engine=_ProjectedCos(), bounds=(-1, 1), defaults={"dims": 1},
                        overwrite=True)
        raw = {m: layer_matrix(m, x, y)[0, 0] for m in ("test_cos1", "test_cos3")}
        raw.update({d: layer_matrix("test_pcos", x, y, dims=d)[0, 0] for d in (1, 3)})
        assert raw["test_cos1"] != raw["test_cos3"] and raw[1] != raw[3]
        a, b = tm.Representation(x), tm.Representation(y)
        for m in ("test_cos1", "test_cos3"):
            assert layer_matrix(m, a, b)[0, 0] == raw[m]
        for d in (1, 3, 1):
            assert layer_matrix("test_pcos", a, b, dims=d)[0, 0] == raw[d]
        # calibration reuses the same cache: its observed value is the raw one too
        assert tm.calibrate("test_pcos", a, b, permutations=3, dims=3).observed == raw[3]
        # an engine may declare that its encoding ignores a parameter: then it is shared
        eng = _ProjectedCos(2, encode_params=())
        register_metric("test_pcos_shared", engine=eng, bounds=(-1, 1), defaults={"dims": 1},
                        overwrite=True)
        c, d = tm.Representation(x), tm.Representation(y)
        first = layer_matrix("test_pcos_shared", c, d, dims=1)
        np.testing.assert_array_equal(layer_matrix("test_pcos_shared", c, d, dims=3), first)
        assert eng.calls == 2  # one encoding per side, whatever dims
    finally:
        for name in names:
            if name in METRICS:
                tm.unregister_metric(name)


def test_builtin_metrics_still_share_encodings() -> None:
    """The list metrics share one set of neighbour lists, the CKA family one kernel encoding
    (keys independent of the engine instance), while a user engine gets its own."""
    xs, ys = layers(seed=5), layers(seed=6)
    ra, rb = tm.Representation(xs), tm.Representation(ys)
    for metric in ("mutual_knn", "jaccard_knn", "cycle_knn", "lcs_knn", "edit_distance_knn"):
        layer_matrix(metric, ra, rb, topk=5)
    lists = [k for k in ra._memo if isinstance(k, tuple) and k[0] == "knn-lists"]
    assert lists == [("knn-lists", 5, "exact")]
    layer_matrix("cka", ra, rb)
    layer_matrix("cka", ra, rb, unbiased=True)
    layer_matrix("unbiased_cka", ra, rb)
    layer_matrix("cknna", ra, rb, topk=None)  # all neighbours: the unbiased linear CKA encoding
    kernels = [k for k in ra._memo if isinstance(k, tuple) and k[0] == "cka"]
    assert sorted(kernels, key=repr) == [("cka", "ip", None, False), ("cka", "ip", None, True)]

    class OwnCka(tm.kernel_metrics.CkaEngine):  # a subclass that encodes its own way
        def encode(self, rep, params):
            return super().encode(rep, params)

    p = {"kernel_metric": "ip", "rbf_sigma": 1.0, "unbiased": False}
    assert OwnCka().encode_key(p) != tm.kernel_metrics.CkaEngine().encode_key(p)
    assert tm.kernel_metrics.CkaEngine("x").encode_key(p) == tm.kernel_metrics.CkaEngine().encode_key(p)


def test_import_is_light() -> None:
    """DESIGN.md: importable without Prefect, the store or transformers. Of ``storage`` only the
    standard-library snapshot of the imported code (``storage.loaded_code``, which ``tasks``
    takes as it is imported, so that version ids name that code) is loaded."""
    code = ("import sys, tasks.metrics; bad = [m for m in ('prefect', 'pyarrow', 'duckdb', "
            "'transformers', 'sklearn', 'fsspec') if m in sys.modules]; "
            "bad += [m for m in sys.modules if m.startswith('storage.') and m != 'storage.loaded_code']; "
            "print(bad); assert not bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_import_beside_a_users_own_storage_module(tmp_path) -> None:
    """A notebook's folder with a ``storage.py`` of its own first on ``sys.path``: ``import
    tasks.metrics`` had failed (``No module named 'storage.loaded_code'; 'storage' is not a
    package``); it imports, and scores, without the snapshot of the code (versions then read it
    from disk, as before the snapshot)."""
    import os
    from pathlib import Path

    (tmp_path / "storage.py").write_text("NOTE = 1\n", encoding="utf-8")
    root = Path(__file__).resolve().parents[3]
    code = ("import numpy as np, tasks.metrics as tm; x = np.random.default_rng(0).normal(size=(20, 4)); "
            "print(round(tm.score('cka', x, x), 6))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "1.0", out.stdout + out.stderr


class _MeanCos(tm.Engine):
    """Toy user engine built without arguments: mean cosine of paired rows."""

    encode_params = ()

    def encode(self, rep, params):
        return [torch.nn.functional.normalize(x, dim=1) for x in rep.layers]

    def matrix(self, a, b, params):
        return torch.tensor([[float((x * y).sum(1).mean()) for y in b] for x in a], dtype=torch.float64)

    def permute(self, state, perm, inv):
        return [x[perm] for x in state]


def test_register_metric_takes_an_engine_in_every_documented_form() -> None:
    """docs/metrics.md: ``register_metric`` takes a plain ``fn`` or an Engine, also as a decorator.
    An Engine subclass given as ``fn`` used to fail with a TypeError from its constructor and an
    instance with "'...' object is not callable"; only ``engine=<instance>`` worked."""
    from tasks.metrics.kernel_metrics import CkaEngine

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(30, 5)), rng.normal(size=(30, 5))
    want = float(np.mean(np.sum(ref.normalize_rows(x) * ref.normalize_rows(y), axis=1)))
    forms = {"test_class_fn": dict(fn=_MeanCos), "test_instance_fn": dict(fn=_MeanCos()),
             "test_class_engine": dict(engine=_MeanCos), "test_instance_engine": dict(engine=_MeanCos())}
    try:
        for name, form in forms.items():
            spec = register_metric(name, **form, bounds=(-1.0, 1.0), symmetric=True, overwrite=True)
            assert isinstance(spec.engine, _MeanCos)
            assert score(name, x, y) == pytest.approx(want, abs=1e-6)

        @register_metric("test_decorated_engine", bounds=(-1.0, 1.0), overwrite=True)
        class Decorated(_MeanCos):
            pass

        assert isinstance(Decorated, type) and isinstance(METRICS["test_decorated_engine"].engine, Decorated)
        assert score("test_decorated_engine", x, y) == pytest.approx(want, abs=1e-6)
        register_metric("test_cka_class", CkaEngine, bounds=(0.0, 1.0), overwrite=True)  # CkaEngine(): linear CKA
        assert score("test_cka_class", x, y) == pytest.approx(ref.cka(x, y), abs=1e-6)
    finally:
        for name in [*forms, "test_decorated_engine", "test_cka_class"]:
            if name in METRICS:
                tm.unregister_metric(name)


def test_register_metric_refuses_other_forms_saying_which_work() -> None:
    with pytest.raises(TypeError, match=r"cannot be built without arguments.*engine=_ProjectedCos\(\.\.\.\)"):
        register_metric("test_bad", engine=type("_ProjectedCos", (_ProjectedCos,), {"__init__": lambda self, dims: None}))
    with pytest.raises(TypeError, match="not both"):
        register_metric("test_bad", lambda x, y: 0.0, engine=_MeanCos())
    with pytest.raises(TypeError, match="engine must be a function fn.*an Engine instance"):
        register_metric("test_bad", engine=lambda x, y: 0.0)
    with pytest.raises(TypeError, match="fn must be .*got int"):
        register_metric("test_bad", 42)
    with pytest.raises(TypeError, match="not an Engine subclass"):
        register_metric("test_bad", dict)
    assert "test_bad" not in METRICS


def test_nested_lists_are_read_by_layer_matrix_as_score_reads_them() -> None:
    """``score`` reads nested lists as one (N, D) layer; ``layer_matrix`` said "each layer must be
    (N, D); got shape None" for the same lists. Now a layer may be nested lists, and Python lists
    of numbers are the rows of one layer, on either side."""
    x, y = paired()
    want = layer_matrix("cka", [x, y], y)
    np.testing.assert_array_equal(layer_matrix("cka", [x.tolist(), y.tolist()], y), want)
    np.testing.assert_array_equal(layer_matrix("cka", [x, tuple(map(tuple, y.tolist()))], y.tolist()), want)
    assert layer_matrix("cka", x.tolist(), y)[0, 0] == score("cka", x.tolist(), y) == want[0, 0]


@pytest.mark.parametrize("kind", ["numpy", "torch", "list"])
def test_complex_features_are_refused_not_cut_to_their_real_part(kind: str) -> None:
    """Complex inputs were accepted with the imaginary part dropped (a ComplexWarning at most):
    now a ``TypeError`` naming the side, as for object arrays, and in ``prepare``."""
    x, y = paired()
    z = x + 1j * np.random.default_rng(0).normal(size=x.shape)
    z = {"numpy": z, "torch": torch.from_numpy(z), "list": z.tolist()}[kind]
    with pytest.raises(TypeError, match=r"^x: complex features \(dtype .*complex128\) are not supported"):
        score("cka", z, y)
    with pytest.raises(TypeError, match=r"^y: complex features"):
        layer_matrix("mutual_knn", [x], [y, z], topk=3)
    if kind != "list":
        with pytest.raises(TypeError, match=r"^complex features"):
            tm.prepare(z)
    with pytest.raises(TypeError, match=r"^x: features of dtype object \(Python objects\): convert them"):
        score("cka", x.astype(object), y)


def test_register_builtins_again_keeps_the_shipped_registrations() -> None:
    """``register_builtins()`` is idempotent: a second call installs the very objects of
    ``BUILTIN_SPECS`` (it built new ones, which then counted as user metrics), and it puts a
    built-in back where a user metric had taken its name."""
    from tasks.metrics import BUILTIN_SPECS, register_builtins

    order = list(METRICS)
    register_metric("cka", lambda x, y: 0.0, overwrite=True)
    try:
        register_builtins()
        register_builtins()
    finally:
        METRICS._specs["cka"] = BUILTIN_SPECS["cka"]
    assert set(BUILTIN_SPECS) <= set(METRICS) and list(METRICS) == order
    assert all(METRICS[name] is spec for name, spec in BUILTIN_SPECS.items())
    x, y = paired(seed=3)
    assert score("cka", x, y) == pytest.approx(ref.cka(x, y), abs=1e-10)


@pytest.mark.parametrize("metric, params, message", [
    ("cka", {"kernel_metric": "cos"}, "kernel_metric must be 'ip' or 'rbf', got 'cos'"),
    ("cka", {"kernel_metric": "rbf", "rbf_sigma": -1.0}, "rbf_sigma must be a positive finite number, got -1.0"),
    ("cka", {"kernel_metric": "rbf", "rbf_sigma": float("inf")}, "rbf_sigma must be a finite number, got inf"),
    ("cka_rbf_median", {"rbf_sigma": "mean"}, "rbf_sigma must be a positive number or 'median', got 'mean'"),
    ("mutual_knn", {"topk": 3, "knn_precision": "fp8"}, "knn_precision must be one of"),
    ("mutual_knn", {"topk": 0}, "topk must be in [1, N-1] = [1, 7], got 0"),
    ("cknna", {"topk": 1}, "CKNNA requires topk >= 2"),
    ("cknna", {"topk": 8}, "topk must be in [2, N-1] = [2, 7]"),
])
def test_bad_parameters_are_not_blamed_on_a_side(metric: str, params: dict, message: str) -> None:
    """A parameter error (or one against the shared N) is raised as is: it was prefixed ``x:``,
    the side encoded first, as though x's features were at fault."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 4)), rng.normal(size=(8, 3))
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        score(metric, x, y, **params)


def _scaled_layers(scale: float, seed: int = 3) -> list[np.ndarray]:
    return [(x * scale).astype(np.float32) for x in layers(n=30, seed=seed)]


def test_float32_rows_whose_gram_would_overflow_are_refused_naming_side_and_layer() -> None:
    """Finite float32 rows of norm ~4e19 have a Gram beyond float32 (inf): list metrics scored
    silently wrong lists (0.26 for 0.35) and CKA was NaN. Such a layer is refused; the same
    values in float64, or paired with a float64 side (the pair computes in float64), are scored."""
    xs, ys = _scaled_layers(1.0, seed=3), _scaled_layers(1.0, seed=4)
    ys[2] = ys[2] * np.float32(4e19)  # rows of norm ~4e19
    for metric in ("mutual_knn", "cka", "cknna"):
        with pytest.raises(ValueError, match=r"^y: layer 2 has rows of norm up to 4e\+19, above float32's limit"):
            layer_matrix(metric, xs, ys, topk=4)
    with pytest.raises(ValueError, match=r"^x: layer 0 has rows of norm up to .*prepare\(\).*float64"):
        score("cka", ys[2], xs[0])
    big = ys[2].astype(np.float64)
    x0 = xs[0].astype(np.float64)
    assert score("mutual_knn", xs[0], big, topk=4) == pytest.approx(ref.mutual_knn(x0, big, 4), abs=1e-12)
    assert score("cka", ys[2], x0) == pytest.approx(ref.cka(big, x0), abs=1e-9)  # float32 side, float64 pair


def test_float32_rows_up_to_the_limit_are_scored_exactly() -> None:
    """Rows of norm ~1e15 (just under 2^50) in float32: every float32 value formed from one side
    stays finite and each metric matches its float64 reference; a layer with one element of
    ~9e14 among 1000 columns (peak^2 D above the limit, row norms within it) is measured and
    accepted, not refused."""
    xs, ys = _scaled_layers(9e14, seed=5), _scaled_layers(9e14, seed=6)
    x64, y64 = xs[0].astype(np.float64), ys[1].astype(np.float64)
    assert np.sqrt((x64 ** 2).sum(1).max()) > 5e14
    assert score("mutual_knn", xs[0], ys[1], topk=4) == pytest.approx(ref.mutual_knn(x64, y64, 4), abs=1e-12)
    assert score("cka", xs[0], ys[1]) == pytest.approx(ref.cka(x64, y64), rel=1e-5)
    assert score("unbiased_cka", xs[0], ys[1]) == pytest.approx(ref.cka(x64, y64, unbiased=True), rel=1e-4)
    assert score("cknna", xs[0], ys[1], topk=4) == pytest.approx(ref.cknna(x64, y64, 4), rel=1e-4)
    wide = np.random.default_rng(7).normal(size=(30, 1000)).astype(np.float32)
    wide[3, 5] = 9e14
    w64 = wide.astype(np.float64)
    assert score("cka", wide, ys[1]) == pytest.approx(ref.cka(w64, y64), rel=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(bounds=(1.0, 0.0)), r"bounds must have low < high, got \(1.0, 0.0\)"),  # calibrated 0, a zero-width interval
    (dict(bounds=(0.0, float("nan"))), r"bounds high must be a real number \(or an infinity\), got nan"),
    (dict(bounds=(0.0, None)), r"bounds high must be a real number"),  # failed later, inside calibrate
    (dict(bounds=(0.0,)), r"bounds must be \(low, high\), got \(0.0,\)"),
    (dict(bounds=(True, 2.0)), r"bounds low must be a real number"),
    (dict(higher_is_better="False"), r"higher_is_better must be True or False, got 'False'"),  # read as true
    (dict(symmetric=1), r"symmetric must be True or False"),
    (dict(defaults={"seed": 0}), r"parameter name\(s\) \['seed'\] are taken by score, layer_matrix, calibrate"),
    (dict(defaults={"alpha": 0.1, "level": 2}), r"parameter name\(s\) \['alpha', 'level'\]"),
])
def test_register_metric_refuses_metadata_that_would_give_wrong_numbers(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=rf"^metric 'test_bad_meta': {message}"):
        register_metric("test_bad_meta", lambda x, y, **p: 0.5, **kwargs)
    assert "test_bad_meta" not in METRICS


def test_the_reserved_parameter_names_are_the_public_functions_own() -> None:
    """A metric parameter named like a keyword of calibrate (``seed``) reached score but not
    calibrate's observed value: every keyword the public functions take is reserved."""
    import inspect

    from tasks.metrics.registry import RESERVED_PARAMS

    taken = set()
    for function in (tm.score, tm.layer_matrix, tm.calibrate, tm.bootstrap_ci, tm.chance_level):
        taken |= {p.name for p in inspect.signature(function).parameters.values() if p.kind is not p.VAR_KEYWORD}
    assert taken - {"topk"} <= RESERVED_PARAMS  # chance_level forwards topk to the metric


def test_callable_bounds_and_returned_values_are_checked_where_used() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    try:
        register_metric("test_flipped", lambda x, y, **p: 0.5, bounds=lambda params: (1.0, 0.0), overwrite=True)
        with pytest.raises(ValueError, match=r"^metric 'test_flipped': bounds must have low < high"):
            tm.calibrate("test_flipped", x, y, permutations=5)
        register_metric("test_text", lambda x, y, **p: "0.5", overwrite=True)  # float() would read it
        with pytest.raises(tm.MetricFunctionError, match=r"returned '0.5' \(str\)"):
            score("test_text", x, y)
        register_metric("test_vector", lambda x, y, **p: torch.ones(2), overwrite=True)
        with pytest.raises(tm.MetricFunctionError, match=r"of shape \(2,\)"):
            score("test_vector", x, y)
        for one in (np.float32(0.25), np.array([0.25]), torch.tensor([[0.25]]), 0.25, np.int64(1)):
            register_metric("test_one", lambda x, y, one=one, **p: one, overwrite=True)
            assert score("test_one", x, y) == float(one if not hasattr(one, "ravel") else one.ravel()[0])
        register_metric("test_nan", lambda x, y, **p: float("nan"), overwrite=True)
        with pytest.raises(ValueError, match="every one of the 4 bootstrap subsamples of 10 rows scored NaN"):
            tm.bootstrap_ci("test_nan", x, y, n_boot=4)
    finally:
        for name in ("test_flipped", "test_text", "test_vector", "test_one", "test_nan"):
            if name in METRICS:
                tm.unregister_metric(name)


class _SlicingEngine(_MeanCos):
    """A user engine that reads its layers by slice and numpy index, as a list allows."""

    def encode(self, rep, params):
        layers = rep.layers[:]
        return [torch.nn.functional.normalize(layers[np.int64(i)], dim=1) for i in range(len(layers))]


class _TransposedEngine(_MeanCos):
    def matrix(self, a, b, params):
        return super().matrix(a, b, params).T


def test_user_engines_read_subsample_layers_as_a_list_and_must_return_the_layer_pairs_shape() -> None:
    """bootstrap_ci's subsamples gave an engine a sequence that refused slices and numpy
    integers (a TypeError failed the pair); an engine returning (Lb, La) named the wrong layers."""
    rng = np.random.default_rng(1)
    xs, ys = [rng.normal(size=(30, 4)) for _ in range(2)], [rng.normal(size=(30, 4)) for _ in range(3)]
    try:
        register_metric("test_slicing", engine=_SlicingEngine, bounds=(-1.0, 1.0), overwrite=True)
        register_metric("test_mean_cos", engine=_MeanCos, bounds=(-1.0, 1.0), overwrite=True)
        got = tm.bootstrap_ci("test_slicing", xs, ys, n_boot=5, seed=2)
        want = tm.bootstrap_ci("test_mean_cos", xs, ys, n_boot=5, seed=2)
        assert (got.low, got.high, got.estimate) == (want.low, want.high, want.estimate)
        register_metric("test_transposed", engine=_TransposedEngine, bounds=(-1.0, 1.0), overwrite=True)
        for call in (lambda: layer_matrix("test_transposed", xs, ys), lambda: tm.calibrate("test_transposed", xs, ys, permutations=3),
                     lambda: tm.bootstrap_ci("test_transposed", xs, ys, n_boot=3)):
            with pytest.raises(tm.MetricFunctionError, match=r"_TransposedEngine\.matrix returned shape \(3, 2\), not \(2, 3\)"):
                call()
    finally:
        for name in ("test_slicing", "test_mean_cos", "test_transposed"):
            if name in METRICS:
                tm.unregister_metric(name)


def test_values_below_or_above_the_dtypes_range_are_refused_not_scored_wrong() -> None:
    """float32 values of ~1e-23 (float64 ~1e-170) have products in the subnormal range: every
    distance tied and mutual_knn scored 0.95 for 0.79; float64 rows of norm ~1e120 made CKA and
    CKNNA NaN. Such layers are refused naming the side, the layer and the remedy."""
    x, y = _scaled_layers(1.0, seed=8)[0], _scaled_layers(1.0, seed=9)[1]
    with pytest.raises(ValueError, match=r"^x: layer 0 has values of magnitude at most [0-9.]+e-2\d, below float32's range here, "
                                         r"2\^-50 = 8.88e-16: products of them underflow.*or pass them as float64$"):
        score("mutual_knn", x * np.float32(1e-23), y, topk=4)
    with pytest.raises(ValueError, match=r"^y: layer 0 has values of magnitude at most [0-9.]+e-1[67]\d, below float64's range here, "
                                         r"2\^-450 = 3.44e-136: .*\(prepare\(\) gives unit rows\)$"):
        score("mutual_knn", x.astype(np.float64), y.astype(np.float64) * 1e-170, topk=4)
    with pytest.raises(ValueError, match=r"^x: layer 0 has rows of norm up to .*e\+154, above float64's limit here, 2\^230"):
        score("cka", x.astype(np.float64) * 1e154, y.astype(np.float64))
    # just inside the limits: the float64 reference's numbers
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    small = np.float32(2.0 ** -49)
    assert score("mutual_knn", x * small, y * small, topk=4) == pytest.approx(ref.mutual_knn(x64, y64, 4), abs=1e-12)
    big = 1e68 / np.sqrt((x64 ** 2).sum(1).max())  # rows of norm up to 1e68 (the limit: 1.7e69)
    assert score("cka", x64 * big, y64 * big) == pytest.approx(ref.cka(x64 * big, y64 * big), rel=1e-9)
    assert np.isfinite(tm.calibrate("cknna", x64 * big, y64 * big, permutations=5, topk=4).null).all()
    assert score("mutual_knn", x64 * 1e-130, y64, topk=4) == pytest.approx(ref.mutual_knn(x64, y64, 4), abs=1e-12)


def test_masked_arrays_with_masked_values_are_refused_not_read_under_the_mask() -> None:
    """A masked entry holding 1e6 scored CKA 0.044 for 0.514: converting dropped the mask."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    masked = np.ma.masked_array(x.copy(), mask=np.zeros_like(x, dtype=bool))
    masked[2, 1] = np.ma.masked
    masked.data[2, 1] = 1e6
    with pytest.raises(TypeError, match=r"^x: a masked array with 1 masked value\(s\): the metrics would read the values under"):
        score("cka", masked, y)
    with pytest.raises(TypeError, match=r"^y: a masked array"):
        layer_matrix("cka", [x], np.ma.stack([masked]))
    assert score("cka", np.ma.masked_array(x), y) == score("cka", x, y)  # nothing masked: the values themselves


def test_register_metric_refuses_parameter_names_no_call_can_pass() -> None:
    """``defaults={1: 2}`` was registered, and then every metric's unknown-parameter error was a
    bare ``TypeError`` from sorting the names (``'<' not supported between instances of 'str' and
    'int'``); ``{'x y': 1}`` could never be passed; a list of pairs failed only at the call."""
    for defaults, given in (({1: 2}, "1"), ({"x y": 1}, "'x y'"), ({None: 1, "ok": 2}, "None")):
        with pytest.raises(ValueError, match=rf"^metric 'u_params': parameter names must be Python identifiers .*got {given}$"):
            register_metric("u_params", lambda a, b, **p: 0.5, defaults=defaults, overwrite=True)
    with pytest.raises(ValueError, match=r"^metric 'u_params': defaults must be a mapping .*got list$"):
        register_metric("u_params", lambda a, b, **p: 0.5, defaults=[("alpha_", 1)], overwrite=True)
    assert "u_params" not in METRICS
    x, y = paired(n=12, dx=4, dy=3)
    with pytest.raises(TypeError, match=r"^unknown metric parameter\(s\) \['foo'\]; known: "):
        score("cka", x, y, foo=1)


def test_chance_level_refuses_a_chance_function_that_returns_no_number() -> None:
    """A registered chance function's ``'0.1'`` was returned as is (the pipeline then stored 0.1),
    its ``'x'`` failed the pipeline with float()'s bare error naming no metric."""
    try:
        for returned in ("0.1", "x", True, [0.1]):
            register_metric("u_chance", lambda a, b: 0.5, chance=lambda n, p, r=returned: r, overwrite=True)
            with pytest.raises(ValueError, match=r"^metric 'u_chance': its chance function returned .* for n=10; it must "
                                                 r"return a number or None$"):
                tm.chance_level("u_chance", 10)
        register_metric("u_chance", lambda a, b: 0.5, chance=lambda n, p: np.float32(0.25), overwrite=True)
        assert tm.chance_level("u_chance", 10) == 0.25 and type(tm.chance_level("u_chance", 10)) is float
    finally:
        tm.unregister_metric("u_chance")


@pytest.mark.parametrize("kwargs, message", [
    ({"overwrite": "no"}, "overwrite must be True or False"),
    ({"chance": 5}, "chance must be a function"),
    ({"name": 3}, "name must be a non-empty string"),
    ({"name": " "}, "name must be a non-empty string"),
])
def test_register_metric_refuses_meaningless_metadata(kwargs: dict, message: str) -> None:
    """``overwrite='no'`` replaced a registered metric, ``chance=5`` failed only later in
    ``chance_level`` ('int' object is not callable), and the names 3 and '' were registered."""
    name = kwargs.pop("name", "test_meaningless_metadata")
    register_metric("test_meaningless_metadata", lambda a, b: 0.0, overwrite=True)
    before = METRICS["test_meaningless_metadata"]
    try:
        with pytest.raises(ValueError, match=message):
            register_metric(name, lambda a, b: 1.0, **kwargs)
        assert METRICS["test_meaningless_metadata"] is before
        assert name not in METRICS or name == "test_meaningless_metadata"
    finally:
        tm.unregister_metric("test_meaningless_metadata")


@pytest.mark.parametrize("sigma", [True, [1.0]])
def test_rbf_sigma_of_the_wrong_type_is_refused_for_cka_rbf_median(sigma) -> None:
    """``cka_rbf_median`` defaults to 'median', so a non-number passed the parameter check: True
    scored as sigma = 1 and a list raised a bare TypeError (unhashable) from the cache key."""
    x, y = paired(n=20, seed=1)
    with pytest.raises(ValueError, match="rbf_sigma must be a number"):
        score("cka_rbf_median", x, y, rbf_sigma=sigma)


def test_a_representation_computes_in_float32_or_float64_only() -> None:
    """int64 truncated the features silently (svcca 0.6312 for 0.5986), float16 and bfloat16
    summed Grams in half precision, 'float64' raised a bare TypeError."""
    x, _ = paired(n=20, seed=2)
    for dtype in (torch.int64, torch.float16, torch.bfloat16, "float64", np.float64):
        with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64"):
            tm.Representation(x, dtype=dtype)
    assert tm.Representation(x, dtype=torch.float64).dtype == torch.float64


def test_the_meta_device_is_refused_by_name() -> None:
    x, y = paired(n=20, seed=2)
    with pytest.raises(ValueError, match="meta device holds shapes, not values"):
        score("cka", x, y, device="meta")


class _InfiniteEngine(_MeanCos):
    def matrix(self, a, b, params):
        out = super().matrix(a, b, params)
        out[1, 0] = -float("inf")
        return out


def test_an_infinite_score_is_refused_naming_the_metric_and_the_layer_pair() -> None:
    """The plugin hunt: a function returning +inf on one layer pair gave p = 1 (every null draw a
    "tie" within inf's tolerance) but calibrated = inf, and a best row with score NULL beside it."""
    rng = np.random.default_rng(0)
    xs, ys = [rng.normal(size=(20, 3)) for _ in range(2)], [rng.normal(size=(20, 3))]
    try:
        register_metric("test_inf", lambda x, y, **p: float("inf") if x[0, 0] == xs[1][0, 0] else 0.5, overwrite=True)
        for call in (lambda: layer_matrix("test_inf", xs, ys), lambda: tm.calibrate("test_inf", xs, ys, permutations=5)):
            with pytest.raises(tm.MetricFunctionError, match=r"^metric 'test_inf': its function .*<lambda> returned inf on layer "
                                                             r"pair \(1, 0\) .*scores must be finite: return NaN"):
                call()
        register_metric("test_inf_engine", engine=_InfiniteEngine, bounds=(-1.0, 1.0), overwrite=True)
        for call in (lambda: layer_matrix("test_inf_engine", xs, ys), lambda: tm.bootstrap_ci("test_inf_engine", xs, ys, n_boot=3)):
            with pytest.raises(tm.MetricFunctionError, match=r"_InfiniteEngine\.matrix returned -inf at layer pair \(1, 0\)"):
                call()
    finally:
        for name in ("test_inf", "test_inf_engine"):
            if name in METRICS:
                tm.unregister_metric(name)


def test_a_name_taken_by_prh_or_by_another_user_metric_says_which() -> None:
    """Reviewer P: a user metric named like one of prh's own was told to pass overwrite=True,
    which would replace prh's metric in every run that loads the module; renaming is the usual fix."""
    from tasks.metrics.registry import unregister_metric

    with pytest.raises(ValueError, match=r"'cka' is already registered \(one of prh's own metrics: give yours another name"):
        register_metric("cka", lambda x, y: 0.0)
    register_metric("test_taken_twice", lambda x, y: 0.0)
    try:
        with pytest.raises(ValueError, match=r"'test_taken_twice' is already registered \(pass overwrite=True\)$"):
            register_metric("test_taken_twice", lambda x, y: 1.0)
    finally:
        unregister_metric("test_taken_twice")


def test_a_parameter_the_function_does_not_take_is_refused_when_registered() -> None:
    """A ``defaults`` name the function cannot take as a keyword had failed only at its first
    call: in the pipeline, after the extraction. ``**kwargs`` takes any name."""
    with pytest.raises(ValueError, match=re.escape("metric 'test_no_scale': its function takes no parameter 'scale'")):
        register_metric("test_no_scale", lambda a, b: 0.0, defaults={"scale": 1.0})
    assert "test_no_scale" not in tm.METRICS
    with pytest.raises(ValueError, match=re.escape("metric 'test_no_scale': its function takes no parameter 'width'")):
        register_metric("test_no_scale", lambda a, b, scale: 0.0, defaults={"scale": 1.0, "width": 2})
    register_metric("test_any_params", lambda a, b, **params: float(params["scale"]), defaults={"scale": 2.0},
                    bounds=(-10, 10))
    register_metric("test_keyword_only", lambda a, b, *, scale=1.0: float(scale), defaults={"scale": 3.0},
                    bounds=(-10, 10))
    try:
        x, y = paired()
        assert score("test_any_params", x, y) == 2.0
        assert score("test_keyword_only", x, y, scale=4.0) == 4.0
    finally:
        tm.unregister_metric("test_any_params")
        tm.unregister_metric("test_keyword_only")


def test_an_infinite_number_is_refused_unless_the_default_is_one() -> None:
    """``scale=inf`` for a metric whose default is finite had reached the function; a metric
    whose default is infinite (an open threshold) still takes one."""
    x, y = paired()
    register_metric("test_scaled", lambda a, b, scale: min(float(scale), 5.0), defaults={"scale": 1.0}, bounds=(-10, 10))
    register_metric("test_open", lambda a, b, cap: min(float(cap), 5.0), defaults={"cap": math.inf}, bounds=(-10, 10))
    try:
        for bad in (math.inf, -math.inf, np.float32("inf")):
            with pytest.raises(ValueError, match=re.escape(f"scale must be a finite number, got {bad!r} (a parameter "
                                                           "of metric 'test_scaled')")):
                score("test_scaled", x, y, scale=bad)
        assert score("test_scaled", x, y, scale=2.5) == 2.5
        assert score("test_open", x, y) == 5.0 and score("test_open", x, y, cap=math.inf) == 5.0
        assert score("test_open", x, y, cap=3.0) == 3.0
    finally:
        tm.unregister_metric("test_scaled")
        tm.unregister_metric("test_open")
