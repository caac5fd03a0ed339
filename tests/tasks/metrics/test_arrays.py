"""Input plumbing of ``tasks.metrics`` (``_arrays``): byte order, devices, nested Python lists.

Scores are checked against the independent float64 reference (``reference.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.metrics import Representation, layer_matrix, prepare, score
from tasks.metrics._arrays import is_nested_layer, resolve_device, split_layers, to_tensor

from . import reference as ref
from .conftest import layers, paired


# --- (a) numpy arrays in non-native byte order -------------------------------------------------

def _swapped(a: np.ndarray) -> np.ndarray:
    """``a`` with the same values in the other byte order (big-endian on x86/ARM)."""
    out = a.astype(a.dtype.newbyteorder("S"))
    assert not out.dtype.isnative and np.array_equal(out, a)
    return out


def test_non_native_byte_order_scores_like_native() -> None:
    """torch refused ``x.astype('>f8')`` ("byte order different from the native byte order");
    the value must be the float64 score (not a float32 one: the dtype check must see float64)."""
    x, y = paired(n=40, dx=12, dy=9)
    assert score("cka", _swapped(x), y) == pytest.approx(ref.cka(x, y), abs=1e-12)
    assert score("cka", x, _swapped(y)) == pytest.approx(ref.cka(x, y), abs=1e-12)
    assert score("mutual_knn", _swapped(x), _swapped(y), topk=5) == pytest.approx(ref.mutual_knn(x, y, 5), abs=1e-12)


def test_non_native_byte_order_in_layer_lists_and_stacks() -> None:
    xs = layers(n=40, widths=(12, 7))
    ys = layers(n=40, widths=(5,), seed=1)
    expected = np.array([[ref.cka(a, b) for b in ys] for a in xs])
    np.testing.assert_allclose(layer_matrix("cka", [_swapped(a) for a in xs], ys), expected, atol=1e-12)
    stack = _swapped(np.stack([xs[0], xs[0][:, ::-1]]))  # (2, N, 12) big-endian
    expected = np.array([[ref.cka(a, ys[0])] for a in (xs[0], xs[0][:, ::-1])])
    np.testing.assert_allclose(layer_matrix("cka", stack, ys), expected, atol=1e-12)


def test_non_native_byte_order_float32_computes_in_float32() -> None:
    x, _ = paired()
    t = to_tensor(_swapped(x.astype(np.float32)))
    assert t.dtype == torch.float32 and torch.equal(t, torch.from_numpy(x.astype(np.float32)))
    assert all(layer.dtype.isnative for layer in split_layers([_swapped(x), _swapped(x[:, :3])]))


def test_prepare_non_native_byte_order() -> None:
    x, _ = paired(normalize=False)
    got = prepare(_swapped(x), q=0.9)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_allclose(got, ref.prepare(x, q=0.9), atol=1e-12)
    out = prepare([_swapped(x), x[:, :5]], q=0.9)
    np.testing.assert_allclose(out[0], ref.prepare(x, q=0.9), atol=1e-12)
    np.testing.assert_allclose(out[1], ref.prepare(x[:, :5], q=0.9), atol=1e-12)


# --- (b) a device this machine does not have ----------------------------------------------------

@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend this machine has no CUDA (also on a GPU machine)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
def test_unavailable_cuda_is_a_value_error(no_cuda: None, device: object) -> None:
    """It was torch's ``AssertionError: Torch not compiled with CUDA enabled``."""
    x, y = paired()
    with pytest.raises(ValueError, match=r"^device .*cuda.* is not available here: .*no usable CUDA GPU"):
        score("cka", x, y, device=device)
    with pytest.raises(ValueError, match=r"^device .*cuda.* is not available here"):
        layer_matrix("mutual_knn", [x], [y], device=device, topk=5)
    with pytest.raises(ValueError, match=r"^device .*cuda.* is not available here"):
        Representation(x, device=device)


