"""Independent float64 reference implementations, written from the definitions with plain numpy
and Python loops. They share no code with ``tasks.metrics``; tests compare the engine to them."""

from __future__ import annotations

import itertools

import numpy as np


def normalize_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_lists(x: np.ndarray, k: int, exclude_self: bool = True) -> np.ndarray:
    """(N, k) neighbour indices by inner product, decreasing, self excluded."""
    g = x @ x.T
    out = []
    for i in range(len(x)):
        row = g[i].copy()
        if exclude_self:
            row[i] = -np.inf
        order = sorted(range(len(x)), key=lambda j: -row[j])
        out.append(order[:k])
    return np.array(out)


def mutual_knn(x, y, k):
    a, b = knn_lists(x, k), knn_lists(y, k)
    return float(np.mean([len(set(a[i]) & set(b[i])) / k for i in range(len(x))]))


def jaccard_knn(x, y, k):
    a, b = knn_lists(x, k), knn_lists(y, k)
    return float(np.mean([len(set(a[i]) & set(b[i])) / len(set(a[i]) | set(b[i]))
                          for i in range(len(x))]))


def cycle_knn(x, y, k):
    a, b = knn_lists(x, k), knn_lists(y, k)
    return float(np.mean([any(i in a[j] for j in b[i]) for i in range(len(x))]))


def lcs(s, t):
    dp = [[0] * (len(t) + 1) for _ in range(len(s) + 1)]
    for i in range(1, len(s) + 1):
        for j in range(1, len(t) + 1):
            dp[i][j] = dp[i - 1][j - 1] + 1 if s[i - 1] == t[j - 1] else max(dp[i - 1][j], dp[i][j - 1])
    return dp[-1][-1]


def levenshtein(s, t):
    d = list(range(len(t) + 1))
    for i in range(1, len(s) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(t) + 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (s[i - 1] != t[j - 1]))
            prev, d[j] = d[j], cur
    return d[-1]


def lcs_knn(x, y, k):
    a, b = knn_lists(x, k), knn_lists(y, k)
    return float(np.mean([lcs(list(a[i]), list(b[i])) for i in range(len(x))]))


def edit_distance_knn(x, y, k):
    a, b = knn_lists(x, k), knn_lists(y, k)
    return 1.0 - float(np.mean([levenshtein(list(a[i]), list(b[i])) for i in range(len(x))])) / k


def linear_kernel(x):
    return x @ x.T


def rbf_kernel(x, sigma, minus_one=False):
    """``exp(-|x_i - x_j|^2 / (2 sigma^2))``; with ``minus_one`` that minus 1 (``expm1``: all its
    digits where the kernel is close to 1; both HSICs ignore the constant)."""
    n = len(x)
    d2 = np.array([[np.sum((x[i] - x[j]) ** 2) for j in range(n)] for i in range(n)])
    return (np.expm1 if minus_one else np.exp)(-d2 / (2 * sigma ** 2))


def hsic_biased(k, l):
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l @ h))


def hsic_unbiased(k, l):
    """Song et al. 2012 eq. 5, for general (possibly non-symmetric) kernels."""
    m = len(k)
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    val = (np.sum(kt * lt.T) + kt.sum() * lt.sum() / ((m - 1) * (m - 2))
           - 2 * np.sum(kt @ lt) / (m - 2))
    return float(val / (m * (m - 3)))


def hsic_u_statistic(k, l):
    """Unbiased HSIC as the U-statistic over ordered distinct 4-tuples (symmetric kernels)."""
    m = len(k)
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(m), 4):
        total += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
        count += 1
    return total / count


def cka(x, y, kernel="ip", sigma=1.0, unbiased=False, minus_one=False):
    if kernel == "ip":
        k, l = linear_kernel(x), linear_kernel(y)
    else:
        k, l = rbf_kernel(x, sigma, minus_one), rbf_kernel(y, sigma, minus_one)
    h = hsic_unbiased if unbiased else hsic_biased
    return h(k, l) / (np.sqrt(h(k, k) * h(l, l)) + 1e-6)


def knn_mask(kernel, k, exclude_self):
    n = len(kernel)
    mask = np.zeros((n, n))
    for i in range(n):
        row = kernel[i].copy()
        if exclude_self:
            row[i] = -np.inf
        for j in sorted(range(n), key=lambda j: -row[j])[:k]:
            mask[i, j] = 1.0
    return mask


def cknna(x, y, k, unbiased=True, distance_agnostic=False):
    kx, ly = linear_kernel(x), linear_kernel(y)
    h = hsic_unbiased if unbiased else hsic_biased

    def sim(a, b):
        mask = knn_mask(a, k, unbiased) * knn_mask(b, k, unbiased)
        if distance_agnostic:
            return h(mask, mask)
        return h(mask * a, mask * b)

    return sim(kx, ly) / (np.sqrt(sim(kx, kx) * sim(ly, ly)) + 1e-6)


def prepare(x, q=0.95, exact=False, normalize=True):
    """Clamp at the paper's threshold for an (N, D) layer, then L2 rows."""
    a = np.abs(x)
    if q < 1:
        if exact:
            t = np.sort(a.ravel())[int(q * a.size)]
        else:
            t = np.mean([np.quantile(a[i], q) for i in range(len(a))])
        x = np.clip(x, -t, t)
    return normalize_rows(x) if normalize else x


def svcca(x, y, cca_dim):
    """Standardise, top-cca_dim left singular vectors, CCA by whitening, mean correlation."""
    def top_u(z):
        z = z - z.mean(0)
        z = z / (z.std(0, ddof=1) + 1e-8)
        u, s, _ = np.linalg.svd(z, full_matrices=False)
        return u[:, :cca_dim]

    u1, u2 = top_u(x), top_u(y)

    def inv_sqrt(c):
        w, v = np.linalg.eigh(c)
        return v @ np.diag(w ** -0.5) @ v.T

    c11, c22, c12 = u1.T @ u1, u2.T @ u2, u1.T @ u2
    t = inv_sqrt(c11) @ c12 @ inv_sqrt(c22)
    return float(np.mean(np.linalg.svd(t, compute_uv=False)))
