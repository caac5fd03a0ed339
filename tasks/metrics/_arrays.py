"""Array plumbing shared by the engine: numpy/torch conversion, devices, dtypes, layer lists.

Nothing here computes a metric. The rules, used everywhere in ``tasks.metrics``:

- inputs may be numpy arrays or torch tensors; they are converted without copying when possible;
  a layer may also be nested Python lists of numbers (``from_nested``: float64, as numpy reads
  them); complex inputs are refused (``TypeError``: the metrics are defined on real features,
  and dropping the imaginary part silently would score something else), and so are numpy dtypes
  torch has no counterpart for (``check_numeric``: ``np.longdouble``, object, text, dates, raw
  bytes: ``TypeError`` naming the dtype); numpy arrays in non-native byte order
  (``x.astype('>f8')`` on a little-endian machine) are converted to native order (a copy: torch
  takes native order only) and scored like any other; a ``memoryview`` is read as the array it
  views (``np.asarray``); sparse inputs (torch sparse layouts, SciPy sparse matrices) are scored
  as the dense arrays they stand for (``densify``);
- the computation dtype is float64 when the input is float64 and float32 otherwise (float16 and
  bfloat16 inputs are upcast: neighbour counts and kernel sums are never accumulated in half
  precision); a float32 side scored against a float64 side is computed in float64;
- the device is the ``device=`` argument when given, else ``cuda`` when any input tensor lives on
  a CUDA device, else ``cpu``; a ``device=`` this machine does not have (``'cuda'`` without a usable
  GPU, ``'cuda:3'`` with 2 GPUs, ``'mps'`` off Apple silicon) is a ``ValueError`` naming it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]


def check_real(x: object) -> None:
    """Raise ``TypeError`` when ``x`` (numpy array or torch tensor) holds complex numbers, or is
    a numpy masked array with masked entries (converting it drops the mask: the hidden values
    would be scored)."""
    if isinstance(x, np.ma.MaskedArray) and np.ma.getmaskarray(x).any():
        raise TypeError(f"a masked array with {int(np.ma.getmaskarray(x).sum())} masked value(s): the metrics would "
                        "read the values under the mask; drop those rows (or fill them) first")
    dtype = getattr(x, "dtype", None)
    if isinstance(x, torch.Tensor) and x.is_complex() or isinstance(x, np.ndarray) and np.iscomplexobj(x):
        raise TypeError(f"complex features (dtype {dtype}) are not supported: the metrics are defined on "
                        "real features; pass the part you mean explicitly (x.real, abs(x), or both "
                        "concatenated as columns)")


#: numpy dtypes torch converts (``torch.from_numpy``); complex ones are refused by ``check_real``
TORCH_NUMPY_DTYPES = frozenset(np.dtype(t) for t in (
    np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64,
    np.float16, np.float32, np.float64, np.complex64, np.complex128))

#: numpy dtype kind -> what such features hold and what to do (``check_numeric``)
_NOT_NUMERIC = {
    "O": "Python objects): convert them to a numeric array first, e.g. np.asarray(x, dtype=np.float64) "
         "(rows of different lengths cannot form one)",
    "U": "text): the metrics need numbers; pass the features, not their labels or file names",
    "S": "text): the metrics need numbers; pass the features, not their labels or file names",
    "M": "dates or durations): the metrics need feature values; convert them first, e.g. x.astype(np.float64)",
    "m": "dates or durations): the metrics need feature values; convert them first, e.g. x.astype(np.float64)",
    "V": "raw bytes or records): the metrics need one numeric column per feature, e.g. "
         "numpy.lib.recfunctions.structured_to_unstructured(x)",
}


def check_numeric(x: object) -> None:
    """Raise ``TypeError`` naming the dtype of a numpy array ``x`` that torch cannot convert
    (``np.longdouble``, float128 on x86 Linux; object, text, datetime, void/structured arrays)
    instead of torch's "can't convert np.ndarray of type ..."; anything else passes (torch
    tensors, numpy arrays of a ``TORCH_NUMPY_DTYPES`` dtype, complex ones: ``check_real``)."""
    if not isinstance(x, np.ndarray) or x.dtype.kind == "c":
        return
    dtype = x.dtype
    if dtype.newbyteorder("=") in TORCH_NUMPY_DTYPES:  # '>f8' too: converted to native order
        return
    if dtype.kind == "f":
        raise TypeError(f"features of dtype {dtype} (np.longdouble): torch has no {8 * dtype.itemsize}-bit float; "
                        "convert them first, e.g. x.astype(np.float64) (the metrics compute in float64 at most)")
    why = _NOT_NUMERIC.get(dtype.kind, "a dtype torch cannot hold): convert them to float32 or float64 first")
    raise TypeError(f"features of dtype {dtype} ({why}")


def native_byte_order(a: np.ndarray) -> np.ndarray:
    """``a`` itself when its dtype is in the machine's byte order, else a copy converted to it
    (same values and dtype kind): ``torch.from_numpy`` refuses non-native byte order."""
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def _is_row(v: object) -> bool:
    """``v`` is a Python list/tuple of scalars (one row of numbers, not a nested layer)."""
    return isinstance(v, (list, tuple)) and all(not isinstance(e, (list, tuple)) and getattr(e, "ndim", 0) == 0 for e in v)


def is_nested_layer(xs: object) -> bool:
    """``xs`` is ONE ``(N, D)`` layer given as its rows: a non-empty Python list/tuple whose items
    are all lists/tuples of numbers. How ``split_layers``, ``score`` and ``prepare`` read nested
    lists; a list of 2-D nested lists (or of arrays) is a list of layers instead."""
    return isinstance(xs, (list, tuple)) and len(xs) > 0 and all(_is_row(v) for v in xs)


def from_nested(rows: Sequence) -> np.ndarray:
    """One layer given as nested Python lists/tuples of numbers, as a float64 numpy array
    (``ValueError`` naming what is wrong when the lists are ragged or not numbers, ``TypeError``
    for complex numbers)."""
    try:
        a = np.asarray(rows)
    except ValueError as err:  # ragged lists
        raise ValueError(f"nested lists that do not form an array: {err}") from None
    check_real(a)
    try:
        return a.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"nested lists that are not all numbers ({err})") from None


def _describe(x: object) -> str:
    """``x`` in words for an error: ``'an array of shape (5,)'``, ``'a float'``."""
    shape = getattr(x, "shape", None)
    if shape is not None:
        return f"{'a tensor' if isinstance(x, torch.Tensor) else 'an array'} of shape {tuple(shape)}"
    name = type(x).__name__
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def to_tensor(x: ArrayLike, device: torch.device | str | None = None,
              dtype: torch.dtype | None = None) -> torch.Tensor:
    """Convert ``x`` to a torch tensor (no copy when dtype and device already match; numpy arrays
    in non-native byte order are converted to native order); complex input and numpy dtypes torch
    has no counterpart for (``check_numeric``) raise ``TypeError``, a tensor on the meta device
    (no values) ``ValueError``."""
    x = densify(x)  # type: ignore[assignment]
    check_real(x)
    check_numeric(x)
    if isinstance(x, torch.Tensor) and x.is_meta:  # torch's NotImplementedError/RuntimeError at first use
        raise ValueError(f"a tensor on the meta device (shape {tuple(x.shape)}) holds shapes, not values, and a "
                         "metric needs the values; pass the real tensor (e.g. from a model loaded off the meta device)")
    if isinstance(x, np.ndarray):
        x = np.ascontiguousarray(native_byte_order(x))
        # Read-only arrays (e.g. views of Arrow buffers) are copied: torch tensors are writable.
        t = torch.from_numpy(x if x.flags.writeable else x.copy())
    elif isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        a = native_byte_order(np.asarray(x))
        check_real(a)
        check_numeric(a)
        t = torch.as_tensor(a)
    if dtype is None:
        dtype = compute_dtype(t.dtype)
    return t.to(device=device if device is not None else t.device, dtype=dtype)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other dtype computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _is_cuda(x: object) -> bool:
    return isinstance(x, torch.Tensor) and x.device.type == "cuda"


def _unavailable(dev: torch.device) -> str | None:
    """Why ``dev`` cannot be used on this machine, or ``None`` when it can (cpu always can)."""
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return "this torch sees no usable CUDA GPU (torch.cuda.is_available() is False)"
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            return f"this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        return "the Apple MPS backend is not available (torch.backends.mps.is_available() is False)"
    elif dev.type == "meta":
        return "the meta device holds shapes, not values, and a metric needs the values"
    elif dev.type not in ("cpu", "cuda", "mps"):
        try:
            torch.empty(0, device=dev)
        except (RuntimeError, AssertionError) as err:
            return f"torch cannot allocate on it ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    return None


def resolve_device(device: torch.device | str | None, *arrays: object) -> torch.device:
    """``device`` if given; else cuda when any tensor in ``arrays`` (or nested lists) is on cuda.

    Raises ``ValueError`` (naming ``device``) for a string that is no torch device and for a
    device this machine does not have (``'cuda'`` without a GPU, ``'cuda:3'`` with 2 GPUs,
    ``'mps'`` off Apple silicon), instead of torch's ``AssertionError`` on first use."""
    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from err
        why = _unavailable(dev)
        if why is not None:
            raise ValueError(f"device {device!r} is not available here: {why}; use device='cpu' or leave "
                             "device unset (cuda is then used when the inputs are cuda tensors)")
        return dev
    for a in arrays:
        if _is_cuda(a):
            return a.device  # type: ignore[union-attr]
        if isinstance(a, (list, tuple)) and any(_is_cuda(b) for b in a):
            return next(b.device for b in a if _is_cuda(b))
    return torch.device("cpu")