def test_cuda_index_past_the_devices_is_a_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"^device 'cuda:3' is not available here: this machine has 2 CUDA"):
        resolve_device("cuda:3")


def test_unavailable_mps_is_a_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    x, y = paired()
    with pytest.raises(ValueError, match=r"^device 'mps' is not available here: .*MPS"):
        score("cka", x, y, device="mps")


def test_real_machine_cuda_without_gpu() -> None:
    """No patching: on a machine without CUDA the plain call is the same ``ValueError``."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    x, y = paired()
    with pytest.raises(ValueError, match=r"^device 'cuda' is not available here"):
        score("cka", x, y, device="cuda")


def test_cpu_device_and_bad_strings_unchanged() -> None:
    x, y = paired()
    assert score("cka", x, y, device="cpu") == pytest.approx(ref.cka(x, y), abs=1e-12)
    assert resolve_device(None, torch.from_numpy(x)) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"device must be a torch device such as 'cpu' or 'cuda:0', got 'tpu'"):
        resolve_device("tpu")


# --- (c) one layer as nested Python lists --------------------------------------------------------

def test_prepare_one_nested_list_layer_is_one_numpy_layer() -> None:
    """``prepare(x.tolist())`` returned ``[tensor]`` (its rows read as a list of one layer)."""
    x, y = paired(normalize=False)
    got = prepare(x.tolist(), q=0.9)
    assert isinstance(got, np.ndarray) and got.shape == x.shape and got.dtype == np.float64
    np.testing.assert_allclose(got, ref.prepare(x, q=0.9), atol=1e-12)
    as_tuples = prepare(tuple(tuple(row) for row in x.tolist()), q=0.9)
    np.testing.assert_array_equal(as_tuples, got)
    assert score("cka", prepare(x.tolist()), y) == pytest.approx(ref.cka(ref.prepare(x), y), abs=1e-12)


def test_prepare_nested_list_layer_inside_a_list_comes_back_numpy() -> None:
    x, _ = paired(normalize=False)
    out = prepare([x.tolist(), torch.from_numpy(x[:, :4]), x[:, 4:]], q=0.9)
    assert [type(o) for o in out] == [np.ndarray, torch.Tensor, np.ndarray]
    for got, layer in zip(out, (x, x[:, :4], x[:, 4:])):
        np.testing.assert_allclose(np.asarray(got), ref.prepare(layer, q=0.9), atol=1e-12)


def test_nested_layer_rule_matches_split_layers() -> None:
    x, _ = paired()
    assert is_nested_layer(x.tolist()) and len(split_layers(x.tolist())) == 1
    assert not is_nested_layer([x.tolist(), x.tolist()]) and len(split_layers([x.tolist(), x.tolist()])) == 2
    assert not is_nested_layer([x, x]) and not is_nested_layer([]) and not is_nested_layer(x)
    with pytest.raises(ValueError, match="nested lists that do not form an array"):
        prepare([[1.0, 2.0], [3.0]])


# --- (d) the documented exception to "entry [i, j] equals score(xs[i], ys[j])" -------------------

def test_mixed_dtype_side_computes_every_pair_in_float64() -> None:
    """docs/metrics.md: when any layer is float64 every pair is computed in float64, so an entry of
    two float32 layers is their float64 score; the float64 layer's entry is its score."""
    rng = np.random.default_rng(15)
    x32 = rng.normal(size=(60, 16)).astype(np.float32)
    y32 = (x32[:, :8] + rng.normal(size=(60, 8))).astype(np.float32)
    x64 = rng.normal(size=(60, 3))
    x32d, y32d = x32.astype(np.float64), y32.astype(np.float64)
    a = layer_matrix("cka", [x32, x64], [y32])  # the float64 layer on the x side
    b = layer_matrix("cka", [x32], [y32, x64])  # on the y side: the pair (x32, y32) again
    for entry in (a[0, 0], b[0, 0]):
        assert entry == pytest.approx(ref.cka(x32d, y32d), abs=1e-12)
        assert entry == pytest.approx(score("cka", x32d, y32d), abs=1e-12)
    assert a[1, 0] == pytest.approx(ref.cka(x64, y32d), abs=1e-12)
    assert a[1, 0] == pytest.approx(score("cka", x64, y32), abs=1e-12)
    assert b[0, 1] == pytest.approx(score("cka", x32, x64), abs=1e-12)
    assert layer_matrix("cka", [x32], [y32])[0, 0] == pytest.approx(score("cka", x32, y32), abs=1e-12)


