"""The `Extractor` interface shared by every model adapter.

A batch goes through two steps so that `extract_all` can overlap them:
`prepare(items)` (CPU: decode/resize images or tokenize; thread-safe, no model access) and
`forward(prepared, with_nll)` (the model). `extract_batch(items)` runs both.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import traceback
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from tasks.extract.errors import ModelInputError
from tasks.extract.spec import ModelSpec

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


#: (backend, op) keys of PyTorch's float32 precision settings (torch >= 2.9): a key set to "none"
#: inherits (backend, "all"), which inherits ("generic", "all"). `exact_float32` saves them raw.
_FP32_PARENTS = (("generic", "all"), ("cuda", "all"), ("mkldnn", "all"))
_FP32_LEAVES = (("cuda", "matmul"), ("cuda", "conv"), ("cuda", "rnn"), ("mkldnn", "matmul"))


def _fp32_api() -> tuple[Callable[[str, str], str], Callable[[str, str, str], None]] | None:
    get = getattr(torch._C, "_get_fp32_precision_getter", None)
    set_ = getattr(torch._C, "_set_fp32_precision_setter", None)
    return (get, set_) if get is not None and set_ is not None else None


def tf32_state() -> dict[Any, Any]:
    """Every global setting `exact_float32` changes, exactly (restored by `set_tf32_state`).

    The getters resolve inherited values and check the legacy flags against the new ones, so the
    raw values are read parent first, with the parents set to "none" meanwhile; the legacy cuDNN
    flag, which has no getter of its own, is read with the conv and RNN precisions at "tf32" (torch
    raises there exactly when it is False). The settings are left changed: restore them."""
    api = _fp32_api()
    if api is None:  # torch < 2.9: the legacy flags only
        return {"matmul": torch.get_float32_matmul_precision(), "cudnn": torch.backends.cudnn.allow_tf32}
    get, set_ = api
    state: dict[Any, Any] = {}
    for key in _FP32_PARENTS:  # ("generic", "all") first: with it at "none", the others read raw
        state[key] = get(*key)
        set_(*key, "none")
    for key in _FP32_LEAVES:
        state[key] = get(*key)
    set_("cuda", "matmul", "ieee")
    set_("mkldnn", "matmul", "ieee")
    state["matmul"] = torch.get_float32_matmul_precision()  # no check can fail with both matmuls at ieee
    set_("cuda", "conv", "tf32")
    set_("cuda", "rnn", "tf32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            state["cudnn"] = bool(torch._C._get_cudnn_allow_tf32())
        except RuntimeError:  # "a mix of the legacy and new APIs": the legacy flag is False
            state["cudnn"] = False
    return state


def set_tf32_state(state: dict[Any, Any]) -> None:
    """Put back what `tf32_state` read: the legacy flags first (their setters also write the
    precisions), then every precision raw, leaves before parents."""
    torch.set_float32_matmul_precision(state["matmul"])
    torch.backends.cudnn.allow_tf32 = state["cudnn"]
    api = _fp32_api()
    if api is None:
        return
    _, set_ = api
    for key in _FP32_LEAVES + _FP32_PARENTS[::-1]:
        set_(*key, state[key])


class ProcessSetting:
    """A process-wide setting held while any of its blocks is open: threads may open blocks at
    once (``PRH_TASK_RUNNER=threads:N`` runs several forwards in one process), so the first block
    in saves the previous value (``save()``) and applies the setting (``apply()``), the last one
    out restores it (``restore(saved)``), also after an error."""

    def __init__(self, save: Callable[[], Any], apply: Callable[[], None], restore: Callable[[Any], None]) -> None:
        self._save, self._apply, self._restore = save, apply, restore
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: Any = None

    @contextlib.contextmanager
    def held(self, active: bool = True) -> Iterator[None]:
        """The setting inside the block; ``active=False`` changes nothing."""
        if not active:
            yield
            return
        with self._lock:
            if self._depth == 0:
                self._saved = self._save()
                try:
                    self._apply()
                except BaseException:
                    self._restore(self._saved)
                    raise
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    self._restore(self._saved)


def _tf32_off() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False  # legacy matmul precision "highest", cuda matmul "ieee"
    torch.backends.cudnn.allow_tf32 = False  # legacy cuDNN flag off (conv and RNN precisions "none")
    api = _fp32_api()
    if api is not None:  # explicit, so that no "tf32" is inherited from ("cuda" | "generic", "all")
        _, set_ = api
        for key in (("cuda", "matmul"), ("cuda", "conv"), ("cuda", "rnn")):
            set_(*key, "ieee")


_EXACT_FLOAT32 = ProcessSetting(tf32_state, _tf32_off, set_tf32_state)


def exact_float32(active: bool = True) -> contextlib.AbstractContextManager[None]:
    """Float32 CUDA kernels in full float32 inside the block: TF32 off for cuBLAS matmuls and for
    cuDNN convolutions and RNNs. PyTorch lets cuDNN convolutions use TF32 by default (10-bit
    mantissa inputs: ~1e-3 relative error), and a user or a library may have enabled it for
    matmuls. Legacy and new flags are set consistently (``allow_tf32`` False, precision "ieee"),
    and every previous global setting comes back afterwards, also after an error. No effect on
    bfloat16/float16 kernels; ``active=False`` changes nothing."""
    return _EXACT_FLOAT32.held(active)


_NO_CUDNN_ATTENTION = ProcessSetting(torch.backends.cuda.cudnn_sdp_enabled,
                                     lambda: torch.backends.cuda.enable_cudnn_sdp(False),
                                     torch.backends.cuda.enable_cudnn_sdp)


def without_cudnn_attention(active: bool = True) -> contextlib.AbstractContextManager[None]:
    """``scaled_dot_product_attention`` without its cuDNN backend inside the block (flash,
    memory-efficient or math instead; the previous setting comes back afterwards).

    Measured on an H200 (torch 2.11, BENCHMARKS.md): with padded batches the cuDNN backend takes
    1.1-1.8 s on the first call of some new sequence lengths (each sorted caption batch has its
    own), the other backends none, at the same warm speed. ``active=False`` changes nothing."""
    return _NO_CUDNN_ATTENTION.held(active)


@dataclass
class BatchOutput:
    """What one forward pass yields.

    layers: one `(B, D_l) float32` array per layer, rows in the order of the batch's items.
    nll_nats / n_targets: summed next-token NLL and its number of predicted tokens (causal LMs
    asked for it; else 0.0 / 0).
    row_nll: `(B,) float64` each item's summed next-token NLL in nats, batch order (causal LMs
    asked for it; else None).
    row_targets: `(B,) int64` each item's number of predicted tokens, batch order (with row_nll).
    """

    layers: list[np.ndarray]
    nll_nats: float = 0.0
    n_targets: int = 0
    row_nll: np.ndarray | None = None
    row_targets: np.ndarray | None = None


class Extractor(ABC):
    """A loaded model that turns a batch of items into pooled per-layer features.

    Attributes:
        spec: the `ModelSpec` it was built from.
        modality: ``'vision'`` (items: encoded image bytes, PIL images or paths) or
            ``'language'`` (items: caption strings).
        layer_names: embedding/stem output first, then every block/layer (see module docs).
        layer_dims: width `D_l` of each layer's pooled feature.
        param_count: number of parameters of the module that runs (tied weights counted once).
        device: where the model runs.
        is_causal_lm: True when the model can report next-token NLL (bits per byte).
        max_prepare_threads: concurrent `prepare` calls allowed (1 where it is not thread-safe).
        source_commit: the Hugging Face hub commit of the weights (hub ids, resolved from
            ``revision`` or ``main``), None for local, packaged and random models.
    """

    spec: ModelSpec
    modality: str
    layer_names: list[str]
    layer_dims: list[int]
    param_count: int
    device: torch.device
    is_causal_lm: bool = False
    source_commit: str | None = None
    #: How many threads may run `prepare` at once on an accelerator (see `extract_all`).
    max_prepare_threads: int = 4

    @abstractmethod
    def prepare(self, items: Sequence[Any]) -> Any:
        """CPU-side preprocessing of a batch (thread-safe; touches no model state)."""

    @abstractmethod
    def forward(self, prepared: Any, with_nll: bool = False) -> BatchOutput:
        """Run the model on a prepared batch; pooled features as `(B, D_l) float32` arrays."""

    def forward_queued(self, prepared: Any, with_nll: bool = False) -> Callable[[], BatchOutput]:
        """`forward` in two steps: this call queues the batch's work on the device and returns a
        function that waits for it and gives the `BatchOutput`. `extract_all` queues the next
        batch before it waits for this one, so that moving results to the host overlaps the next
        forward pass on a GPU. This default runs `forward` at once."""
        out = self.forward(prepared, with_nll)
        return lambda: out

    def image_recipe(self) -> Any | None:
        """Vision extractors: the plain-data description of `prepare` that a worker process can run
        (`tasks.extract.image_pool`), or None when preprocessing must stay in this process."""
        return None

    def from_recipe_output(self, array: np.ndarray) -> Any:
        """The prepared batch from `image_pool.run_recipe(self.image_recipe(), items)`."""
        raise NotImplementedError(f"{type(self).__name__} has no image recipe")

    def full_float32(self) -> contextlib.AbstractContextManager[None]:
        """What every `forward` runs its model under: `exact_float32`, active when the model is
        float32 on CUDA (a float32 model gets float32 arithmetic, not TF32)."""
        return exact_float32(self.spec.dtype == "float32" and self.device.type == "cuda")

    def extract_batch(self, items: Sequence[Any]) -> list[np.ndarray]:
        """Pooled features of a batch: one `(B, D_l) float32` array per layer, rows in item order."""
        return self.forward(self.prepare(items)).layers

    def sort_lengths(self, items: Sequence[Any]) -> list[int] | None:
        """Per-item lengths to sort batches by (language: tokens), or None to keep the order."""
        return None

    def text_bytes(self, items: Sequence[Any]) -> list[int]:
        """UTF-8 bytes of each text as fed to the model (bits-per-byte denominators), items' order."""
        raise NotImplementedError(f"{type(self).__name__} has no text")

    def close(self) -> None:
        """Drop the model, stop decode worker processes, free accelerator memory (unusable afterwards)."""
        from tasks.extract import image_pool

        image_pool.shutdown_pool()
        self.release()

    def release(self) -> None:
        """Drop the model and free accelerator memory, leaving the shared decode workers to other
        extractions (unusable afterwards): called when a model's extraction ends, so that the next
        model of the zoo in this process starts with the GPU memory this one held."""
        for attr in ("model", "body", "lm"):
            if hasattr(self, attr):
                setattr(self, attr, None)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _finish_init(self, probe_items: Sequence[Any], names_for: Callable[[int], list[str]]) -> None:
        """Set `layer_names`/`layer_dims` from one probe forward pass; `names_for(n_layers)` names them.
        An error the model raises in it is a `ModelInputError` (`probe_errors`), as is a layer without
        one row per probe item (`check_rows`)."""
        with probe_errors(self.spec, "the probe forward pass"):
            layers = self.extract_batch(probe_items)
        check_rows(self.spec, layers, len(probe_items))
        names = names_for(len(layers))
        if len(names) != len(layers):
            raise RuntimeError(f"{len(names)} layer names for {len(layers)} layers")
        self.layer_names = names
        self.layer_dims = [int(a.shape[1]) for a in layers]


