"""Language feature extraction for Hugging Face encoders and causal LMs.

Layers: every entry of ``hidden_states``: ``embeddings`` (the embedding output: token embeddings,
plus position embeddings where the model adds them; rotary models such as Llama add none), then
``layer.01`` .. ``layer.NN`` (one per transformer layer, as transformers returns them: for some
causal LMs, e.g. Llama in transformers 5, the last one is after the final norm). Mamba, Mamba2
(before transformers 5.25), FalconMamba and RWKV return [block 1 .. block N, final norm(block N)],
with no embedding output: prh puts the first block's input (their embedding output) in front and
drops the un-normed last block (`EmbeddingState`), N + 1 layers as for Llama. A load-time probe of
what the model returns decides (`_probe_embedding_state`), not its type: 5.25's Mamba2, whose
hidden_states start with the embedding output, is taken as it is.

Pooling per layer (`(B, D) float32`), over the tokens the model sees, special tokens included
([CLS]/[SEP], BOS/EOS — as sentence-transformers' mean pooling does):
- ``avg``: mean over valid tokens (attention mask);
- ``last``: the last valid token.
Both are exact under left or right padding: pads are masked, and a caption's positions do not
depend on how much padding it gets. A left-padded batch gets position ids computed from the
attention mask (``cumsum - 1``) when the model's forward takes ``position_ids`` and its embeddings
do not derive positions themselves; any other model is padded on the RIGHT instead, whatever the
tokenizer says: one whose forward takes no ``position_ids`` (BART's encoder counts positions from
the first token, pads included) or whose embeddings derive positions from ``input_ids`` and a
``padding_idx`` (RoBERTa family, MPNet: a tokenizer whose pad id is not that ``padding_idx`` would
shift them). Right padding needs no position ids: real tokens come first.
The padding side is otherwise the tokenizer's own; set ``extractor.tokenizer.padding_side`` to
change it (`padding_side` says which side a batch gets).

Some models do not mask their pads: a forward that takes no ``attention_mask`` (FNet, CPM-Ant:
pads read as tokens), model types known to read pad positions (`PADDING_DEPENDENT`: ConvBERT,
Nystromformer, YOSO; MRA with left padding), and any model for which a load-time probe finds a
short caption's features alone differ from the same caption padded in a batch with a longer one
(`_measure_padding`: float32 within the contract's 1e-5; a second pair whose short caption is
longer than an attention window the config declares, Doge's ``keep_window_size``:
`declared_window`; the side in use at load, another at its first batch). Where left padding
does so and right padding does not, batches are padded on the right instead (MRA);
otherwise such batches run pad-free: each group of equal-length captions is its own forward,
without pad columns, rows put back in batch order (exact, slower; logged once, and named by
`pad_free_reason`). A caption that tokenizes to no token at all (an empty caption with a
tokenizer that adds no special tokens) raises `ModelInputError` in `prepare`: nothing to pool.

Truncation (`fitted`): without a prompt, the tokenizer keeps the first ``max_length`` tokens (the
last, with ``truncation_side='left'``). With a prompt, a text too long has its CAPTION shortened
by characters (its start kept, or its end with ``truncation_side='left'``) to a cut that fits
beside the whole prompt (``shortened_caption``: not always the longest, see there), so the text
after ``{text}`` stays and ``last`` pools the prompt's end. The pre-check (`hf_models._check_prompt_room`) refuses a ``max_length`` that the prompt
fills, and `prepare` raises `ModelInputError` for a caption that keeps no character (never
pooled). Bits-per-byte denominators (`text_bytes`) count the bytes actually fed: prompt and kept
caption, or the text the kept tokens cover.

Causal LMs also report next-token NLL for bits per byte (see `tasks.extract.bpb`).
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from tasks.extract.base import (BatchOutput, Extractor, count_parameters, layer_names, probe_errors, require_hidden_states,
                                to_host_queued, without_cudnn_attention)
from tasks.extract.bpb import next_token_nll_rows_on_device
from tasks.extract.errors import ModelInputError
from tasks.extract.hf_models import LoadedModel, input_device, is_int, position_offset
from tasks.extract.pooling import pool_tokens
from tasks.extract.spec import ModelSpec


#: Fitted captions an extractor keeps (`HFLanguageExtractor.fit_cache_size`): four shards of a
#: run (`tasks.extract_task.DEFAULT_SHARD_SIZE`, 2048), a few MB.
FIT_CACHE_SIZE = 8192


@dataclass
class PreparedText:
    """A tokenized batch, `(B, T)` tensors."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    special_tokens_mask: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # token_type_ids, position_ids
    n_truncated: int = 0


