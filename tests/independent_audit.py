"""An outside auditor of a pipeline run: every number the alignment stage published for the run,
recomputed in numpy float64 from the definitions in docs/metrics.md ("Metrics", "`prepare`",
"Calibration, chance levels, confidence", "Reproducing the stored numbers") and the features'
Parquet files that the manifests list.

Nothing of prh's computation is imported (no ``tasks``, no ``storage``): the store is read with
fsspec, JSON and pyarrow, the metrics are written out here from their definitions. torch is used
for one thing only, the documented permutation stream (``torch.randperm`` of a CPU generator
seeded with ``alignment.seed``).

``audit_run(store_url)`` returns an :class:`AuditReport`: what was compared, the largest
difference per kind of number, and every mismatch beyond the float32 tolerance as a finding."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq

ALPHA = Fraction(1, 20)  # the pipeline's alpha, read as its decimal
#: metrics whose values are integer totals divided once: compared exactly, no tie tolerance
COUNT_METRICS = {"mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn"}
#: metrics computed in float64 whatever the features' dtype (tie tolerance 1e-12)
FLOAT64_METRICS = {"jaccard_knn", "svcca", "procrustes", "linear_regression", "rsa_spearman"}
LIST_METRICS = {"mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn", "jaccard_knn"}
#: a float32 computation against this float64 one: the largest difference not called a finding
FLOAT32_TOL = 1e-5
EXACT_TOL = 1e-12
FLOAT32_EPS = float(np.finfo(np.float32).eps)
#: two similarities closer than this (about 8 float32 ulps of 1) may be ordered otherwise in float32
NEAR_TIE = 1e-6


@dataclass
class Finding:
    where: str
    what: str
    stored: Any
    expected: Any
    note: str = ""

    def __str__(self) -> str:
        return f"{self.where}: {self.what} stored {self.stored!r}, recomputed {self.expected!r}{' (' + self.note + ')' if self.note else ''}"


@dataclass
class AuditReport:
    findings: list[Finding] = field(default_factory=list)
    compared: dict[str, int] = field(default_factory=dict)  # kind of number -> how many
    largest: dict[str, float] = field(default_factory=dict)  # kind of number -> largest |difference|
    notes: list[str] = field(default_factory=list)
    #: mismatches that a documented float32 effect explains (``explain`` given): not findings
    explained: list[Finding] = field(default_factory=list)

    def check(self, kind: str, where: str, stored: Any, expected: Any, tol: float, note: str = "",
              explain: str = "") -> None:
        """Compare one number (None/NaN on both sides agree); beyond ``tol`` is a finding, or an
        explained difference where ``explain`` names a documented cause that holds here."""
        if explain:
            findings, note = self.explained, explain
        else:
            findings = self.findings
        self.compared[kind] = self.compared.get(kind, 0) + 1
        s_missing = stored is None or (isinstance(stored, float) and math.isnan(stored))
        e_missing = expected is None or (isinstance(expected, float) and math.isnan(expected))
        if s_missing or e_missing:
            if s_missing != e_missing:
                findings.append(Finding(where, kind, stored, expected, note))
            return
        if isinstance(expected, (bool, str, tuple, list)) or isinstance(stored, (bool, str)):
            if stored != expected:
                findings.append(Finding(where, kind, stored, expected, note))
            return
        diff = abs(float(stored) - float(expected))
        self.largest[kind] = max(self.largest.get(kind, 0.0), diff)
        if not diff <= tol:
            findings.append(Finding(where, kind, stored, expected, f"|diff| {diff:.3g}" + (f"; {note}" if note else "")))

    def summary(self) -> str:
        lines = [f"{k}: {n} compared, largest |diff| {self.largest.get(k, 0.0):.3g}" for k, n in sorted(self.compared.items())]
        return "\n".join(lines + [f"FINDING {f}" for f in self.findings] + [f"explained: {f}" for f in self.explained]
                         + [f"note: {n}" for n in self.notes])


# ----------------------------------------------------------------------------------------------
# reading the store (fsspec + JSON + pyarrow only)

class StoreReader:
    def __init__(self, url: str):
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.root = self.root.rstrip("/")

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def json(self, key: str) -> dict:
        with self.fs.open(self.path(key), "rb") as f:
            return json.loads(f.read().decode("utf-8"))

    def table(self, key: str, columns: list[str] | None = None):
        with self.fs.open(self.path(key), "rb") as f:
            return pq.read_table(f, columns=columns)

    def runs(self) -> list[dict]:
        found = self.fs.glob(self.path("runs/*.json"))
        return [self.json(p[len(self.root) + 1:]) for p in sorted(found)]

    def layers(self, dataset_version: str, model: str, feature_version: str) -> tuple[dict, dict[str, list[np.ndarray]]]:
        """(features manifest, sample_id -> [vector of each layer] as float64)."""
        key = f"features/{dataset_version}/{model}/{feature_version}"
        manifest = self.json(f"{key}/manifest.json")
        n_layers = manifest["catalog"]["n_layers"]
        names = sorted(n for n in manifest["files"] if n.startswith("layer-"))
        assert names == [f"layer-{i:03d}.parquet" for i in range(n_layers)], (key, names)
        by_sample: dict[str, list[np.ndarray]] = {}
        for i, name in enumerate(names):
            t = self.table(f"{key}/{name}", ["sample_id", "layer", "vector"])
            assert set(t.column("layer").to_pylist()) == {i}, (key, name)
            col = t.column("vector").combine_chunks()
            width = col.type.list_size
            values = col.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(t), width)
            for sid, row in zip(t.column("sample_id").to_pylist(), values):
                by_sample.setdefault(sid, []).append(row)
        return manifest, by_sample


def byte_order(ids):
    return sorted(ids, key=lambda s: s.encode("utf-8"))


# ----------------------------------------------------------------------------------------------
# prepare: the paper's outlier clamp, then L2 rows (docs/metrics.md, "`prepare`")

def clamp_threshold(layers: list[np.ndarray], q: float, exact: bool) -> float:
    """One threshold from the values of ``layers`` (each (N, D_l)) pooled per sample."""
    pooled = np.abs(np.concatenate(layers, axis=1))
    if exact:
        flat = np.sort(pooled.reshape(-1))
        return float(flat[int(q * flat.size)])
    return float(np.quantile(pooled, q, axis=1, method="linear").mean())


def l2_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def prepare_model(layers: list[np.ndarray], modality: str, q: float, scope: str, exact: bool) -> list[np.ndarray]:
    if q >= 1:
        return [l2_rows(x) for x in layers]
    if scope == "model" and len(layers) > 1 and len({x.shape[1] for x in layers}) == 1:
        source = layers[1:] if modality == "vision" else layers  # a vision model: its blocks only
        t = clamp_threshold(source, q, exact)
        return [l2_rows(np.clip(x, -t, t)) for x in layers]
    out = []
    for x in layers:
        t = clamp_threshold([x], q, exact)
        out.append(l2_rows(np.clip(x, -t, t)))
    return out


# ----------------------------------------------------------------------------------------------
# the metrics, float64, from their definitions

def similarities(x: np.ndarray) -> np.ndarray:
    """Inner products, each pair's product computed once per pair of distinct row values (exact
    copies of a row get bit-equal similarities: docs/metrics.md, ties)."""
    uniq, inverse = np.unique(x + 0.0, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    g = uniq @ uniq.T
    return g[inverse][:, inverse]


def knn_lists(x: np.ndarray, k: int, self_excluded: bool = True) -> np.ndarray:
    """(N, k): each row's top k by similarity descending, then index ascending."""
    s = similarities(x)
    if self_excluded:
        np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def boundary_gap(x: np.ndarray, k: int) -> float:
    """Smallest relative gap between consecutive similarities among each row's top k + 1 (0 gaps,
    exact copies, skipped): below float32 rounding a float32 search may order them otherwise."""
    s = similarities(x)
    np.fill_diagonal(s, -np.inf)
    top = -np.sort(-s, axis=1)[:, : k + 1]
    gaps = np.abs(np.diff(top, axis=1))
    gaps = gaps[gaps > 0]
    return float(gaps.min()) if gaps.size else np.inf


