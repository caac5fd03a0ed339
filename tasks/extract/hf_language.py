"""Language feature extraction for Hugging Face encoders and causal LMs.

Layers: every entry of ``hidden_states``: ``embeddings`` (the embedding output: token embeddings,
plus position embeddings where the model adds them; rotary models such as Llama add none), then
``layer.01`` .. ``layer.NN`` (one per transformer layer, as transformers returns them: for some
causal LMs, e.g. Llama in transformers 5, the last one is after the final norm).

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

With a prompt, a caption must keep a token of its own after truncation: the pre-check
(`hf_models._check_prompt_room`) refuses a ``max_length`` that the prompt fills, and `prepare`
raises `ModelInputError` for a cut caption that kept nothing but prompt tokens (never pooled).

Causal LMs also report next-token NLL for bits per byte (see `tasks.extract.bpb`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from tasks.extract.base import BatchOutput, Extractor, count_parameters, layer_names, require_hidden_states, to_numpy_f32
from tasks.extract.bpb import next_token_nll_rows
from tasks.extract.errors import ModelInputError
from tasks.extract.hf_models import LoadedModel, input_device, piece_ids, position_offset, prompt_pieces
from tasks.extract.pooling import pool_tokens
from tasks.extract.spec import ModelSpec


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
        self._input_device = input_device(self.model, self.model.get_input_embeddings().weight)
        self._finish_init(["a"], lambda n: layer_names("embeddings", "layer", n - 1))

    def texts(self, items: Sequence[str]) -> list[str]:
        """Captions as fed to the model (prompt template applied)."""
        out = []
        for it in items:
            if not isinstance(it, str):
                raise TypeError(f"language items must be str, got {type(it).__name__}")
            out.append(self.spec.format_text(it))
        return out

    def sort_lengths(self, items: Sequence[str]) -> list[int]:
        ids = self.tokenizer(self.texts(items), truncation=True, max_length=self.spec.max_length)["input_ids"]
        return [len(x) for x in ids]

    def text_bytes(self, items: Sequence[str]) -> list[int]:
        return [len(t.encode("utf-8")) for t in self.texts(items)]

    @property
    def padding_side(self) -> str:
        """The side batches are padded on: the tokenizer's, but ``right`` where left padding would
        move a caption's positions (no ``position_ids`` input, or positions from a ``padding_idx``)."""
        side = getattr(self.tokenizer, "padding_side", "right")
        return side if side != "left" or self._left_padding_ok else "right"

    def prepare(self, items: Sequence[str]) -> PreparedText:
        texts = self.texts(items)
        side = self.padding_side  # passed only when it overrides the tokenizer's own
        own = {} if side == getattr(self.tokenizer, "padding_side", "right") else {"padding_side": side}
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.spec.max_length,
            return_tensors="pt", return_special_tokens_mask=True, **own,
        )
        mask = enc["attention_mask"]
        extra: dict[str, torch.Tensor] = {}
        if "token_type_ids" in enc and "token_type_ids" in self._params and self._token_types:
            extra["token_type_ids"] = enc["token_type_ids"]
        left_padded = bool((mask[:, 0] == 0).any())
        if left_padded and self._left_padding_ok:
            extra["position_ids"] = (mask.long().cumsum(dim=1) - 1).clamp_min(0)
        n_truncated = 0
        if mask.shape[1] >= self.spec.max_length:
            full = self.tokenizer(texts, truncation=False)["input_ids"]
            cut = [i for i, x in enumerate(full) if len(x) > self.spec.max_length]
            n_truncated = len(cut)
            self._refuse_captions_cut_away(items, enc, cut)
        prepared = PreparedText(enc["input_ids"], mask, enc["special_tokens_mask"], extra, n_truncated)
        if self.device.type == "cuda":
            prepared = _pinned(prepared)
        return prepared

    def _refuse_captions_cut_away(self, items: Sequence[str], enc: Any, cut: list[int]) -> None:
        """Raise `ModelInputError` when a cut caption (row index in ``cut``) kept no token of its own:
        its kept non-special tokens are the prompt's text before ``{text}`` tokenized alone (or, with
        ``truncation_side='left'``, the text after it), so its features would be the prompt's."""
        if self.spec.prompt is None or not cut:
            return
        pieces = prompt_pieces(self.spec.prompt)
        left = getattr(self.tokenizer, "truncation_side", "right") == "left"
        prompt_ids = piece_ids(self.tokenizer, pieces[-1] if left else pieces[0])
        keep = enc["attention_mask"].bool() & ~enc["special_tokens_mask"].bool()
        for i in cut:
            kept = enc["input_ids"][i][keep[i]].tolist()
            n = len(kept)
            if n <= len(prompt_ids) and kept == (prompt_ids[len(prompt_ids) - n:] if left else prompt_ids[:n]):
                raise ModelInputError(self.spec.name, self.spec.id, f"caption {items[i]!r} keeps no token of its own: "
                                      f"max_length {self.spec.max_length} is filled by the prompt {self.spec.prompt!r} "
                                      "(its features would be the prompt's); raise max_length or shorten the prompt")

    @torch.inference_mode()
    def _run(self, p: PreparedText, with_logits: bool) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        dev = self._input_device
        inputs = {"input_ids": p.input_ids.to(dev, non_blocking=True),
                  "attention_mask": p.attention_mask.to(dev, non_blocking=True)}
        inputs.update({k: v.to(dev, non_blocking=True) for k, v in p.extra.items()})
        module, params = (self.lm, self._lm_params) if with_logits else (self.model, self._params)
        if "use_cache" in params:
            inputs["use_cache"] = False
        with self.full_float32():
            out = module(**inputs, output_hidden_states=True, return_dict=True)
        return require_hidden_states(self.spec, module, out), (out.logits if with_logits else None)

    @torch.inference_mode()
    def forward(self, prepared: PreparedText, with_nll: bool = False) -> BatchOutput:
        if with_nll and not self.is_causal_lm:
            raise ValueError(f"{self.spec.name} is not a causal LM: no bits per byte")
        states, logits = self._run(prepared, with_logits=with_nll)
        mask = prepared.attention_mask.to(states[0].device)
        layers = [to_numpy_f32(pool_tokens(h, mask.to(h.device), self.spec.pooling)) for h in states]
        if not with_nll:
            return BatchOutput(layers)
        assert logits is not None
        dev = logits.device
        rows, counts = next_token_nll_rows(
            logits, prepared.input_ids.to(dev), prepared.attention_mask.to(dev),
            ~prepared.special_tokens_mask.to(dev).bool(),
        )
        return BatchOutput(layers, nll_nats=float(rows.sum()), n_targets=int(counts.sum()), row_nll=rows.numpy(),
                           row_targets=counts.numpy().astype(np.int64))


def _pinned(p: PreparedText) -> PreparedText:
    return PreparedText(
        p.input_ids.pin_memory(), p.attention_mask.pin_memory(), p.special_tokens_mask.pin_memory(),
        {k: v.pin_memory() for k, v in p.extra.items()}, p.n_truncated,
    )