class HFLanguageExtractor(Extractor):
    """Pooled hidden states (and NLL for causal LMs) of a Hugging Face language model."""

    modality = "language"
    max_prepare_threads = 1  # a fast tokenizer called from two threads can fail ("Already borrowed")
    #: Fitted captions kept for later calls (`fitted`), at most (more while one call needs more)
    fit_cache_size: int = FIT_CACHE_SIZE
    #: padding side -> why batches padded on that side run pad-free, or None (padded); the side in use
    #: is probed at load (`_padding_probe`), another at its first batch. None before the load probe.
    _pad_free_reasons: dict[str, str | None] | None = None

    def __init__(self, spec: ModelSpec, loaded: LoadedModel, tokenizer: Any, device: torch.device) -> None:
        self.spec = spec
        self.device = device
        self.model = loaded.model
        self.source_commit = loaded.commit
        self.lm = loaded.lm
        self.is_causal_lm = loaded.lm is not None
        self.tokenizer = tokenizer
        self.param_count = count_parameters(loaded.counted)
        self._params = set(inspect.signature(self.model.forward).parameters)
        self._lm_params = set(inspect.signature(self.lm.forward).parameters) if self.lm is not None else set()
        # RoBERTa-style embeddings (a padding_idx) derive positions from input_ids themselves; the
        # max_length pre-check takes the same offset off their position table (one rule: position_offset)
        self._own_positions = position_offset(self.model) > 0
        # left padding is exact only with explicit position ids (see module docstring)
        self._left_padding_ok = "position_ids" in self._params and not self._own_positions
        # Segment ids only for a model with a segment (token type) embedding: GPT-2's forward takes
        # token_type_ids too, but adds wte(ids), the embedding of token 0, to every position
        # (given a BERT tokenizer, which makes them, every feature was shifted).
        self._token_types = (getattr(getattr(self.model, "config", None), "type_vocab_size", 0) or 0) > 0
        self._input_device = input_device(self.model, _input_embedding_weight(spec, self.model))
        # captions fitted to max_length (`fitted`), by (caption, truncation side), least recently used
        # first: sorting, preparing and counting bytes fit each caption once; bounded (`fit_cache_size`)
        self._fits: OrderedDict[tuple[str, str], tuple[str, int, bool]] = OrderedDict()
        # the tokenizer is used by one prepare thread; a padding probe from the forward thread (a side
        # changed after load) takes this lock too, so they never tokenize at once
        self._tokenizing = threading.RLock()
        self._embedding_state: EmbeddingState | None = None
        self._embedding_state = self._probe_embedding_state()
        self._finish_init(["a"], lambda n: layer_names("embeddings", "layer", n - 1))
        self._pad_free_reasons = self._padding_probe()  # after the layer probe: its forward is always padded

    def _probe_embedding_state(self) -> EmbeddingState | None:
        """An `EmbeddingState` (the embedding output put in front) when the model's hidden_states do
        not start with it, as the model returns them: in a probe forward on "a", their first entry
        equals the first block's output but not its input (blocks: `block_list`); else None. Only
        where the probe cannot tell (no block list found, or the first entry equal to both or to
        neither) does the model type decide (`NO_EMBEDDING_STATE`): transformers 5.25's Mamba2 is
        such a type and returns the embedding output first, like other models."""
        blocks = block_list(self.model)
        # the first block's input and output in a probe forward (hooks removed afterwards)
        taps = [] if blocks is None else [EmbeddingState(blocks[0], first_block=first, drop_unnormed=False)
                                          for first in (True, False)]
        try:
            with probe_errors(self.spec, "the probe forward pass"):
                states, _ = self._run(self.prepare(["a"]), with_logits=False)
        finally:
            for tap in taps:
                tap.remove()
        config = getattr(self.model, "config", None)
        block_input, block_output = (taps[0].kept, taps[1].kept) if taps else (None, None)
        found = _first_state_is_a_block(states[0], block_input, block_output)
        if not (found if found is not None else getattr(config, "model_type", None) in NO_EMBEDDING_STATE):
            return None
        n = len(blocks) if blocks is not None else getattr(config, "num_hidden_layers", None)
        if n not in (len(states), len(states) - 1):
            raise ModelInputError(self.spec.name, self.spec.id, f"{type(self.model).__name__} returned {len(states)} "
                                  f"hidden_states for {n} blocks, none of them the embedding output: prh cannot "
                                  "tell which is which")
        module = blocks[0] if blocks is not None else self.model.get_input_embeddings()
        return EmbeddingState(module, first_block=blocks is not None, drop_unnormed=len(states) == n + 1)

    def texts(self, items: Sequence[str]) -> list[str]:
        """Captions as fed to the model (prompt template applied)."""
        out = []
        for it in items:
            if not isinstance(it, str):
                raise TypeError(f"language items must be str, got {type(it).__name__}")
            out.append(self.spec.format_text(it))
        return out

    def fitted(self, items: Sequence[str]) -> FittedTexts:
        """The texts fed to the model. A prompted text longer than ``max_length`` tokens gets its
        caption shortened by characters (`shortened_caption`, the tokenizer's truncation side) so
        that the whole prompt fits (its end stays where ``last`` pools); a caption that keeps no
        character raises `ModelInputError`. Without a prompt, the tokenizer truncates the tokens.
        Each caption is fitted once per truncation side and kept for later calls (`extract_all` sorts
        by length, prepares batches and counts bytes: one fit); the fits kept are bounded
        (`_forget_fits`)."""
        texts = self.texts(items)
        side = str(getattr(self.tokenizer, "truncation_side", "right"))
        keys = [(item, side) for item in items]
        with self._tokenizing:  # a fit is read where it is kept: another thread may forget old ones
            new: dict[tuple[str, str], int] = {}  # caption not kept yet -> its first row
            for i, key in enumerate(keys):
                if key in self._fits:
                    self._fits.move_to_end(key)
                else:
                    new.setdefault(key, i)
            if new:
                counts = self.tokenizer([texts[i] for i in new.values()], truncation=False)["input_ids"]
                for (key, i), ids in zip(new.items(), counts):
                    self._fits[key] = self._fit(items[i], texts[i], len(ids))
            fits = [self._fits[key] for key in keys]
            if new:
                self._forget_fits(keep=len(set(keys)))
        return FittedTexts([f[0] for f in fits], [f[1] for f in fits], [i for i, f in enumerate(fits) if f[2]])

    def _forget_fits(self, keep: int) -> None:
        """Drop the least recently used fits beyond ``max(fit_cache_size, keep)``: ``keep`` = the
        captions of the call that just fitted new ones (all most recent), so a call never forgets
        its own and an `extract_all` call fits each of its captions once, however many. The fits
        kept (a few hundred bytes each) stay at ``fit_cache_size`` over a run of many calls (one
        per shard of `tasks.extract_task`), at most the captions of the largest call until the next
        call fits new ones."""
        while len(self._fits) > max(self.fit_cache_size, keep):
            self._fits.popitem(last=False)

    def _fit(self, caption: str, text: str, n_tokens: int) -> tuple[str, int, bool]:
        """(text fed, its token count, whether the caption lost text) of one caption whose prompted
        ``text`` is ``n_tokens`` long untruncated (see `fitted`)."""
        if n_tokens <= self.spec.max_length:
            return text, n_tokens, False
        if self.spec.prompt is None:
            return text, self.spec.max_length, True
        fit = shortened_caption(self.tokenizer, self.spec, caption)
        if fit is None:
            raise ModelInputError(self.spec.name, self.spec.id, f"caption {caption!r} keeps no token of its own: "
                                  f"max_length {self.spec.max_length} is filled by the prompt {self.spec.prompt!r} "
                                  "(its features would be the prompt's); raise max_length or shorten the prompt")
        return fit[0], fit[1], True

    def sort_lengths(self, items: Sequence[str]) -> list[int]:
        return self.fitted(items).lengths

    def text_bytes(self, items: Sequence[str]) -> list[int]:
        """UTF-8 bytes of the text each caption is fed as: the prompt and the caption's kept text
        (`fitted`; a caption truncated without a prompt: the bytes its kept tokens cover, `kept_bytes`)."""
        fitted = self.fitted(items)
        sizes = [len(t.encode("utf-8")) for t in fitted.texts]
        if self.spec.prompt is None:
            with self._tokenizing:
                for i in fitted.cut:
                    sizes[i] = kept_bytes(self.tokenizer, fitted.texts[i], self.spec.max_length)
        return sizes

    @property
    def padding_side(self) -> str:
        """The side batches are padded on: the tokenizer's, but ``right`` where left padding would
        move a caption's positions (no ``position_ids`` input, or positions from a ``padding_idx``)."""
        side = getattr(self.tokenizer, "padding_side", "right")
        return side if side != "left" or self._left_padding_ok else "right"

    @property
    def pad_free_reason(self) -> str | None:
        """Why this model's batches run pad-free (each group of equal-length captions as its own
        forward, no pad column at all) on the current `padding_side`, or None when they are padded
        (also for a side not probed yet: the tokenizer's side changed after load, before a batch)."""
        return (self._pad_free_reasons or {}).get(self.padding_side)

    def _padding_probe(self) -> dict[str, str | None]:
        """Why padding on the side in use would change a caption's features, if it would
        (`_why_pad_free`). Where left padding would and right padding would not (MRA: its own
        positions start at 2, not at the mask's ``cumsum - 1``), batches are padded on the right
        instead; else that side runs pad-free (logged)."""
        side = self.padding_side
        reasons = {side: self._why_pad_free(side)}
        if side == "left" and reasons["left"] is not None:
            reasons["right"] = self._why_pad_free("right")
            if reasons["right"] is None:
                _LOG.warning("%s: padded on the right, whatever the tokenizer says: %s", self.spec.name, reasons["left"])
                self._left_padding_ok = False
        why = reasons.get(self.padding_side)
        if why is not None:
            self._announce(self.padding_side, why)
        return reasons

    def _announce(self, side: str, why: str) -> None:
        """Log, once per padding side, that batches run pad-free and why."""
        announced = self.__dict__.setdefault("_announced", set())
        if side not in announced:
            announced.add(side)
            _LOG.warning("%s: batches padded on the %s run pad-free (one forward per caption length, slower): %s",
                         self.spec.name, side, why)

    def _why_pad_free(self, side: str) -> str | None:
        """Why pads would change features on ``side``: a forward that takes no ``attention_mask``
        (pads read as tokens: FNet, CPM-Ant), a model type known to depend on padding
        (`PADDING_DEPENDENT`), or the load-time measurement (`_measure_padding`)."""
        if "attention_mask" not in self._params or (self.lm is not None and "attention_mask" not in self._lm_params):
            return f"{type(self.model).__name__}'s forward takes no attention_mask (pads would be read as tokens)"
        model_type = getattr(getattr(self.model, "config", None), "model_type", None)
        if side in PADDING_DEPENDENT.get(str(model_type), ()):
            return f"model type {model_type!r} is known to change a caption's features with {side} padding"
        return self._measure_padding(side)

    def _measure_padding(self, side: str) -> str | None:
        """Compare, every layer, a short probe caption's features alone (no pad) with the same caption
        padded on ``side`` in a batch with a longer one (tolerance `PAD_PROBE_RTOL`, relative to the
        layer's largest feature: float rounding of other shapes). Half precision rounds too coarsely
        for a tight tolerance there, so its pad tokens are also swapped for a real token (same
        shapes, so no rounding difference: `PAD_SWAP_RTOL`; this also flags a model whose pads only
        do not matter because their embedding is zero, as MobileBERT's). The probe pairs: the short
        `_PROBE_CAPTIONS`, and where the config declares an attention window shorter than
        ``max_length`` (`declared_window`: Doge's ``keep_window_size``), a pair whose short caption
        is longer than it (`_window_probe`). A difference: why."""
        half = self.spec.dtype != "float32"
        pairs: list[tuple[tuple[str, str], str]] = [(_PROBE_CAPTIONS, "")]
        window = self._window_probe()
        if window is not None:
            pairs.append(window)
        for captions, note in pairs:
            for name, d_len, d_swap in self._padding_differences(side, captions, half):
                if d_len > PAD_PROBE_RTOL[half] or d_swap > PAD_SWAP_RTOL:
                    swap = f" (pad tokens swapped for a real one: {d_swap:.2g})" if half else ""
                    return (f"at load, a caption padded on the {side} changed its {name!r} features by {d_len:.2g} of "
                            f"their largest value{swap}{note}")
        return None

    def _padding_differences(self, side: str, captions: tuple[str, str], half: bool) -> list[tuple[str, float, float]]:
        """Per layer (name, d_len, d_swap): how much the first caption's pooled features padded on
        ``side`` in a batch with the second (longer) one differ from them alone (d_len), and from the
        same batch with its pads swapped for a real token (d_swap; ``half`` only, else 0), each
        relative to the layer's largest feature alone. [] when both fill ``max_length`` (no pad)."""
        saved = getattr(self.tokenizer, "padding_side", "right")
        if side != self.padding_side:  # at load only (`_padding_probe`): no prepare thread runs yet
            self.tokenizer.padding_side = side
        try:
            with probe_errors(self.spec, f"the padding probe ({side} padding)"):
                pair = self.prepare(list(captions))
                if not bool((pair.attention_mask[0] == 0).any()):
                    return []  # both captions fill max_length: nothing to compare
                padded = self._forward_padded(pair, with_nll=False).layers
                alone = self._forward_padded(self.prepare(list(captions[:1])), with_nll=False).layers
                swapped = self._forward_padded(_pads_swapped(pair), with_nll=False).layers if half else padded
        finally:
            if self.tokenizer.padding_side != saved:
                self.tokenizer.padding_side = saved
        out = []
        for name, p, a, w in zip(self.layer_names, padded, alone, swapped):
            scale = max(float(np.abs(a[0]).max()), 1e-6)
            out.append((name, float(np.abs(p[0] - a[0]).max()) / scale, float(np.abs(w[0] - p[0]).max()) / scale))
        return out

    def _window_probe(self) -> tuple[tuple[str, str], str] | None:
        """A probe pair for the attention window the model's config declares (`declared_window`), and
        the note a refusal adds: a short caption of more tokens than the window (as fed: prompt and
        special tokens included) and a longer one. None without a window, or where no padded caption
        can be longer than it (window + 1 >= ``max_length``: a longer caption fills max_length and
        gets no pad), or no caption of the probe's words fits between the two."""
        window = declared_window(getattr(self.model, "config", None))
        if window is None or window[1] + 1 >= self.spec.max_length:
            return None
        field, size = window
        with self._tokenizing:
            k = _fewest_words(lambda n: self._probe_tokens(n) > size)
            n_tokens = self._probe_tokens(k)
        if not size < n_tokens < self.spec.max_length:
            return None
        return (_probe_words(k), _probe_words(2 * k + 1)), f" (a caption of {n_tokens} tokens, longer than its {field} of {size})"

    def _probe_tokens(self, n_words: int) -> int:
        """Tokens of `_probe_words` (``n_words``) as fed to the model: prompt and special tokens, untruncated."""
        return len(self.tokenizer(self.spec.format_text(_probe_words(n_words)), truncation=False)["input_ids"])

    def prepare(self, items: Sequence[str]) -> PreparedText:
        fitted = self.fitted(items)
        texts = fitted.texts
        side = self.padding_side  # passed only when it overrides the tokenizer's own
        own = {} if side == getattr(self.tokenizer, "padding_side", "right") else {"padding_side": side}
        with self._tokenizing:
            enc = self.tokenizer(
                texts, padding=True, truncation=True, max_length=self.spec.max_length,
                return_tensors="pt", return_special_tokens_mask=True, **own,
            )
        mask = enc["attention_mask"]
        _refuse_empty(self.spec, items, mask)
        extra: dict[str, torch.Tensor] = {}
        if "token_type_ids" in enc and "token_type_ids" in self._params and self._token_types:
            extra["token_type_ids"] = enc["token_type_ids"]
        left_padded = bool((mask[:, 0] == 0).any())
        if left_padded and self._left_padding_ok:
            extra["position_ids"] = (mask.long().cumsum(dim=1) - 1).clamp_min(0)
        prepared = PreparedText(enc["input_ids"], mask, enc["special_tokens_mask"], extra, len(fitted.cut))
        if self.device.type == "cuda":
            prepared = _pinned(prepared)
        return prepared

    @torch.inference_mode()
    def _run(self, p: PreparedText, with_logits: bool) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        dev = self._input_device
        module, params = (self.lm, self._lm_params) if with_logits else (self.model, self._params)
        inputs = {"input_ids": p.input_ids.to(dev, non_blocking=True)}
        if "attention_mask" in params:  # else the model runs pad-free: nothing to mask
            inputs["attention_mask"] = p.attention_mask.to(dev, non_blocking=True)
        inputs.update({k: v.to(dev, non_blocking=True) for k, v in p.extra.items()})
        if "use_cache" in params:
            inputs["use_cache"] = False
        if self._embedding_state is not None:
            self._embedding_state.clear()
        # padded batches of new lengths: cuDNN attention's first calls cost seconds (`without_cudnn_attention`)
        with self.full_float32(), without_cudnn_attention(self.device.type == "cuda"):
            out = module(**inputs, output_hidden_states=True, return_dict=True)
        states = require_hidden_states(self.spec, module, out)
        if self._embedding_state is not None:  # Mamba, RWKV: hidden_states lack the embedding output
            states = self._embedding_state.restore(states)
        return states, (out.logits if with_logits else None)

    def forward(self, prepared: PreparedText, with_nll: bool = False) -> BatchOutput:
        """Pooled features (and NLL): one padded forward, or pad-free (`pad_free_reason`): one forward
        per group of equal-length captions, without pad columns, rows put back in batch order."""
        return self.forward_queued(prepared, with_nll)()

    @torch.inference_mode()
    def forward_queued(self, prepared: PreparedText, with_nll: bool = False) -> Callable[[], BatchOutput]:
        """`forward` in two steps (`Extractor.forward_queued`): a padded batch's results are copied to
        the host without waiting; a pad-free one is finished at once."""
        if with_nll and not self.is_causal_lm:
            raise ValueError(f"{self.spec.name} is not a causal LM: no bits per byte")
        side = self.padding_side
        if self._pad_free_reasons is not None and side not in self._pad_free_reasons:  # side changed after load
            self._pad_free_reasons[side] = self._why_pad_free(side)
        why = self.pad_free_reason
        if why is None:
            return self._padded_queued(prepared, with_nll)
        self._announce(side, why)
        lengths = prepared.attention_mask.sum(dim=1)
        groups = [(lengths == n).nonzero().flatten() for n in lengths.unique().tolist()]
        out = _merged([(rows, self._padded_queued(_unpadded(prepared, rows), with_nll)()) for rows in groups],
                      len(lengths))
        return lambda: out

    def _forward_padded(self, prepared: PreparedText, with_nll: bool) -> BatchOutput:
        """One forward of the batch as prepared (pads masked), pooled."""
        return self._padded_queued(prepared, with_nll)()

    def _padded_queued(self, prepared: PreparedText, with_nll: bool) -> Callable[[], BatchOutput]:
        """One forward of the batch as prepared (pads masked), pooled; results copied to the host
        without waiting (`to_host_queued`); the returned function waits and gives them."""
        states, logits = self._run(prepared, with_logits=with_nll)
        mask = prepared.attention_mask.to(states[0].device)
        self._check_token_states(states, tuple(mask.shape))
        pooled = [pool_tokens(h, mask.to(h.device), self.spec.pooling) for h in states]
        if not with_nll:
            copied = to_host_queued(pooled)
            return lambda: BatchOutput(copied())
        assert logits is not None
        dev = logits.device
        rows, counts = next_token_nll_rows_on_device(
            logits, prepared.input_ids.to(dev), prepared.attention_mask.to(dev),
            ~prepared.special_tokens_mask.to(dev).bool(),
        )
        copied = to_host_queued([*pooled, rows, counts])

        def finish() -> BatchOutput:
            *layers, row_nll, row_targets = copied()
            return BatchOutput(layers, nll_nats=float(row_nll.sum()), n_targets=int(row_targets.sum()),
                               row_nll=row_nll, row_targets=row_targets.astype(np.int64))

        return finish

    def _check_token_states(self, states: Sequence[torch.Tensor], batch: tuple[int, int]) -> None:
        """Every hidden state must hold one vector per token of the batch, `(B, T, D)` with `(B, T)` =
        ``batch`` (the attention mask's shape): else a `ModelInputError` naming the layer and its shape
        (DeepSeek-V4's hyper-connections keep several residual streams per token, `(B, T, 4, D)`; a text
        tower that adds tokens of its own has more than T), rather than pooling over the wrong axis.
        On every batch (a comparison of shapes): the load probe's forward is the first, so a model
        that fails it is refused before any shard is written."""
        names = layer_names("embeddings", "layer", len(states) - 1)
        for name, h in zip(names, states):
            if h.dim() != 3 or tuple(h.shape[:2]) != batch:
                raise ModelInputError(self.spec.name, self.spec.id, f"layer {name!r} has shape {tuple(h.shape)} for a batch of "
                                      f"{batch[0]} caption(s) of {batch[1]} tokens: not one vector per token (B, T, D) "
                                      "(several vectors per token, or tokens the model adds of its own), so it cannot be "
                                      "pooled over a caption's tokens")