def lcs(a, b) -> int:
    m, n = len(a), len(b)
    d = [[0] * (n + 1) for _ in range(m + 1)]
    for i in range(m):
        for j in range(n):
            d[i + 1][j + 1] = d[i][j] + 1 if a[i] == b[j] else max(d[i][j + 1], d[i + 1][j])
    return d[m][n]


def levenshtein(a, b) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def list_metric(metric: str, la: np.ndarray, lb: np.ndarray, k: int) -> float:
    n = la.shape[0]
    if metric == "mutual_knn":
        return sum(len(set(a) & set(b)) for a, b in zip(la.tolist(), lb.tolist())) / (n * k)
    if metric == "jaccard_knn":
        return float(np.mean([len(set(a) & set(b)) / len(set(a) | set(b)) for a, b in zip(la.tolist(), lb.tolist())]))
    if metric == "cycle_knn":  # i among the x-neighbours of one of its y-neighbours
        sets_a = [set(r) for r in la.tolist()]
        return sum(any(i in sets_a[j] for j in lb[i]) for i in range(n)) / n
    if metric == "lcs_knn":
        return sum(lcs(a, b) for a, b in zip(la.tolist(), lb.tolist())) / n
    if metric == "edit_distance_knn":
        return 1 - sum(levenshtein(a, b) for a, b in zip(la.tolist(), lb.tolist())) / (n * k)
    raise KeyError(metric)


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:
    n = k.shape[0]
    h = np.eye(n) - 1.0 / n
    return float(np.trace(k @ h @ l @ h))


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. 2012 as the paper's code writes it (``K~ * L~.T`` summed: the transpose
    matters for CKNNA's non-symmetric masked kernels)."""
    m = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    value = (kt * lt.T).sum() + kt.sum() * lt.sum() / ((m - 1) * (m - 2)) - 2 * (kt @ lt).sum() / (m - 2)
    return float(value / (m * (m - 3)))


