"""float32 models on CUDA run without TF32 (`tasks.extract.base.exact_float32`).

There is no GPU here: the context manager's save/restore of PyTorch's global precision settings is
checked on the CPU (the settings exist without CUDA), and the extraction path is checked to run the
model under it by observing the settings from inside the model's forward with the extractor's
device set to 'cuda' (inputs stay on the CPU)."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from tasks.extract import load_extractor
from tests.tasks.extract.helpers import tiny_language_spec

pytestmark = pytest.mark.skipif(not hasattr(torch._C, "_set_fp32_precision_setter"),
                                reason="torch < 2.9 has the legacy TF32 flags only")

_SET = torch._C._set_fp32_precision_setter if hasattr(torch._C, "_set_fp32_precision_setter") else None


def _defaults() -> None:
    """PyTorch's settings at import, set explicitly (legacy flags first: their setters write precisions)."""
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = True
    for key, value in [(("cuda", "matmul"), "none"), (("cuda", "conv"), "tf32"), (("cuda", "rnn"), "tf32"),
                       (("mkldnn", "matmul"), "none"), (("cuda", "all"), "none"), (("mkldnn", "all"), "none"),
                       (("generic", "all"), "none")]:
        _SET(*key, value)


@pytest.fixture(autouse=True)
def _leave_torch_as_found():
    yield
    _defaults()


def _read(get: Callable[[], Any]) -> Any:
    try:
        return get()
    except RuntimeError:  # torch refuses to answer for a mix of legacy and new settings
        return "refused"


def _observe() -> dict[str, Any]:
    """Every public getter, as code running inside the block would see them."""
    b = torch.backends
    return {
        "matmul.allow_tf32": _read(lambda: b.cuda.matmul.allow_tf32),
        "cudnn.allow_tf32": _read(lambda: b.cudnn.allow_tf32),
        "float32_matmul_precision": _read(torch.get_float32_matmul_precision),
        "cuda.matmul": b.cuda.matmul.fp32_precision, "cudnn.conv": b.cudnn.conv.fp32_precision,
        "cudnn.rnn": b.cudnn.rnn.fp32_precision, "cudnn": b.cudnn.fp32_precision,
        "mkldnn.matmul": b.mkldnn.matmul.fp32_precision, "mkldnn": b.mkldnn.fp32_precision, "generic": b.fp32_precision,
    }


def _probe() -> list[dict[str, Any]]:
    """The public view, then again after the parent settings change: a precision left at 'none'
    (inheriting) and one set to the value it inherited look the same until then (destructive)."""
    views = [_observe()]
    for key, value in [(("generic", "all"), "tf32"), (("cuda", "all"), "ieee"), (("mkldnn", "all"), "bf16"),
                       (("generic", "all"), "none"), (("cuda", "all"), "none"), (("mkldnn", "all"), "none")]:
        _SET(*key, value)
        views.append(_observe())
    return views