def _pinned(p: PreparedText) -> PreparedText:
    return PreparedText(
        p.input_ids.pin_memory(), p.attention_mask.pin_memory(), p.special_tokens_mask.pin_memory(),
        {k: v.pin_memory() for k, v in p.extra.items()}, p.n_truncated,
    )


#: Model types whose features change with padding although their forward takes an attention mask
#: (tiny random models, transformers 5; a float32 probe also finds them, a half-precision one may
#: not): the padding sides affected. ConvBERT's convolutions and Nystromformer's landmarks read the
#: pad positions, YOSO hashes them, MRA's blocks shift with left padding.
PADDING_DEPENDENT: dict[str, tuple[str, ...]] = {
    "fnet": ("left", "right"), "cpmant": ("left", "right"), "convbert": ("left", "right"),
    "nystromformer": ("left", "right"), "yoso": ("left", "right"), "mra": ("left",),
}
#: `_measure_padding` tolerances, relative to a layer's largest feature: padded vs alone (float32,
#: half precision), and pads swapped for a real token (half precision only).
#: Float32: the padding contract's 1e-5 (rounding of other shapes measured at most 4.6e-7 over 27
#: tiny families and the extraction tests' probes, CPU; 1e-4 let MobileBERT's leak of a small non-zero pad embedding, ~4e-5, through).
PAD_PROBE_RTOL = (1e-5, 5e-2)
PAD_SWAP_RTOL = 1e-3
_PROBE_CAPTIONS = ("a", "two cats sleeping on a long sofa in the sun")
#: Config fields that declare how many keys a token attends to once a sequence is longer (Doge's
#: ``keep_window_size``: the keys of largest dynamic weight; sliding-window and local attention):
#: a caption within the window never shows whether padding changes what is kept (`declared_window`).
WINDOW_FIELDS = ("keep_window_size", "sliding_window", "local_attention", "attention_window")


