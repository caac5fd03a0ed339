"""The pipeline's preprocessing of a model's layers (tasks.alignment.prepare_layers) against the
paper's measure_alignment.py written out in numpy: one clamp threshold per model for an
(N, L, D) tensor, one per layer for layers of different widths, or one per layer when asked."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.alignment import prepare_layers


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _approx_threshold(values: np.ndarray, q: float) -> float:
    """Mean over samples (rows) of each row's linearly interpolated q-quantile of |values|."""
    return float(np.quantile(np.abs(values), q, axis=1).mean())


def _exact_threshold(values: np.ndarray, q: float) -> float:
    flat = np.sort(np.abs(values).ravel())
    return float(flat[int(q * flat.size)])


@pytest.fixture
def layers() -> list[np.ndarray]:
    """Three layers of one width whose scale grows with depth (as a residual stream's does)."""
    rng = np.random.default_rng(0)
    return [(scale * rng.standard_normal((50, 16))).astype(np.float32) for scale in (0.1, 1.0, 10.0)]


@pytest.mark.parametrize("exact", [False, True])
def test_one_threshold_for_a_model_of_one_width(layers, exact):
    pooled = np.concatenate([x.astype(np.float64) for x in layers], axis=1)  # each sample's values over every layer
    t = (_exact_threshold if exact else _approx_threshold)(pooled, 0.9)
    expected = [_normalise(np.clip(x.astype(np.float64), -t, t)) for x in layers]
    got = prepare_layers(layers, q=0.9, exact=exact)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    per_layer = prepare_layers(layers, q=0.9, scope="layer", exact=exact)
    assert not np.allclose(per_layer[2], got[2], atol=1e-3)  # the deep layer is clamped far harder by the shared threshold
    np.testing.assert_allclose(got[0], _normalise(layers[0].astype(np.float64)), rtol=1e-5, atol=1e-6)  # the small layer is left as it was


def test_layers_of_different_widths_or_scope_layer_get_one_threshold_each(layers):
    ragged = [layers[0], layers[1][:, :8], layers[2]]
    for given, scope in ((ragged, "model"), (layers, "layer")):
        got = prepare_layers(given, q=0.9, scope=scope)
        for g, x in zip(got, given):
            t = _approx_threshold(x.astype(np.float64), 0.9)
            np.testing.assert_allclose(g, _normalise(np.clip(x.astype(np.float64), -t, t)), rtol=1e-5, atol=1e-6)


def test_one_layer_and_no_clamp(layers):
    np.testing.assert_allclose(prepare_layers(layers[:1], q=0.9)[0], prepare_layers(layers[:1], q=0.9, scope="layer")[0])
    np.testing.assert_allclose(prepare_layers(layers, q=1.0)[2], _normalise(layers[2].astype(np.float64)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="outlier scope must be 'model' or 'layer'"):
        prepare_layers(layers, scope="sample")


@pytest.mark.parametrize("exact", [False, True])
def test_a_threshold_from_some_layers_clamps_every_layer(layers, exact):
    """A ViT's embedding output (layer 0) is not among the layers the paper's extraction stores:
    the model's one threshold comes from its blocks only and clamps the embedding layer too."""
    blocks = np.concatenate([x.astype(np.float64) for x in layers[1:]], axis=1)
    t = (_exact_threshold if exact else _approx_threshold)(blocks, 0.9)
    expected = [_normalise(np.clip(x.astype(np.float64), -t, t)) for x in layers]
    got = prepare_layers(layers, q=0.9, exact=exact, threshold_from=[1, 2])
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got[2], prepare_layers(layers, q=0.9, exact=exact)[2], atol=1e-3)  # all three set another threshold
    np.testing.assert_allclose(prepare_layers(layers, q=0.9, exact=exact, threshold_from=[0, 1, 2])[2],
                               prepare_layers(layers, q=0.9, exact=exact)[2])
    with pytest.raises(ValueError, match="threshold_from must name some of the 3 layers"):
        prepare_layers(layers, threshold_from=[3])


def test_vision_thresholds_leave_out_the_embedding_output():
    from tasks.alignment import threshold_layers

    assert threshold_layers("vision", 13) == list(range(1, 13))
    assert threshold_layers("language", 13) is None and threshold_layers("vision", 1) is None


def test_no_clamp_at_q_1_also_when_the_threshold_comes_from_some_layers(layers):
    """``q == 1`` disables the clamp (``metrics.prepare``): with ``threshold_from`` naming only the
    small layers, the large layer is still left whole, each layer only L2-normalised."""
    got = prepare_layers(layers, q=1.0, threshold_from=[0, 1])
    for g, x in zip(got, layers):
        np.testing.assert_allclose(g, _normalise(x.astype(np.float64)), rtol=1e-5, atol=1e-6)
