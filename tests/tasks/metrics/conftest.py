"""Shared data for the metric tests: small random and structured paired features."""

from __future__ import annotations

import numpy as np

from .reference import normalize_rows


def paired(n: int = 40, dx: int = 12, dy: int = 9, noise: float = 0.5, seed: int = 0,
           normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``y`` is a noisy linear map of ``x`` (structured pair), float64, rows paired."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dx))
    y = x @ rng.normal(size=(dx, dy)) + noise * rng.normal(size=(n, dy))
    if normalize:
        x, y = normalize_rows(x), normalize_rows(y)
    return x, y


def layers(n: int = 40, widths: tuple[int, ...] = (12, 7, 16), seed: int = 0, noise: float = 0.5
           ) -> list[np.ndarray]:
    """Layers of one model with different widths, increasingly noisy copies of one signal."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 6))
    out = []
    for i, d in enumerate(widths):
        x = z @ rng.normal(size=(6, d)) + noise * (i + 1) * rng.normal(size=(n, d))
        out.append(normalize_rows(x))
    return out