def declared_window(config: Any) -> tuple[str, int] | None:
    """(field, size) of the smallest attention window ``config`` declares (`WINDOW_FIELDS`; a list
    of per-layer sizes counts its smallest), None when it declares none (unset, null or not a
    positive integer)."""
    found = []
    sub = getattr(config, "text_config", None)  # a vision-language model's text part (Gemma 3) declares its own
    for part, name in ((c, n) for c in (config, sub) if c is not None for n in WINDOW_FIELDS):
        value = _config_field(part, name)
        for size in value if isinstance(value, (list, tuple)) else (value,):
            if is_int(size) and size > 0:
                found.append((size, name))
    if not found:
        return None
    size, name = min(found)
    return name, size


def _config_field(config: Any, name: str) -> Any:
    """``config.<name>`` (None when absent); for a field a heterogeneous config keeps per layer
    (transformers' ``per_layer_config``: NeoMME's ``sliding_window``, whose global reading raises
    ``AmbiguousGlobalPerLayerAttributeError``), the list of its layers' values. Any other error
    (a bug) is raised: only that one means "not readable globally for this config" (the 802 config
    classes of transformers 5.23 built with their defaults: NeoMME's ``sliding_window`` is the only
    `WINDOW_FIELDS` read, on them or their ``text_config``, that raises)."""
    try:
        return getattr(config, name, None)
    except _per_layer_error():
        layers = getattr(config, "per_layer_config", None) or ()
        return [getattr(layer, name, None) for layer in layers]


