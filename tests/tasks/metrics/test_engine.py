"""Errors of user metrics at the engine boundary (``tasks.metrics.engine``): a function that raises
or returns something that is not one number, an ``Engine`` subclass lacking a method."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import torch

import tasks.metrics as tm
from tasks.metrics import METRICS, Engine, MetricFunctionError, MissingEngineMethod, layer_matrix, register_metric

from .conftest import layers


@pytest.fixture
def name() -> Iterator[str]:
    """A fresh metric name, unregistered afterwards."""
    metric = f"test_engine_{uuid.uuid4().hex[:8]}"
    yield metric
    METRICS._specs.pop(metric, None)


def test_a_function_returning_a_vector_is_named_with_the_layer_pair(name: str) -> None:
    def per_sample(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x * y).sum(1)  # the user forgot .mean()

    register_metric(name, per_sample)
    xs, ys = layers(n=30, widths=(5, 5), seed=1), layers(n=30, widths=(5, 5, 5), seed=2)
    with pytest.raises(MetricFunctionError) as caught:
        layer_matrix(name, xs, ys)
    message = str(caught.value)
    assert f"metric {name!r}" in message and "per_sample" in message
    assert "returned a torch.Tensor of shape (30,)" in message and "layer pair (0, 0)" in message
    assert isinstance(caught.value, ValueError)  # a user's error: one line, as before
    # the cause is no ValueError: bootstrap_ci takes a user function's own ValueError for "the
    # metric is undefined on this subsample" and skips it; a vector is a bug that fails the pair
    assert isinstance(caught.value.__cause__, TypeError)


@pytest.mark.parametrize("returned, shown", [(None, "None (NoneType)"), (1 + 2j, "(1+2j) (complex)"),
                                             ("abc", "'abc' (str)")])
def test_other_values_that_are_not_one_number_are_shown(name: str, returned: object, shown: str) -> None:
    register_metric(name, lambda x, y: returned)
    with pytest.raises(MetricFunctionError, match=rf"metric {name!r}: its function .*<lambda> returned {re.escape(shown)}"):
        layer_matrix(name, layers(n=20, widths=(4,)), layers(n=20, widths=(4,), seed=3))


def test_an_error_raised_inside_a_function_names_the_metric_pair_and_line(name: str) -> None:
    calls = []

    def exploding(x: torch.Tensor, y: torch.Tensor) -> float:
        calls.append(1)
        if len(calls) == 4:
            raise KeyError("nope")
        return 0.0

    register_metric(name, exploding)
    with pytest.raises(MetricFunctionError) as caught:
        layer_matrix(name, layers(n=20, widths=(4, 4)), layers(n=20, widths=(4, 4), seed=3))
    message = str(caught.value)
    line = exploding.__code__.co_firstlineno + 3
    assert f"metric {name!r}: its function" in message and "exploding raised KeyError: 'nope'" in message
    assert f"at {__file__}:{line}" in message and "layer pair (1, 1)" in message
    assert isinstance(caught.value.__cause__, KeyError)


@pytest.mark.parametrize("how", ["torch", "numpy"])
def test_a_function_changing_its_inputs_changes_nothing_else(name: str, how: str) -> None:
    """The layers were shared with every metric, layer pair and the caller: ``x.mul_(2)`` changed
    the scores computed after it (a version-counter check then refused it, after the caller's
    array had changed), and ``x.numpy()`` centred in place went unseen and centred the caller's
    own numpy array. Each call now gets its own copies."""
    def centring(x: torch.Tensor, y: torch.Tensor) -> float:
        if how == "torch":
            x.sub_(x.mean(0))
            y.mul_(-3)
        else:
            xn, yn = x.numpy(), y.numpy()
            xn -= xn.mean(0)
            yn *= -3
        return float((x[:, 0] * y[:, 0]).mean())

    register_metric(name, centring)
    xs = [x + 5 for x in layers(n=20, widths=(4, 4))]
    ys = layers(n=20, widths=(4,), seed=3)
    given = [x.copy() for x in xs], [y.copy() for y in ys]
    want = np.array([[float(((x[:, 0] - x[:, 0].mean()) * -3 * y[:, 0]).mean()) for y in ys] for x in xs])
    for _ in range(2):  # and again: nothing of the first call stays
        np.testing.assert_allclose(layer_matrix(name, xs, ys), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer_matrix(name, [torch.from_numpy(x) for x in xs], ys), want, rtol=1e-5, atol=1e-6)
    for got, before in zip(xs + ys, given[0] + given[1]):
        assert np.array_equal(got, before)


def test_a_function_returning_numbers_still_gives_its_values(name: str) -> None:
    """The wrapped boundary computes what the function says: a float64 reference per pair."""
    register_metric(name, lambda x, y: (x[:, :2] * y[:, :2]).sum(1).mean(), symmetric=True)
    xs, ys = layers(n=25, widths=(6, 3), seed=4), layers(n=25, widths=(4,), seed=5)
    matrix = layer_matrix(name, xs, ys)
    reference = np.array([[float((np.asarray(x, np.float64)[:, :2] * np.asarray(y, np.float64)[:, :2]).sum(1).mean())
                           for y in ys] for x in xs])
    np.testing.assert_allclose(matrix, reference, rtol=1e-6, atol=1e-7)


class _NoPermute(Engine):
    """Mean cosine of paired rows; implements encode and matrix only."""

    def encode(self, rep, params):
        return [torch.nn.functional.normalize(x, dim=1) for x in rep.layers]

    def matrix(self, a, b, params):
        return torch.tensor([[float((x * y).sum(1).mean()) for y in b] for x in a], dtype=torch.float64)


def test_an_engine_without_permute_says_calibrate_needs_it(name: str) -> None:
    register_metric(name, engine=_NoPermute())
    xs = layers(n=30, widths=(4, 4))
    assert layer_matrix(name, xs, xs).shape == (2, 2)  # what it implements works
    with pytest.raises(MissingEngineMethod, match=rf"metric {name!r}: the Engine subclass _NoPermute does not "
                                                  r"implement permute\(state, perm, inv\): calibrate needs it"):
        tm.calibrate(name, xs, xs, permutations=9)
    assert issubclass(MissingEngineMethod, NotImplementedError)


def test_an_engine_without_matrix_is_named(name: str) -> None:
    class OnlyEncode(Engine):
        def encode(self, rep, params):
            return list(rep.layers)

    register_metric(name, engine=OnlyEncode())
    with pytest.raises(MissingEngineMethod, match=rf"metric {name!r}: .*OnlyEncode does not implement matrix\(a, b, params\)"):
        layer_matrix(name, layers(n=20, widths=(4,)), layers(n=20, widths=(4,)))