def check_rows(spec: ModelSpec, layers: Sequence[np.ndarray], batch: int, dims: Sequence[int] | None = None) -> None:
    """Every layer of a forward on ``batch`` items must be `(batch, D_l)`, ``D_l`` = ``dims[l]`` (the
    widths found at load) when given: else a `ModelInputError` naming the layer. A model that packs
    a batch into one sequence (Pixtral) gives one row for the batch, which would otherwise be
    copied into every item's row."""
    if dims is not None and len(layers) != len(dims):
        raise ModelInputError(spec.name, spec.id, f"a forward gave {len(layers)} layers; the model had {len(dims)} at load")
    for i, arr in enumerate(layers):
        if arr.ndim != 2 or arr.shape[0] != batch:
            raise ModelInputError(spec.name, spec.id, f"layer {i} has shape {tuple(arr.shape)} for a batch of {batch} "
                                  "item(s): the model does not give one row per item")
        if dims is not None and arr.shape[1] != dims[i]:
            raise ModelInputError(spec.name, spec.id, f"layer {i} has width {arr.shape[1]} in this batch, {dims[i]} at load")


_PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # tasks/: prh's own code


def raised_by_prh(exc: BaseException) -> bool:
    """Whether an exception was raised in prh's own code (its last traceback frame under ``tasks/``):
    a bug to report as it is, not a problem of the model."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(_PACKAGE_ROOT)


@contextlib.contextmanager
def model_errors(spec: ModelSpec, describe: Callable[[Exception], str]) -> Iterator[None]:
    """Turn an error raised inside the model (transformers, torch or remote code) into a
    `ModelInputError` naming the model, with ``describe(error)`` as its text (the error chained).
    Errors raised in prh's own code (its last frame under ``tasks/``: a bug, reported as it is),
    `ModelInputError`, out-of-memory errors and device faults (``torch.AcceleratorError``: a CUDA
    illegal memory access, an ECC error) pass unchanged."""
    try:
        yield
    except (ModelInputError, MemoryError, torch.cuda.OutOfMemoryError, torch.AcceleratorError):
        raise
    except Exception as exc:  # noqa: BLE001 - narrowed below: only errors raised inside the model
        if raised_by_prh(exc):
            raise
        raise ModelInputError(spec.name, spec.id, describe(exc)) from exc


def probe_errors(spec: ModelSpec, what: str) -> contextlib.AbstractContextManager[None]:
    """`model_errors` of a load-time probe: ``what`` failed and the cause (e.g. X-MOD without a
    default language)."""
    def describe(exc: Exception) -> str:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"{what} failed inside the model: {type(exc).__name__}: {first} (the model cannot run as the spec configures it)"

    return model_errors(spec, describe)


def require_hidden_states(spec: ModelSpec, module: torch.nn.Module, out: Any) -> tuple[torch.Tensor, ...]:
    """``out.hidden_states`` (embedding output, then every layer), or a `ModelInputError` when the
    model returned none, or an entry that is not a tensor (MaskFormer's Swin returns each stage as a
    tuple): it cannot give per-layer features."""
    states = out.get("hidden_states") if hasattr(out, "get") else getattr(out, "hidden_states", None)
    odd = next((i for i, h in enumerate(states or ()) if not isinstance(h, torch.Tensor)), None)
    if odd is not None:  # MaskFormer's Swin: each stage a tuple; PEGASUS-X: its last entry
        raise ModelInputError(spec.name, spec.id, f"{type(module).__name__} returned hidden_states whose entry {odd} is a "
                              f"{type(states[odd]).__name__}, not a tensor: prh cannot tell its per-layer features")
    if not states:
        raise ModelInputError(spec.name, spec.id, f"{type(module).__name__} returned no hidden_states with "
                              "output_hidden_states=True: per-layer features need a model that returns them")
    return tuple(states)


def to_host_queued(tensors: Sequence[torch.Tensor]) -> Callable[[], list[np.ndarray]]:
    """Copy ``tensors`` to the host without waiting: returns a function that waits for the copies
    and gives them as numpy arrays (same shapes and dtypes). CUDA tensors go to pinned memory
    with ``non_blocking`` copies queued on their devices' current streams (one event per device);
    others are converted at once."""
    if not any(t.device.type == "cuda" for t in tensors):
        arrays = [np.ascontiguousarray(t.detach().cpu().numpy()) for t in tensors]
        return lambda: arrays
    host = []
    for t in tensors:
        h = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.device.type == "cuda")
        h.copy_(t.detach(), non_blocking=True)
        host.append(h)
    events = []
    for device in {t.device for t in tensors if t.device.type == "cuda"}:
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        events.append(event)

    def wait() -> list[np.ndarray]:
        for event in events:
            event.synchronize()
        return [h.numpy() for h in host]

    return wait


def to_numpy_f32(t: torch.Tensor) -> np.ndarray:
    """`(B, D)` tensor on any device -> contiguous float32 numpy array."""
    return np.ascontiguousarray(t.detach().to(device="cpu", dtype=torch.float32).numpy())


def resolve_device(device: str | None) -> torch.device:
    """'cuda' when available unless a device is given."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def count_parameters(module: torch.nn.Module) -> int:
    """Parameters of a module; shared (tied) tensors counted once."""
    return sum(p.numel() for p in module.parameters())


def layer_names(first: str, prefix: str, n: int) -> list[str]:
    """``[first, f'{prefix}.01', ..., f'{prefix}.{n:02d}']`` (1-based, zero-padded to 2+ digits)."""
    width = max(2, len(str(n)))
    return [first] + [f"{prefix}.{i:0{width}d}" for i in range(1, n + 1)]