def split_layers(xs: ArrayLike | Sequence[ArrayLike]) -> list[ArrayLike]:
    """Return the layers of ``xs`` as a list of ``(N, D_l)`` arrays.

    Accepts a sequence of 2-D arrays (widths may differ), a 3-D ``(L, N, D)`` array or tensor, or a
    single 2-D ``(N, D)`` array (one layer). A layer in the sequence may be nested Python lists
    (``from_nested``), and a sequence of Python lists of numbers is one layer given as its rows
    (``is_nested_layer``, as ``score`` reads nested lists). numpy layers come back in native
    byte order (``native_byte_order``); a ``memoryview`` or another array-like (``__array__``: a
    pandas DataFrame) is read as the numpy array it holds (``as_array``).
    Raises ``ValueError`` on anything else, saying what was given, or when the layers do not share
    ``N``; ``TypeError`` (naming the layer of a sequence) for a numpy dtype torch cannot hold
    (``check_numeric``).
    """
    nested: list[int] = []
    xs = as_array(xs)  # a memoryview is a Sequence, but not of layers: iterating a 2-D one raised
    if isinstance(xs, np.ndarray):
        check_numeric(xs)
        xs = native_byte_order(xs)
    if isinstance(xs, (np.ndarray, torch.Tensor)):
        if xs.ndim == 3:
            layers: list[ArrayLike] = [xs[i] for i in range(xs.shape[0])]
        elif xs.ndim == 2:
            layers = [xs]
        else:
            raise ValueError(f"expected (N, D) or (L, N, D) features, got shape {tuple(xs.shape)}")
    elif isinstance(xs, Sequence) and not isinstance(xs, (str, bytes)):
        layers = [_array_layer(i, layer) for i, layer in enumerate(xs)]
        nested = [i for i, layer in enumerate(layers) if isinstance(layer, (list, tuple))]
        for i in nested:
            try:
                layers[i] = from_nested(layers[i])
            except ValueError as err:
                raise ValueError(f"layer {i} is {err}") from None
        if is_nested_layer(xs):
            layers = [from_nested(xs)]  # Python lists of numbers: the rows of one (N, D) layer
    else:
        raise unsupported_container(xs)
    if not layers:
        raise ValueError("no layers given")
    for i, layer in enumerate(layers):
        if getattr(layer, "ndim", None) != 2:
            given = f"nested lists of shape {tuple(layer.shape)}" if i in nested else _describe(layer)
            raise ValueError(f"each layer must be an (N, D) array, tensor or nested list of rows; layer {i} is "
                             f"{given}")
    n = {int(layer.shape[0]) for layer in layers}
    if len(n) != 1:
        raise ValueError(f"layers disagree on the number of samples: {sorted(n)}")
    return layers