def sq_distances(x: np.ndarray) -> np.ndarray:
    diff = x[:, None, :] - x[None, :, :]
    return np.einsum("ijk,ijk->ij", diff, diff)


def kernel(x: np.ndarray, kind: str, sigma: float) -> np.ndarray:
    if kind == "ip":
        return x @ x.T
    if kind == "rbf":
        return np.exp(-sq_distances(x) / (2 * sigma**2))
    raise ValueError(kind)


def cka_value(kx: np.ndarray, ky: np.ndarray, unbiased: bool) -> float:
    h = hsic_unbiased if unbiased else hsic_biased
    return h(kx, ky) / (math.sqrt(h(kx, kx) * h(ky, ky)) + 1e-6)


def cknna_value(x, y, lx, ly, unbiased: bool, distance_agnostic: bool) -> float:
    n = x.shape[0]
    kx, ky = x @ x.T, y @ y.T

    def mask_of(lists):
        m = np.zeros((n, n))
        m[np.arange(n)[:, None], lists] = 1.0
        return m

    mx, my = mask_of(lx), mask_of(ly)
    h = hsic_unbiased if unbiased else hsic_biased

    def sim(ka, kb, ma, mb):
        mask = ma * mb
        if distance_agnostic:
            return h(mask, mask)
        return h(mask * ka, mask * kb)

    return sim(kx, ky, mx, my) / (math.sqrt(sim(kx, kx, mx, mx) * sim(ky, ky, my, my)) + 1e-6)