# --- (d) tensors on the meta device -------------------------------------------------------------

def test_meta_tensors_are_a_value_error_naming_the_side() -> None:
    """A tensor on the meta device (shapes only) raised torch's bare ``NotImplementedError``
    ("Cannot copy out of meta tensor; no data!") in ``score`` and a ``RuntimeError``
    ("Tensor.item() cannot be called on meta tensors") in ``prepare``; ``device='meta'`` was
    already refused."""
    x = torch.from_numpy(paired(n=12, dx=4, dy=3)[0])
    meta = torch.empty(12, 3, device="meta")
    message = r"a tensor on the meta device \(shape \(12, 3\)\) holds shapes, not values"
    with pytest.raises(ValueError, match="^y: " + message):
        score("cka", x, meta)
    with pytest.raises(ValueError, match="^x: " + message):
        layer_matrix("mutual_knn", [meta], [x], topk=3)
    with pytest.raises(ValueError, match="^" + message):
        prepare(meta)
    with pytest.raises(ValueError, match="^" + message):
        to_tensor(meta)


# --- (e) buffers, dtypes torch has no counterpart for, and text -----------------------------------

def test_a_memoryview_is_read_as_the_array_it_views() -> None:
    """``score``/``layer_matrix``/``calibrate`` raised the buffer's own ``NotImplementedError``
    ("multi-dimensional sub-views are not implemented": a memoryview is a ``Sequence`` and was
    iterated as a list of layers) while ``prepare`` already read it as the array it views."""
    from tasks.metrics import bootstrap_ci, calibrate, with_concatenated

    x, y = paired(n=30, dx=6, dy=5)
    expected = score("cka", x, y)
    assert score("cka", memoryview(x), y) == expected
    # the second layer of the stack sits at another alignment in memory: BLAS may round its last bit otherwise
    stacked = layer_matrix("cka", memoryview(np.stack([x, x])), memoryview(y))
    assert stacked.shape == (2, 1) and stacked.ravel() == pytest.approx([expected, expected], rel=1e-12)
    assert calibrate("cka", memoryview(x), y, permutations=3, seed=1).null.tolist() == \
        calibrate("cka", x, y, permutations=3, seed=1).null.tolist()
    assert bootstrap_ci("cka", x, memoryview(y), n_boot=3).low == bootstrap_ci("cka", x, y, n_boot=3).low
    assert Representation(memoryview(x)).n == 30 and len(with_concatenated(memoryview(x))) == 2
    with pytest.raises(ValueError, match=r"^x: expected \(N, D\) or \(L, N, D\) features, got shape \(30,\)"):
        layer_matrix("cka", memoryview(x[:, 0].copy()), y)


def test_prepare_returns_numpy_for_a_memoryview_as_for_the_array_it_views() -> None:
    """``prepare`` keeps the container kind: plain buffers come back as numpy (a memoryview
    returned a torch tensor, unlike the numpy array it views)."""
    x, _ = paired(n=20, dx=4, dy=3)
    for given in (memoryview(x), [memoryview(x)]):
        out = prepare(given)
        got = out[0] if isinstance(out, list) else out
        assert isinstance(got, np.ndarray) and np.array_equal(got, prepare(x))