SCENARIOS: dict[str, Callable[[], None]] = {
    "defaults": lambda: None,
    "legacy matmul tf32": lambda: torch.set_float32_matmul_precision("high"),
    "legacy matmul medium": lambda: torch.set_float32_matmul_precision("medium"),
    "legacy cudnn tf32 off": lambda: setattr(torch.backends.cudnn, "allow_tf32", False),
    "new api conv ieee (mixed)": lambda: setattr(torch.backends.cudnn.conv, "fp32_precision", "ieee"),
    "new api generic tf32": lambda: setattr(torch.backends, "fp32_precision", "tf32"),
    "new api cuda all tf32, leaves inherit": lambda: (setattr(torch.backends.cudnn, "allow_tf32", False),
                                                       setattr(torch.backends.cudnn, "fp32_precision", "tf32")),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_exact_float32_turns_tf32_off_and_restores_every_setting(scenario):
    from tasks.extract.base import exact_float32

    _defaults()
    SCENARIOS[scenario]()
    expected = _probe()

    _defaults()
    SCENARIOS[scenario]()
    with exact_float32():
        inside = _observe()
        with torch.backends.cudnn.flags(enabled=False):  # model code does this (transformers' CTC loss): it reads
            pass                                          # the legacy flag, which must not be a refused mix
    after = _probe()

    assert inside["matmul.allow_tf32"] is False and inside["cudnn.allow_tf32"] is False  # legacy view: readable, off
    assert inside["float32_matmul_precision"] == "highest" or scenario == "legacy matmul medium"
    assert (inside["cuda.matmul"], inside["cudnn.conv"], inside["cudnn.rnn"]) == ("ieee", "ieee", "ieee")  # not inherited
    assert after == expected


def test_exact_float32_restores_after_an_error_and_can_be_inactive():
    from tasks.extract.base import exact_float32

    _defaults()
    torch.set_float32_matmul_precision("high")
    expected = _probe()
    _defaults()
    torch.set_float32_matmul_precision("high")
    with pytest.raises(KeyError), exact_float32():
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        raise KeyError("boom")
    assert _probe() == expected

    _defaults()
    torch.set_float32_matmul_precision("high")
    with exact_float32(active=False):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert _probe() == expected


def _settings_during_forward(ex, module: torch.nn.Module, run: Callable[[], Any]) -> list[tuple]:
    seen: list[tuple] = []

    def hook(_module, _args):
        b = torch.backends
        seen.append((b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.conv.fp32_precision))

    handle = module.register_forward_pre_hook(hook)
    try:
        run()
    finally:
        handle.remove()
    return seen


def _tf32_on() -> tuple:
    _defaults()
    torch.set_float32_matmul_precision("high")  # TF32 on for matmuls too: what must not leak into float32
    return (True, True, "tf32")


class _CpuPixels:
    """Pixels whose ``.to('cuda', ...)`` stays on the CPU (the EfficientNet forward moves its input to
    ``self.device``)."""

    def __init__(self, pixels: torch.Tensor) -> None:
        self.pixels = pixels

    def to(self, _device, dtype=None, non_blocking=False):
        return self.pixels.to(dtype=dtype)


@pytest.mark.parametrize("kind", ["vision", "language", "efficientnet"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_forward_runs_float32_cuda_models_without_tf32(kind, dtype, images):
    """The model's own forward sees TF32 off exactly when the extractor is float32 on CUDA; the
    settings are back afterwards (and untouched on a CPU, or in half precision)."""
    from tasks.extract.spec import ModelSpec

    if kind == "vision":
        spec = ModelSpec(name="vit", loader="random_hf", id="ViTConfig", modality="vision", dtype=dtype,
                         config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                     image_size=32, patch_size=8))
        items = images[:2]
    elif kind == "language":
        spec, items = tiny_language_spec("gpt2", dtype=dtype), ["a red apple", "a cat"]
    else:
        spec = ModelSpec(name="lite0", loader="efficientnet_lite", id="efficientnet-lite0", modality="vision", dtype=dtype)
        items = images[:1]
    ex = load_extractor(spec, device="cpu")
    module = ex.lm if getattr(ex, "lm", None) is not None else ex.model
    prepared = ex.prepare(items)  # on the CPU (a 'cuda' extractor pins memory)
    if kind == "efficientnet":
        prepared.pixel_values = _CpuPixels(prepared.pixel_values)

    on = _tf32_on()
    on_cpu = _settings_during_forward(ex, module, lambda: ex.forward(prepared, with_nll=ex.is_causal_lm))
    assert on_cpu and set(on_cpu) == {on}  # a CPU model: nothing changed

    ex.device = torch.device("cuda")  # what the extractor decides on; the weights and inputs stay on the CPU
    before = _probe()
    _tf32_on()
    seen = _settings_during_forward(ex, module, lambda: ex.forward(prepared, with_nll=ex.is_causal_lm))
    assert seen
    assert set(seen) == ({(False, False, "ieee")} if dtype == "float32" else {on})
    assert _probe() == before


def test_overlapping_blocks_in_threads_keep_tf32_off_until_the_last_one_leaves():
    """Two float32 forwards in threads (PRH_TASK_RUNNER=threads:N): A enters, B enters, A leaves
    while B still runs. A's exit restored TF32 under B, and B's exit left the process with A's
    'off' as its default."""
    import threading

    from tasks.extract.base import exact_float32

    _defaults()
    expected = _probe()
    _defaults()
    a_in, b_in, a_out, b_seen = threading.Event(), threading.Event(), threading.Event(), {}

    def a() -> None:
        with exact_float32():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b() -> None:
        a_in.wait(10)
        with exact_float32():
            b_in.set()
            a_out.wait(10)
            b_seen.update(_observe())

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert b_seen["cudnn.allow_tf32"] is False and b_seen["cudnn.conv"] == "ieee"  # still off inside B after A left
    assert _probe() == expected  # the defaults are back once both left


def test_without_cudnn_attention_turns_it_off_in_overlapping_blocks_and_restores_it():
    """Language forwards on CUDA run without cuDNN attention (its first call at a new padded
    length cost 1.1-1.8 s on an H200); overlapping blocks in threads keep it off until the last
    leaves; an error or an inactive block leaves the setting as it was."""
    import threading

    from tasks.extract.base import without_cudnn_attention

    cuda = torch.backends.cuda
    before = cuda.cudnn_sdp_enabled()
    try:
        cuda.enable_cudnn_sdp(True)
        with without_cudnn_attention(active=False):
            assert cuda.cudnn_sdp_enabled()
        with pytest.raises(KeyError), without_cudnn_attention():
            assert not cuda.cudnn_sdp_enabled()
            raise KeyError("boom")
        assert cuda.cudnn_sdp_enabled()

        a_in, b_in, a_out, seen = threading.Event(), threading.Event(), threading.Event(), []

        def a() -> None:
            with without_cudnn_attention():
                a_in.set()
                b_in.wait(10)
            a_out.set()

        def b() -> None:
            a_in.wait(10)
            with without_cudnn_attention():
                b_in.set()
                a_out.wait(10)
                seen.append(cuda.cudnn_sdp_enabled())

        threads = [threading.Thread(target=a), threading.Thread(target=b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert seen == [False]  # still off inside B after A left
        assert cuda.cudnn_sdp_enabled()  # back once both left

        cuda.enable_cudnn_sdp(False)  # a user's own choice survives
        with without_cudnn_attention():
            pass
        assert not cuda.cudnn_sdp_enabled()
    finally:
        cuda.enable_cudnn_sdp(before)


@pytest.mark.parametrize("kind", ["language", "vision"])
def test_language_forwards_on_cuda_run_without_cudnn_attention(kind, images):
    """A language model's forward sees cuDNN attention off exactly when the extractor is on CUDA
    (padded batches); a vision model's (no padding, cuDNN's flash kernel ~5% faster there) keeps it."""
    from tasks.extract.spec import ModelSpec

    if kind == "vision":
        spec = ModelSpec(name="vit", loader="random_hf", id="ViTConfig", modality="vision", dtype="bfloat16",
                         config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                     image_size=32, patch_size=8))
        items = images[:2]
    else:
        spec, items = tiny_language_spec("gpt2", dtype="bfloat16"), ["a red apple", "a cat"]
    ex = load_extractor(spec, device="cpu")
    module = ex.lm if getattr(ex, "lm", None) is not None else ex.model
    prepared = ex.prepare(items)
    seen: list[bool] = []
    handle = module.register_forward_pre_hook(lambda *_: seen.append(torch.backends.cuda.cudnn_sdp_enabled()))
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        ex.forward(prepared, with_nll=ex.is_causal_lm)
        ex.device = torch.device("cuda")  # what the extractor decides on; the weights and inputs stay on the CPU
        ex.forward(prepared, with_nll=ex.is_causal_lm)
        assert torch.backends.cuda.cudnn_sdp_enabled()  # back afterwards
    finally:
        handle.remove()
        torch.backends.cuda.enable_cudnn_sdp(before)
    assert seen == ([True, False] if kind == "language" else [True, True])