def unsupported_container(xs: object) -> ValueError:
    """The error for features given as something that holds no layers (a string, ``None``, a
    dict, a set, an iterator...)."""
    return ValueError(f"unsupported feature container: {type(xs).__name__}; expected (N, D) or (L, N, D) "
                      "arrays/tensors or a sequence of (N, D) layers")


def densify(x: object) -> object:
    """``x`` as a dense array when it is sparse: a torch tensor of a sparse layout (COO, CSR, CSC,
    BSR, BSC) as its dense tensor (same dtype and device), a SciPy sparse matrix or array as its
    dense numpy array; anything else as given. The metrics compute on dense rows (Grams,
    distances), so sparse features are scored as the dense features they stand for; their dense
    size (``N * D`` values) is what the computation holds anyway."""
    if isinstance(x, torch.Tensor):
        return x.to_dense() if x.layout != torch.strided else x
    sparse = sys.modules.get("scipy.sparse")  # only loaded when the caller uses SciPy
    if sparse is not None and sparse.issparse(x):
        return x.toarray()  # type: ignore[attr-defined]
    return x


def as_array(x: object) -> object:
    """``x`` as the numpy array it holds when it is a buffer or array-like that is neither a numpy
    array nor a torch tensor (a ``memoryview``; an object with ``__array__``: a pandas DataFrame,
    an xarray DataArray), or as its dense array when it is sparse (``densify``); anything else as
    given."""
    x = densify(x)
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return x
    if isinstance(x, memoryview) or hasattr(x, "__array__"):
        return np.asarray(x)
    return x


def _array_layer(index: int, layer: object) -> object:
    """Item ``index`` of a sequence of layers as ``split_layers`` keeps it: a memoryview read as
    the array it views, a numpy array in native byte order (``TypeError`` prefixed ``layer
    {index}:`` for a dtype torch cannot hold, ``check_numeric``), anything else as given."""
    layer = as_array(layer)
    if not isinstance(layer, np.ndarray):
        return layer
    try:
        check_numeric(layer)
    except TypeError as err:
        raise TypeError(f"layer {index}: {err}") from None
    return native_byte_order(layer)


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """``inv`` with ``inv[perm[i]] == i``. ``perm``: ``(N,)`` int64."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return inv


def check_finite(layers: Sequence[torch.Tensor]) -> None:
    """Raise ``ValueError`` naming the first ``(N, D_l)`` layer with a NaN or inf value and how
    many of its rows hold one (one device sync when all are finite)."""
    finite = torch.stack([torch.isfinite(x).all() for x in layers])  # (L,)
    if not bool(finite.all()):
        l = int((~finite).nonzero()[0, 0])
        bad = int((~torch.isfinite(layers[l]).all(dim=1)).sum())
        raise ValueError(f"layer {l} has non-finite values (NaN or inf) in {bad} of its {int(layers[l].shape[0])} rows")
