"""Next-token negative log-likelihood and bits per byte (the paper's language-model quality axis).

Bits per byte of one text = (sum over its predicted tokens of -ln p(token | prefix)) / ln 2 /
(its UTF-8 bytes as fed to the model, prompt included if any). The paper's figure (its
``cross_entropy_to_bits_per_unit``, then a mean) is the MEAN over texts of that per-text value
(:func:`mean_bits_per_byte`); :func:`bits_per_byte` is the pooled one (all bits over all bytes),
kept beside it. A token is predicted when it and the token before it are both real (attention
mask) and it is not a special token (BOS, EOS, [SEP], ...): so the first token of a text is
predicted only when the tokenizer adds a BOS/[CLS] in front of it (Llama does, GPT-2 does not), and
end-of-text markers are never scored. A text cut by `max_length` counts, in both numerator and
denominator, only what was fed: its NLL over the kept tokens, divided by the UTF-8 bytes of the
prompt and the kept caption (`HFLanguageExtractor.text_bytes`; counted in ``bpb_truncated_texts``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def next_token_nll_rows(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    target_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token NLL per text: ``(B,) float64`` nats summed over each row's predicted tokens, and
    ``(B,) int64`` their numbers, on the CPU (:func:`next_token_nll_rows_on_device`, copied)."""
    sums, counts = next_token_nll_rows_on_device(logits, input_ids, attention_mask, target_mask)
    return sums.cpu(), counts.cpu()


def next_token_nll_rows_on_device(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    target_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token NLL per text: ``(B,) float64`` nats summed over each row's predicted tokens, and
    ``(B,) int64`` their numbers, on the logits' device, without waiting for the device (nothing
    here reads a value back: the caller copies the two small results when it needs them).

    logits `(B, T, V)` (``logits[:, t]`` predicts ``input_ids[:, t + 1]``), input_ids and
    attention_mask `(B, T)`, target_mask `(B, T)` bool (True = may be scored; e.g. not special).
    Correct under left or right padding (pads are masked; real tokens are contiguous). Each
    token's NLL comes from ``cross_entropy`` on float32 logits (every position; the ones not
    predicted, pads included, are dropped before the sum, whatever their value); sums are float64.
    """
    valid = attention_mask[:, :-1].bool() & attention_mask[:, 1:].bool()
    if target_mask is not None:
        valid &= target_mask[:, 1:].bool()
    counts = valid.sum(dim=1).to(torch.int64)
    targets = torch.where(valid, input_ids[:, 1:], 0)  # a pad id need not be a vocabulary index
    shifted = logits[:, :-1].float()
    nll = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), reduction="none")
    nll = torch.where(valid, nll.view(valid.shape), 0.0)
    return nll.double().sum(dim=1), counts


def next_token_nll(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    target_mask: torch.Tensor | None = None,
) -> tuple[float, int]:
    """Summed next-token NLL in nats over the batch and the number of predicted tokens
    (:func:`next_token_nll_rows`, summed)."""
    sums, counts = next_token_nll_rows(logits, input_ids, attention_mask, target_mask)
    return float(sums.sum()), int(counts.sum())


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """``nll_nats / ln 2 / n_bytes``: the pooled bits per byte of texts with ``n_bytes`` bytes in all."""
    if n_bytes <= 0:
        raise ValueError("bits per byte needs at least one byte of text")
    return nll_nats / math.log(2) / n_bytes


def per_text_bits_per_byte(nll_nats: Sequence[float], n_bytes: Sequence[int],
                           n_targets: Sequence[int]) -> tuple[float, int]:
    """``(sum over texts of nll_i / ln 2 / bytes_i, number of texts)`` over the texts with at least
    one byte and one predicted token: the parts of :func:`mean_bits_per_byte` that add up over
    batches and shards. ``nll_nats``: each text's summed NLL in nats; ``n_bytes``: each text's
    UTF-8 bytes; ``n_targets``: each text's predicted tokens. A text with none (one token and no
    BOS before it) says nothing of the model: left out, not counted as 0 bits."""
    total, count = 0.0, 0
    for nll, size, scored in zip(nll_nats, n_bytes, n_targets, strict=True):
        if size > 0 and scored > 0:
            total += float(nll) / math.log(2) / size
            count += 1
    return total, count


def mean_bits_per_byte(bpb_sum: float, n_texts: int) -> float:
    """The paper's bits per byte: the mean over texts of each text's bits per byte, from
    :func:`per_text_bits_per_byte`'s parts."""
    if n_texts <= 0:
        raise ValueError("bits per byte needs at least one text with a byte")
    return bpb_sum / n_texts