def svcca_value(x, y, cca_dim: int) -> float:
    def basis(z):
        z = z - z.mean(axis=0)
        z = z / (z.std(axis=0, ddof=1) + 1e-8)
        u, _, _ = np.linalg.svd(z, full_matrices=False)
        return u[:, :cca_dim]

    return float(np.linalg.svd(basis(x).T @ basis(y), compute_uv=False).mean())


def procrustes_value(x, y) -> float:
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    return float(np.linalg.svd(xc.T @ yc, compute_uv=False).sum() / (np.linalg.norm(xc) * np.linalg.norm(yc)))


def regression_value(x, y, ridge: float) -> float:
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    keep = s > max(xc.shape) * FLOAT32_EPS * s[0]  # numpy's lstsq cutoff at the features' (float32) eps
    u, s = u[:, keep], s[keep]
    fitted = u @ ((s**2 / (s**2 + ridge))[:, None] * (u.T @ yc))
    return float(1 - np.sum((yc - fitted) ** 2) / np.sum(yc**2))


def rsa_value(x, y) -> float:
    from scipy.stats import rankdata

    iu = np.triu_indices(x.shape[0], 1)
    rx, ry = rankdata(sq_distances(x)[iu]), rankdata(sq_distances(y)[iu])
    return float(np.corrcoef(rx, ry)[0, 1])


def median_sigma(x) -> float:
    iu = np.triu_indices(x.shape[0], 1)
    return float(np.median(np.sqrt(sq_distances(x)[iu])))


def metric_bounds(metric: str, p: dict) -> tuple[float, float]:
    if metric == "lcs_knn":
        return 0.0, float(p["topk"])
    if metric in ("unbiased_cka", "cknna", "rsa_spearman"):
        return -1.0, 1.0
    if metric in ("cka", "cka_rbf_median") and p.get("unbiased"):
        return -1.0, 1.0
    return 0.0, 1.0


def chance(metric: str, n: int, p: dict) -> float | None:
    k = p.get("topk")
    if metric == "mutual_knn":
        return k / (n - 1)
    if metric == "cycle_knn":
        return 1 - (1 - k / (n - 1)) ** k
    if metric == "jaccard_knn":
        from scipy.stats import hypergeom

        c = np.arange(0, k + 1)
        return float(np.sum(hypergeom(n - 1, k, k).pmf(c) * c / (2 * k - c)))
    if metric in ("unbiased_cka", "rsa_spearman") or (metric in ("cka", "cka_rbf_median") and p.get("unbiased")):
        return 0.0
    return None


class PairScorer:
    """Every layer pair of one metric on prepared layers, and the same after a row permutation of
    model B (the list metrics and CKNNA relabel B's lists, as documented) or on a subsample."""

    def __init__(self, metric: str, params: dict):
        self.metric, self.p = metric, params

    def lists(self, layers):
        if self.metric in LIST_METRICS:
            return [knn_lists(z, self.p["topk"]) for z in layers]
        if self.metric == "cknna":
            unbiased = self.p.get("unbiased", True)
            return [knn_lists(z, self.p["topk"], self_excluded=unbiased) for z in layers]
        return None

    def pair(self, x, y, lx=None, ly=None) -> float:
        m, p = self.metric, self.p
        if m in LIST_METRICS:
            return list_metric(m, lx, ly, p["topk"])
        if m == "cknna":
            return cknna_value(x, y, lx, ly, p.get("unbiased", True), p.get("distance_agnostic", False))
        if m in ("cka", "unbiased_cka"):
            kind, sigma = p.get("kernel_metric", "ip"), float(p.get("rbf_sigma", 1.0))
            unbiased = m == "unbiased_cka" or bool(p.get("unbiased", False))
            return cka_value(kernel(x, kind, sigma), kernel(y, kind, sigma), unbiased)
        if m == "cka_rbf_median":
            return cka_value(kernel(x, "rbf", median_sigma(x)), kernel(y, "rbf", median_sigma(y)), bool(p.get("unbiased", False)))
        if m == "svcca":
            return svcca_value(x, y, int(p["cca_dim"]))
        if m == "procrustes":
            return procrustes_value(x, y)
        if m == "linear_regression":
            return regression_value(x, y, float(p.get("ridge", 0.0)))
        if m == "rsa_spearman":
            return rsa_value(x, y)
        raise NotImplementedError(f"the auditor has no definition of metric {m!r}")

    def matrix(self, xs, ys, kept, lxs=None, lys=None, perm=None) -> np.ndarray:
        """(La, Lb) with NaN off ``kept``; ``perm``: model B's rows reordered as ``y[perm]``."""
        out = np.full((len(xs), len(ys)), np.nan)
        if perm is not None:
            inv = np.argsort(perm)
            ys = [y[perm] for y in ys]
            if lys is not None:
                lys = [inv[l[perm]] for l in lys]  # kNN_{y[perm]}(i) = inv[kNN_y(perm[i])]
        for i, j in kept:
            out[i, j] = self.pair(xs[i], ys[j], None if lxs is None else lxs[i], None if lys is None else lys[j])
        return out