class Frame:
    """An array-like that is no numpy array (as a pandas DataFrame): it gives its values through
    ``__array__``."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self.values if dtype is None else self.values.astype(dtype)


def test_an_array_like_is_read_as_the_array_it_holds() -> None:
    """``prepare`` of a pandas-style array-like had been refused as an "unsupported feature
    container" (the guard against strings); ``score`` and ``layer_matrix`` take it too."""
    x, y = paired(n=20, dx=4, dy=3)
    out = prepare(Frame(x))
    assert isinstance(out, np.ndarray) and np.array_equal(out, prepare(x))
    assert np.array_equal(prepare([Frame(x)])[0], prepare([x])[0])
    assert score("cka", Frame(x), Frame(y)) == score("cka", x, y)
    assert layer_matrix("cka", [Frame(x)], Frame(y)).tolist() == layer_matrix("cka", [x], y).tolist()


_LONG = np.dtype(np.longdouble)
BAD_DTYPES = {
    "longdouble": (lambda x: x.astype(np.longdouble),
                   rf"features of dtype {_LONG.name} \(np.longdouble\): torch has no {8 * _LONG.itemsize}-bit float; "
                   r"convert them first, e\.g\. x\.astype\(np\.float64\)"),
    "object": (lambda x: x.astype(object), r"features of dtype object \(Python objects\)"),
    "text": (lambda x: x.astype(str), r"features of dtype <U\d+ \(text\): the metrics need numbers"),
    "datetime": (lambda x: x.astype("datetime64[s]"), r"features of dtype datetime64\[s\] \(dates or durations\)"),
    "void": (lambda x: x.view("V8"), r"features of dtype \|V8 \(raw bytes or records\)"),
}


@pytest.mark.skipif(_LONG.itemsize <= 8, reason="np.longdouble is float64 on this platform")
@pytest.mark.parametrize("kind", list(BAD_DTYPES))
def test_dtypes_torch_cannot_hold_are_a_type_error_naming_the_input(kind: str) -> None:
    """A float128 (``np.longdouble``), object, text, datetime or raw-bytes array got torch's "can't
    convert np.ndarray of type numpy.longdouble. The only supported types are: ..." from every
    public function; the message now names the side (and the layer of a list), the dtype and what
    to do."""
    from tasks.metrics import bootstrap_ci, calibrate, with_concatenated

    convert, message = BAD_DTYPES[kind]
    x, y = paired(n=16, dx=4, dy=3)
    bad = convert(x)
    with pytest.raises(TypeError, match="^x: " + message):
        score("cka", bad, y)
    with pytest.raises(TypeError, match="^y: layer 1: " + message):
        layer_matrix("cka", [x], [y, bad])
    with pytest.raises(TypeError, match="^x: " + message):
        layer_matrix("cka", np.stack([bad, bad]), y)
    with pytest.raises(TypeError, match="^x: " + message):
        calibrate("cka", bad, y, permutations=3)
    with pytest.raises(TypeError, match="^y: " + message):
        bootstrap_ci("cka", x, bad, n_boot=3)
    for call in (prepare, Representation, with_concatenated, to_tensor):
        with pytest.raises(TypeError, match="^" + message):
            call(bad)
    with pytest.raises(TypeError, match="^layer 0: " + message):
        prepare([bad, x])


@pytest.mark.parametrize("given, name", [("abc", "str"), (b"abc", "bytes"), (None, "NoneType"), ({"a": 1}, "dict"),
                                         ({1, 2}, "set"), (iter([[1.0, 2.0]]), "list_iterator")])
def test_prepare_of_no_feature_container_is_a_value_error_like_score(given: object, name: str) -> None:
    """``prepare("abc")`` raised torch's "can't convert np.ndarray of type numpy.str_" (and a dict,
    a set, ``None`` "... numpy.object_"): numpy read them as 0-d arrays. It now refuses them as
    ``score`` and ``layer_matrix`` do."""
    message = rf"^unsupported feature container: {name}; expected \(N, D\) or \(L, N, D\) arrays/tensors"
    with pytest.raises(ValueError, match=message):
        prepare(given)
    with pytest.raises(ValueError, match="^x: " + message[1:]):
        score("cka", given, paired(n=8, dx=3, dy=3)[1])