def _per_layer_error() -> type[BaseException]:
    """transformers' ``AmbiguousGlobalPerLayerAttributeError`` (a ``RuntimeError``); where this
    transformers has no heterogeneous configs, an exception type nothing raises."""
    try:
        from transformers.integrations.heterogeneity import AmbiguousGlobalPerLayerAttributeError
    except ImportError:
        return _NeverRaised
    return AmbiguousGlobalPerLayerAttributeError


class _NeverRaised(Exception):
    """Caught where transformers lacks ``AmbiguousGlobalPerLayerAttributeError``: never raised."""


def _probe_words(n: int) -> str:
    """The first ``n`` words of the long probe caption repeated (``n`` >= 1)."""
    words = _PROBE_CAPTIONS[1].split()
    return " ".join(words[i % len(words)] for i in range(n))


def _fewest_words(enough: Callable[[int], bool], limit: int = 1 << 20) -> int:
    """The smallest ``n`` >= 1 with ``enough(n)``, for ``enough`` that turns true as ``n`` grows and
    stays true (token counts of longer texts): doubling, then a binary search (``limit``: the most
    tried, returned when nothing smaller is enough)."""
    hi = 1
    while not enough(hi) and hi < limit:
        hi *= 2
    lo = hi // 2  # not enough (or 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi
