"""Nearest-neighbour examples: for a few samples, the k nearest neighbours under two models.

Similarity is the cosine of L2-normalised vectors (the inner product the k-NN metrics use, here
without the outlier clamp), the sample itself excluded. The examples shown are the samples whose
two neighbour lists share the most and the fewest members, so that both agreement and
disagreement are on the page.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Neighbour:
    """One neighbour: its id, cosine similarity to the query, and whether the other model's
    k nearest neighbours of the same query contain it too."""

    sample_id: str
    similarity: float
    shared: bool


@dataclass(frozen=True)
class Example:
    """A query sample and its neighbours under model A and under model B."""

    sample_id: str
    neighbours_a: list[Neighbour]
    neighbours_b: list[Neighbour]

    @property
    def overlap(self) -> int:
        return sum(n.shared for n in self.neighbours_a)


@dataclass(frozen=True)
class Sample:
    """What the page shows of a sample: its caption and encoded image bytes (None: no image)."""

    text: str
    image: bytes | None


@dataclass(frozen=True)
class NeighbourExamples:
    """Examples for one model pair at its best layers (names ``layer_a``/``layer_b``).

    ``mean_overlap``: mean share of shared neighbours over ``n_queries`` evaluated queries (about
    the mutual k-NN score at this k); ``samples``: id → caption and image of every sample shown.
    """

    model_a: str
    model_b: str
    layer_a: str
    layer_b: str
    k: int
    n_samples: int
    n_queries: int
    mean_overlap: float
    examples: list[Example]
    samples: dict[str, Sample] = field(default_factory=dict)
    unit: str = "sample"  # "image": rows are images, each the mean of its captions' rows (alignment.unit)

    def sample_ids(self) -> list[str]:
        """Every id the examples show (queries and neighbours), in first-seen order."""
        seen: dict[str, None] = {}
        for e in self.examples:
            seen[e.sample_id] = None
            for n in e.neighbours_a + e.neighbours_b:
                seen[n.sample_id] = None
        return list(seen)


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32; zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def nearest(x: np.ndarray, queries: np.ndarray, k: int, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities ``(Q, k)`` of each query row's k nearest rows of ``x``.

    ``x`` must be L2-normalised; the query itself is excluded; ties go to the lower index (also
    at the k-th place: of rows tied there, the lowest indices are taken). Work is done ``block``
    queries at a time, so memory is ``block × N``, never ``N × N``; the selection is ``O(N)`` per
    query (a partition for the k-th similarity, then every row above it and the lowest tied ones).
    """
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k={k} needs 1 <= k < N={n}")
    indices = np.empty((len(queries), k), dtype=np.int64)
    similarities = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), block):
        rows = np.asarray(queries[start : start + block])
        sims = x[rows] @ x.T
        sims[np.isnan(sims)] = -np.inf  # a NaN compares with nothing: it would leave a row short of k
        sims[np.arange(len(rows)), rows] = -np.inf
        kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]  # (B,) the k-th largest similarity of each query
        for r in range(len(rows)):
            chosen = _top_k(sims[r], kth[r], k)
            indices[start + r] = chosen
            similarities[start + r] = sims[r, chosen]
    return indices, similarities


def _top_k(sims: np.ndarray, kth: float, k: int) -> np.ndarray:
    """The k indices of the largest ``sims`` ``(N,)``, given the k-th largest value ``kth``: every
    index above it, then the lowest tied at it; ordered by similarity, then index."""
    above = np.flatnonzero(sims > kth)
    tied = np.flatnonzero(sims == kth)[: k - above.size]
    chosen = np.concatenate([above, tied])
    return chosen[np.lexsort((chosen, -sims[chosen]))]


def select_examples(
    sample_ids: list[str],
    xa: np.ndarray,
    xb: np.ndarray,
    names: tuple[str, str, str, str],
    k: int = 5,
    n_examples: int = 4,
    max_queries: int = 2048,
    seed: int = 0,
) -> NeighbourExamples:
    """Pick ``n_examples`` samples (half with the most shared neighbours, half with the fewest).

    ``xa``/``xb``: ``(N, D)`` features of the two models, rows paired with ``sample_ids``;
    ``names``: (model A, model B, layer name A, layer name B). With more than ``max_queries``
    samples the overlap is evaluated on a seeded subset of queries (neighbours are still searched
    among all samples).
    """
    n = len(sample_ids)
    if xa.shape[0] != n or xb.shape[0] != n:
        raise ValueError(f"features have {xa.shape[0]} and {xb.shape[0]} rows for {n} samples")
    k = min(k, n - 1)
    xa, xb = normalise(xa), normalise(xb)
    queries = np.arange(n) if n <= max_queries else np.sort(np.random.default_rng(seed).choice(n, max_queries, replace=False))
    idx_a, sim_a = nearest(xa, queries, k)
    idx_b, sim_b = nearest(xb, queries, k)
    overlap = np.array([len(set(a) & set(b)) for a, b in zip(idx_a, idx_b)])
    top = sorted(range(len(queries)), key=lambda q: (-overlap[q], q))[: (n_examples + 1) // 2]
    fewest = sorted(range(len(queries)), key=lambda q: (overlap[q], q))
    chosen = top + [q for q in fewest if q not in top][: n_examples - len(top)]
    examples = []
    for q in chosen:
        set_a, set_b = set(idx_a[q]), set(idx_b[q])
        examples.append(Example(
            sample_ids[queries[q]],
            [Neighbour(sample_ids[j], float(s), j in set_b) for j, s in zip(idx_a[q], sim_a[q])],
            [Neighbour(sample_ids[j], float(s), j in set_a) for j, s in zip(idx_b[q], sim_b[q])],
        ))
    model_a, model_b, layer_a, layer_b = names
    return NeighbourExamples(model_a, model_b, layer_a, layer_b, k, n, len(queries), float(overlap.mean() / k), examples)