@pytest.mark.parametrize("given", [np.float64(2.0), np.array(2.0), Frame(np.array(2.0)), np.float32(1.5)],
                         ids=["numpy scalar", "0-d array", "0-d array-like", "float32 scalar"])
def test_prepare_of_a_scalar_names_its_own_shape(given: object) -> None:
    """A numpy scalar or a 0-d array (or array-like, read through ``__array__`` since the
    array-like change) is refused naming its shape ``()``: the conversion to a tensor makes a 0-d
    array 1-d (``np.ascontiguousarray``), and the message had said "got shape (1,)", a shape the
    caller never gave. ``layer_matrix`` says ``()`` alike."""
    with pytest.raises(ValueError, match=r"^expected \(N, D\) or \(L, N, D\), got shape \(\)$"):
        prepare(given)
    with pytest.raises(ValueError, match=r"^x: expected \(N, D\) or \(L, N, D\) features, got shape \(\)$"):
        layer_matrix("cka", given, paired(n=8, dx=3, dy=3)[1])


# --- (f) sparse features --------------------------------------------------------------------------

def _sparse_pair() -> tuple[np.ndarray, np.ndarray]:
    """A float64 pair whose x is mostly zeros (as bag-of-words or pruned activations are)."""
    x, y = paired(n=24, dx=10, dy=7)
    x = np.where(np.abs(x) < np.quantile(np.abs(x), 0.6), 0.0, x)  # 60% zeros
    return x, y


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("layout", ["coo", "csr", "csc"])
def test_torch_sparse_features_score_as_their_dense_values(layout: str) -> None:
    """Torch sparse tensors failed inside torch (``NotImplementedError`` for 'aten::aminmax' on
    SparseCPU; "Sparse CSR tensors do not have is_contiguous"); they are the dense features they
    stand for."""
    from tasks.metrics import calibrate

    x, y = _sparse_pair()
    dense = torch.from_numpy(x)
    sparse = {"coo": dense.to_sparse, "csr": dense.to_sparse_csr, "csc": dense.to_sparse_csc}[layout]()
    assert score("cka", sparse, y) == pytest.approx(ref.cka(x, y), rel=1e-10)
    assert score("mutual_knn", sparse, y, topk=4) == pytest.approx(ref.mutual_knn(x, y, 4), abs=1e-12)
    stack = [sparse, sparse] if layout != "coo" else torch.stack([dense, dense]).to_sparse()  # (2, N, D) COO
    assert layer_matrix("cka", stack, y).ravel() == pytest.approx([ref.cka(x, y)] * 2, rel=1e-10)
    assert calibrate("cka", sparse, y, permutations=3, seed=2).null.tolist() == \
        pytest.approx(calibrate("cka", x, y, permutations=3, seed=2).null.tolist(), rel=1e-12)
    prepared = prepare(sparse)
    assert isinstance(prepared, torch.Tensor) and prepared.layout == torch.strided
    assert prepared.numpy() == pytest.approx(ref.prepare(x), abs=1e-12)


def test_scipy_sparse_features_score_as_their_dense_values() -> None:
    """A SciPy sparse matrix was refused as an "unsupported feature container" by ``score`` and
    as "features of dtype object" in a list of layers."""
    sparse = pytest.importorskip("scipy.sparse")
    x, y = _sparse_pair()
    for given in (sparse.csr_matrix(x), sparse.coo_array(x)):
        assert score("cka", given, y) == pytest.approx(ref.cka(x, y), rel=1e-10)
        assert layer_matrix("mutual_knn", [given, x], y, topk=4).ravel() == \
            pytest.approx([ref.mutual_knn(x, y, 4)] * 2, abs=1e-12)
        prepared = prepare(given)
        assert isinstance(prepared, np.ndarray) and prepared == pytest.approx(ref.prepare(x), abs=1e-12)