_LOG = logging.getLogger("prh.extract")


def _input_embedding_weight(spec: ModelSpec, model: torch.nn.Module) -> torch.Tensor:
    """The token embedding matrix (its device is where the token ids go): ``get_input_embeddings``,
    else the ``nn.Embedding`` of ``vocab_size`` rows in the model's ``embeddings`` module (`_embeddings_table`:
    OWL-ViT's and GroupViT's CLIP-like text towers, which do not implement it); a `ModelInputError`
    for a module with neither (FSMT's encoder)."""
    try:
        return model.get_input_embeddings().weight
    except (AttributeError, NotImplementedError) as exc:
        table = _embeddings_table(model)
        if table is not None:
            return table.weight
        raise ModelInputError(spec.name, spec.id, f"{type(model).__name__} has no input token embeddings "
                              f"(get_input_embeddings: {type(exc).__name__}: {exc}): not usable as a language "
                              "model here") from exc


def _embeddings_table(model: torch.nn.Module) -> torch.nn.Embedding | None:
    """The first ``nn.Embedding`` with ``config.vocab_size`` rows inside the model's ``embeddings``
    module (``token_embedding`` of a CLIP-like text tower), or None."""
    emb = getattr(model, "embeddings", None)
    rows = getattr(getattr(model, "config", None), "vocab_size", None)
    if not isinstance(emb, torch.nn.Module) or not isinstance(rows, int):
        return None
    return next((m for m in emb.modules() if isinstance(m, torch.nn.Embedding) and m.num_embeddings == rows), None)