def best_of(matrix: np.ndarray) -> tuple[float, tuple[int, int]]:
    """The largest entry (NaN ignored); exact ties to the lowest layer_a, then layer_b."""
    best, where = -np.inf, None
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            v = matrix[i, j]
            if not np.isnan(v) and v > best:
                best, where = v, (i, j)
    return float(best), where


def draws(n: int, groups: list[int] | None, count: int, seed: int) -> list[np.ndarray]:
    """The documented permutation stream ("Reproducing the stored numbers", Null)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    if groups is None:
        return [torch.randperm(n, generator=gen).numpy() for _ in range(count)]
    groups = np.asarray(groups)
    rows_of = {g: np.flatnonzero(groups == g) for g in np.unique(groups)}  # images in image number order
    by_size: dict[int, list[int]] = {}
    for g in sorted(rows_of):
        by_size.setdefault(len(rows_of[g]), []).append(g)
    out = []
    for _ in range(count):
        perm = np.arange(n)
        for size in sorted(by_size):
            members = by_size[size]
            order = torch.randperm(len(members), generator=gen).numpy()
            for b, g in enumerate(members):
                perm[rows_of[g]] = rows_of[members[order[b]]]
        out.append(perm)
    return out


def tau_of(observed: float, null: np.ndarray) -> float:
    s = np.sort(np.concatenate([[observed], null]))
    rank = math.ceil((1 - ALPHA) * len(s))
    return float(s[rank - 1])


def bh(pvalues: list[float]) -> list[float]:
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    q = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, pvalues[i] * m / rank)
        q[i] = running
    return q


# ----------------------------------------------------------------------------------------------
# the audit

def _tie_rtol(metric: str) -> float:
    return 0.0 if metric in COUNT_METRICS else 1e-12 if metric in FLOAT64_METRICS else 1e-5


def _score_tol(metric: str) -> float:
    return EXACT_TOL if metric in COUNT_METRICS else FLOAT32_TOL


def audit_run(url: str, run_id: str | None = None, report: AuditReport | None = None,
              fdr: dict[tuple[str, str, str], float] | None = None) -> AuditReport:
    """Recompute what run ``run_id`` (default: the last to finish with results) published.

    ``fdr``: the published q-values, (metric, model_a, model_b) -> q (the ``alignment_fdr`` view
    is SQL over the catalog, read by the caller); compared with Benjamini-Hochberg here."""
    report = report or AuditReport()
    store = StoreReader(url)
    runs = [r for r in store.runs() if r.get("alignment_versions")]
    run = next(r for r in runs if r["run_id"] == run_id) if run_id else max(runs, key=lambda r: r["finished_at"])
    pvalues: dict[str, list[tuple[tuple[str, str], float]]] = {}
    for key in run["alignment_versions"]:
        _audit_version(store, key, report, pvalues)
    for metric, entries in pvalues.items():
        qs = bh([p for _, p in entries])
        for ((a, b), _), q in zip(entries, qs):
            if fdr is not None:
                report.check("q_value", f"{a}x{b}/{metric}", fdr.get((metric, a, b)), q, EXACT_TOL)
    return report


@dataclass
class PreparedPair:
    manifest: dict
    scores: list[dict]
    best_rows: list[dict]
    model_a: str
    model_b: str
    xs: list[np.ndarray]
    ys: list[np.ndarray]
    groups: list[int] | None  # each row's image number where some image has several rows
    n_paired: int


def prepared_pair(store: StoreReader, key: str) -> PreparedPair:
    """An alignment version's stored rows and its pair's rows as documented ("Reproducing the
    stored numbers", Rows), prepared in float64."""
    manifest = store.json(f"{key}/manifest.json")
    assert set(manifest["files"]) == {"scores.parquet", "best.parquet"}, manifest["files"]
    params = manifest["params"]
    dv = manifest["lineage"]["dataset_version"]
    scores = store.table(f"{key}/scores.parquet").to_pylist()
    best_rows = store.table(f"{key}/best.parquet").to_pylist()
    model_a, model_b = scores[0]["model_a"], scores[0]["model_b"]
    feats = manifest["lineage"]["features"]
    man_a, by_a = store.layers(dv, model_a, feats[model_a])
    man_b, by_b = store.layers(dv, model_b, feats[model_b])
    samples = store.table(f"datasets/{dv}/samples.parquet", ["sample_id", "image_id"]).to_pylist()
    image_of = {r["sample_id"]: r["image_id"] for r in samples}
    ids = byte_order(set(by_a) & set(by_b))
    unit = params.get("unit", "sample")
    images = byte_order({image_of[s] for s in ids})

    def rows(by, n_layers):
        if unit == "image":
            members = {im: [s for s in ids if image_of[s] == im] for im in images}
            return [np.stack([np.mean([by[s][l] for s in members[im]], axis=0) for im in images]) for l in range(n_layers)]
        return [np.stack([by[s][l] for s in ids]) for l in range(n_layers)]

    q, scope, exact = float(params["outlier_quantile"]), params["outlier_scope"], bool(params["outlier_exact"])
    xs = prepare_model(rows(by_a, man_a["catalog"]["n_layers"]), man_a["catalog"]["modality"], q, scope, exact)
    ys = prepare_model(rows(by_b, man_b["catalog"]["n_layers"]), man_b["catalog"]["modality"], q, scope, exact)
    groups = None
    if unit == "sample" and len(images) < len(ids):
        number = {im: i for i, im in enumerate(images)}
        groups = [number[image_of[s]] for s in ids]
    return PreparedPair(manifest, scores, best_rows, model_a, model_b, xs, ys, groups, len(ids))


def _audit_version(store: StoreReader, key: str, report: AuditReport, pvalues: dict) -> None:
    pair = prepared_pair(store, key)
    manifest, scores, best_rows, xs, ys, groups = pair.manifest, pair.scores, pair.best_rows, pair.xs, pair.ys, pair.groups
    model_a, model_b, params = pair.model_a, pair.model_b, manifest["params"]
    report.check("n_paired_samples", key, manifest.get("n_paired_samples"), pair.n_paired, 0)
    n = xs[0].shape[0]
    seed, perms_n, boot_n = int(params["seed"]), int(params["permutations"]), int(params["bootstrap"])
    perms = draws(n, groups, perms_n, seed) if perms_n else []

    for brow in best_rows:
        metric = brow["metric"]
        mrows = [r for r in scores if r["metric"] == metric]
        p = {**json.loads(mrows[0]["params"] or "{}")}
        where = f"{model_a}x{model_b}/{metric}"
        scorer = PairScorer(metric, p)
        kept = [(r["layer_a"], r["layer_b"]) for r in mrows if r["score"] is not None]
        _check_exclusions(report, where, metric, p, mrows, xs, ys)
        lxs, lys = scorer.lists(xs), scorer.lists(ys)
        observed = scorer.matrix(xs, ys, kept, lxs, lys)
        near_tie = ""  # a documented float32 effect (docs/metrics.md, "Reproducing the stored numbers")
        if lxs is not None:
            gap = min(boundary_gap(z, p["topk"]) for z in xs + ys)
            if gap < NEAR_TIE:
                near_tie = f"a float32 near-tie: two similarities {gap:.2g} apart among some row's top k+1"
        for r in mrows:
            i, j = r["layer_a"], r["layer_b"]
            report.check(f"score:{metric}", f"{where} layers {i}x{j}", r["score"],
                         None if r["score"] is None else observed[i, j], _score_tol(metric), explain=near_tie)
            report.check("n_samples", where, r["n_samples"], n, 0)
        est, arg = best_of(observed)
        report.check(f"best:{metric}", where, brow["score"], est, _score_tol(metric), explain=near_tie)
        stored_arg = (brow["layer_a"], brow["layer_b"])
        rounding_tie = stored_arg != arg and stored_arg in kept and abs(observed[stored_arg] - est) <= _score_tol(metric)
        report.check("argmax", where, stored_arg, arg, 0, explain=near_tie or (
            f"layer pairs within rounding: {observed[stored_arg]!r} at the stored pair" if rounding_tie else ""))
        report.check("chance_level", where, brow["chance_level"], chance(metric, n, p), 1e-12)
        low_b, high_b = metric_bounds(metric, p)
        if perms_n:
            null = np.array([best_of(scorer.matrix(xs, ys, kept, lxs, lys, perm=perm))[0] for perm in perms])
            null = null[~np.isnan(null)]
            report.check("permutations", where, brow["permutations"], len(null), 0)
            report.check(f"null_mean:{metric}", where, brow["null_mean"], float(null.mean()), _score_tol(metric), explain=near_tie)
            report.check(f"null_std:{metric}", where, brow["null_std"], float(null.std()), _score_tol(metric), explain=near_tie)
            tau = tau_of(est, null)
            report.check(f"tau:{metric}", where, brow["tau"], tau, _score_tol(metric), explain=near_tie)
            rtol = _tie_rtol(metric)
            reach = null >= est - rtol * abs(est)
            pval = (1 + int(reach.sum())) / (len(null) + 1)
            ambiguous = np.any(np.abs(null - est) <= max(1e-5 * abs(est), 1e-6)) if rtol == 0 and near_tie else \
                np.any(np.abs(null - est) <= 2e-5 * max(abs(est), 1e-3))
            report.check("p_value", where, brow["p_value"], pval, EXACT_TOL,
                         explain="a null draw within float32 rounding of the score" if ambiguous else near_tie)
            # the calibrated score, from the stored tau and score (so a float32 difference in tau
            # does not move it) and from the recomputed ones
            report.check("calibrated(stored tau)", where, brow["calibrated_score"],
                         _calibrated(brow["score"], brow["tau"], high_b, rtol), 1e-9)
            report.check(f"calibrated:{metric}", where, brow["calibrated_score"], _calibrated(est, tau, high_b, rtol),
                         _score_tol(metric) * 50, explain=near_tie)
            pvalues.setdefault(metric, []).append(((model_a, model_b), brow["p_value"]))
        if boot_n:
            low, high, used, degenerate = _interval(scorer, xs, ys, kept, est, boot_n, seed, groups, low_b, high_b)
            report.check("bootstrap", where, brow["bootstrap"], used, 0)
            report.check(f"ci_low:{metric}", where, brow["ci_low"], low, _score_tol(metric) * 10, explain=near_tie)
            report.check(f"ci_high:{metric}", where, brow["ci_high"], high, _score_tol(metric) * 10, explain=near_tie)
            report.check("ci_degenerate", where, brow["ci_degenerate"], degenerate, 0, explain=near_tie)


def centred_rank(x: np.ndarray, rtol: float) -> int:
    """Directions of the centred layer above ``rtol`` times its largest (0: constant)."""
    s = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    return 0 if s[0] <= 1e-12 * max(np.linalg.norm(x), 1e-300) else int(np.sum(s > rtol * s[0]))


def standardised_rank(x: np.ndarray) -> int:
    z = x - x.mean(axis=0)
    z = z / (z.std(axis=0, ddof=1) + 1e-8)
    s = np.linalg.svd(z, compute_uv=False)
    return int(np.sum(s > max(1e-7, max(z.shape) * FLOAT32_EPS) * s[0]))


def _check_exclusions(report, where, metric, p, mrows, xs, ys) -> None:
    """A layer left out (all its scores NULL) must be constant or rank 1 (any metric) or, for
    svcca, of rank below ``cca_dim``; a clearly degenerate layer must be left out."""
    for side, layers, col in (("a", xs, "layer_a"), ("b", ys, "layer_b")):
        for i, x in enumerate(layers):
            stored = [r["score"] for r in mrows if r[col] == i]
            left_out = all(v is None for v in stored)
            rank = centred_rank(x, 1e-4)
            expected = rank <= 1 or (metric == "svcca" and standardised_rank(x) < int(p["cca_dim"]))
            clearly = centred_rank(x, 1e-6) <= 1 or (metric == "svcca" and standardised_rank(x) < int(p["cca_dim"]))
            if left_out and not expected:
                report.findings.append(Finding(f"{where} layer {side}{i}", "left out (NULL scores)", True, False,
                                               f"centred rank {rank}: not constant or rank 1"))
            elif not left_out and clearly:
                report.findings.append(Finding(f"{where} layer {side}{i}", "left out (NULL scores)", False, True,
                                               f"centred rank {rank}"))
            report.compared["exclusion"] = report.compared.get("exclusion", 0) + 1


def _calibrated(obs: float, tau: float, upper: float, rtol: float) -> float:
    if obs is None or tau is None:
        return None
    if upper <= tau or obs - tau <= rtol * abs(tau):
        return 0.0
    return float(min(max((obs - tau) / (upper - tau), 0.0), 1.0))


def _interval(scorer, xs, ys, kept, est, n_boot, seed, groups, floor, ceiling):
    n = xs[0].shape[0]
    rng = np.random.default_rng(seed)
    if groups is None:
        total, m = n, round(n / 2)
    else:
        labels = np.asarray(groups)
        total = int(labels.max()) + 1
        m = round(total / 2)
    reps = []
    for _ in range(n_boot):
        if groups is None:
            idx = np.sort(rng.choice(n, m, replace=False))
        else:
            chosen = rng.choice(total, m, replace=False)
            idx = np.flatnonzero(np.isin(labels, chosen))  # their rows, in row order
        sx, sy = [x[idx] for x in xs], [y[idx] for y in ys]
        value = best_of(scorer.matrix(sx, sy, kept, scorer.lists(sx), scorer.lists(sy)))[0]
        if np.isfinite(value):
            reps.append(value)
    reps = np.array(reps)
    c = math.sqrt(m / (total - m))
    d = reps - reps.mean()
    lo, hi = est + c * np.quantile(d, [0.025, 0.975])
    raw_miss = max(lo - est, est - hi)
    low = min(max(lo, min(floor, est)), est)
    high = max(min(hi, max(ceiling, est)), est)
    on_bound = np.sum((np.abs(reps - floor) <= 1e-5) | (np.abs(reps - ceiling) <= 1e-5)) >= len(reps) / 2
    values, counts = np.unique(reps, return_counts=True)
    piled = any(cnt >= max(len(reps) / 2, 2) and abs(v - est) > 1e-5 for v, cnt in zip(values, counts))
    degenerate = bool(on_bound or raw_miss > 1e-5 or piled)
    return float(low), float(high), len(reps), degenerate