def _refuse_empty(spec: ModelSpec, items: Sequence[str], mask: torch.Tensor) -> None:
    """`ModelInputError` naming the first caption that tokenizes to no token at all (mask `(B, T)`
    row of zeros: an empty caption with a tokenizer that adds no special tokens): nothing to pool."""
    empty = (mask.sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        more = f" ({len(empty)} such captions in this batch)" if len(empty) > 1 else ""
        raise ModelInputError(spec.name, spec.id, f"caption {items[empty[0]]!r} tokenizes to no token (its tokenizer "
                              f"adds no special tokens): nothing to pool{more}; drop or fill such captions")


def _unpadded(p: PreparedText, rows: torch.Tensor) -> PreparedText:
    """Rows ``rows`` of a padded batch, all of one token length n, without their pad columns: `(g, n)`
    tensors, real tokens in order (either padding side), without position ids (none are passed
    without pads: the model's own, as for a caption alone)."""
    keep = p.attention_mask[rows].bool()
    n = int(keep[0].sum())

    def cut(t: torch.Tensor) -> torch.Tensor:
        return t[rows][keep].view(len(rows), n)

    return PreparedText(cut(p.input_ids), cut(p.attention_mask), cut(p.special_tokens_mask),
                        {k: cut(v) for k, v in p.extra.items() if k != "position_ids"}, 0)


def _merged(parts: list[tuple[torch.Tensor, BatchOutput]], n: int) -> BatchOutput:
    """One `BatchOutput` of ``n`` rows from outputs of row subsets (``rows``, output) of a batch."""
    first = parts[0][1]
    layers = [np.empty((n, a.shape[1]), dtype=np.float32) for a in first.layers]
    row_nll = np.zeros(n, dtype=np.float64) if first.row_nll is not None else None
    row_targets = np.zeros(n, dtype=np.int64) if first.row_targets is not None else None
    for rows, out in parts:
        idx = rows.numpy()
        for layer, a in zip(layers, out.layers):
            layer[idx] = a
        if row_nll is not None and out.row_nll is not None:
            row_nll[idx] = out.row_nll
        if row_targets is not None and out.row_targets is not None:
            row_targets[idx] = out.row_targets
    return BatchOutput(layers, nll_nats=sum(out.nll_nats for _, out in parts),
                       n_targets=sum(out.n_targets for _, out in parts), row_nll=row_nll, row_targets=row_targets)


def _pads_swapped(p: PreparedText) -> PreparedText:
    """The batch with every pad token id replaced by the first real, non-special token of the last
    row (attention mask unchanged): a model that masks its pads gives the same features."""
    real = p.attention_mask.bool() & ~p.special_tokens_mask.bool()
    token = p.input_ids[-1][real[-1]][:1]
    if token.numel() == 0:
        return p
    ids = torch.where(p.attention_mask.bool(), p.input_ids, token)
    return PreparedText(ids, p.attention_mask, p.special_tokens_mask, p.extra, p.n_truncated)



#: Model types whose ``hidden_states`` hold no embedding output but [block 1 .. block N, final
#: norm(block N)] (transformers 5's Mamba, FalconMamba, RWKV, and Mamba2 before 5.25, whose Mamba2
#: returns the embedding output first): used only where the probe cannot tell
#: (`_first_state_is_a_block`), which finds the layout, either way, on these and on other models.
NO_EMBEDDING_STATE = frozenset({"mamba", "mamba2", "falcon_mamba", "rwkv"})


class EmbeddingState:
    """The embedding output put back in front of a model's ``hidden_states`` that lack it.

    A hook keeps, each forward, the input of the first block `(B, T, D)` (what ``hidden_states[0]``
    is in every other model: the embedding output), or, with no block list found, the output of the
    input embedding module. `restore` turns [block 1 .. block N, final norm(block N)] into
    [embedding, block 1 .. block N-1, final norm(block N)]: N + 1 states, the last block after the
    final norm, as Llama's hidden_states are (``drop_unnormed=False``: a tuple of the N blocks alone
    gets the embedding in front only)."""

    def __init__(self, module: torch.nn.Module, first_block: bool, drop_unnormed: bool) -> None:
        self.drop_unnormed = drop_unnormed
        self._output: torch.Tensor | None = None
        if first_block:
            self._handle = module.register_forward_pre_hook(self._keep_input, with_kwargs=True)
        else:
            self._handle = module.register_forward_hook(self._keep_output)

    def _keep_input(self, module: torch.nn.Module, args: Any, kwargs: Any) -> None:
        """Pre-hook: the first call's input in this forward (a copy: a block may change it in place)."""
        first = args[0] if args else kwargs.get("hidden_states")
        if self._output is None and isinstance(first, torch.Tensor):
            self._output = first.detach().clone()

    def _keep_output(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        """Hook: the first call's output in this forward."""
        if self._output is None:
            self._output = _first_tensor(output)

    @property
    def kept(self) -> torch.Tensor | None:
        """What the hook kept in the last forward (None before one)."""
        return self._output

    def clear(self) -> None:
        """Forget what was kept (before a forward: a failed one may have left a tensor)."""
        self._output = None

    def remove(self) -> None:
        """Remove the hook from the module."""
        self._handle.remove()

    def restore(self, states: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """``states`` as returned by the model -> embedding output first, N + 1 states."""
        embedded, self._output = self._output, None
        if embedded is None:
            raise RuntimeError("the first block (or the input embedding module) did not run in this forward pass")
        blocks = states[:-2] + states[-1:] if self.drop_unnormed else states
        return (embedded, *blocks)


def block_list(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The model's list of blocks: its first ``ModuleList`` with ``config.num_hidden_layers``
    modules, or None (no such count, or no such list)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not isinstance(n, int) or n <= 0:
        return None
    return next((m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n), None)


def _first_tensor(output: Any) -> torch.Tensor | None:
    """A module's output tensor (the first of a tuple, or ``last_hidden_state``/``[0]`` of an output object)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _first_state_is_a_block(first_state: torch.Tensor, block_input: torch.Tensor | None,
                            block_output: torch.Tensor | None) -> bool | None:
    """Whether ``hidden_states[0]`` `(B, T, D)` is the first block's output (True) or its input, the
    embedding output (False); None where the probe cannot tell: equal to both (a block that is the
    identity at random initialisation, e.g. zero-initialised output projections as NeoMME's), to
    neither, or no block caught (``None``: no block list found)."""

    def same(t: torch.Tensor | None) -> bool:
        return t is not None and t.shape == first_state.shape and torch.equal(t.to(first_state.device), first_state)

    is_output, is_input = same(block_output), same(block_input)
    return None if is_output == is_input else is_output


@dataclass
class FittedTexts:
    """Captions as fed to the model, fitted to ``max_length`` (`HFLanguageExtractor.fitted`)."""

    texts: list[str]  # prompt applied; a prompted caption too long for max_length shortened, the prompt whole
    lengths: list[int]  # tokens each text is fed as, special tokens included (<= max_length)
    cut: list[int]  # rows whose caption lost text: shortened (prompt), or its tokens truncated (no prompt)


def shortened_caption(tokenizer: Any, spec: ModelSpec, caption: str) -> tuple[str, int] | None:
    """The prompted text of a cut of ``caption`` (its first characters, or its last with
    ``truncation_side='left'``) whose tokens, special ones included, fit ``spec.max_length``, and
    their number; None when no character fits beside the prompt. Binary search over the number of
    characters kept (a cut at a character never splits UTF-8). The cut always fits, but it is not
    always the longest that does: the token count does not grow with the characters kept (with
    WordPiece or BPE a word cut in its middle costs more tokens than the whole word), so the
    search can stop short, inside a word ('A photo of two cats sl' where '... cats sleeping '
    fits at the same count). A session-24 hunt counted 39 such cuts over 5 captions x 3 prompts x
    max_length 4-29 with MiniLM's tokenizer. Fixing it changes features (this module is in the
    feature code version): left for the next change that re-extracts anyway."""
    from_end = getattr(tokenizer, "truncation_side", "right") == "left"

    def tokens(k: int) -> tuple[str, int]:
        text = spec.format_text(caption[len(caption) - k:] if from_end else caption[:k])
        return text, len(tokenizer(text, truncation=False)["input_ids"])

    best: tuple[str, int] | None = None
    lo, hi = 0, len(caption)  # caption[:hi] is known not to fit; caption[:lo] fits or lo == 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        text, n = tokens(mid)
        if n <= spec.max_length:
            lo, best = mid, (text, n)
        else:
            hi = mid
    return best


def kept_bytes(tokenizer: Any, text: str, max_length: int) -> int:
    """UTF-8 bytes of the part of ``text`` that its first ``max_length`` tokens (its last, with
    ``truncation_side='left'``) cover, special tokens aside: from the tokenizer's character offsets
    (a fast tokenizer), else the bytes of those tokens decoded (byte-level ByT5: one per token).
    Where the cut falls inside a multi-byte character, the two err in opposite directions by at
    most that character's other bytes (3): offsets count the whole character, decoding drops its
    kept part (about 1% of such a caption's bits per byte)."""
    fast = bool(getattr(tokenizer, "is_fast", False))
    enc = tokenizer(text, truncation=True, max_length=max_length, return_special_tokens_mask=True,
                    **({"return_offsets_mapping": True} if fast else {}))
    real = [i for i, special in enumerate(enc["special_tokens_mask"]) if not special]
    if not real:
        return 0
    if fast:
        spans = [enc["offset_mapping"][i] for i in real]
        from_end = getattr(tokenizer, "truncation_side", "right") == "left"
        kept = text[spans[0][0]:] if from_end else text[:spans[-1][1]]
    else:
        kept = tokenizer.decode([enc["input_ids"][i] for i in real], skip_special_tokens=True)
    return len(kept.encode("utf-8"))
