"""Next-token negative log-likelihood and bits per byte (the paper's language-model quality axis).

Convention: bits per byte = (sum over predicted tokens of -ln p(token | prefix)) / ln 2 / (total
UTF-8 bytes of the texts fed to the model, prompt included if any). A token is predicted when it
and the token before it are both real (attention mask) and it is not a special token (BOS, EOS,
[SEP], ...): so the first token of a text is predicted only when the tokenizer adds a BOS/[CLS]
in front of it (Llama does, GPT-2 does not), and end-of-text markers are never scored. Texts cut by
`max_length` lose their tail from the numerator only (counted in ``bpb_truncated_texts``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def next_token_nll(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    target_mask: torch.Tensor | None = None,
) -> tuple[float, int]:
    """Summed next-token NLL in nats and the number of predicted tokens.

    logits `(B, T, V)` (``logits[:, t]`` predicts ``input_ids[:, t + 1]``), input_ids and
    attention_mask `(B, T)`, target_mask `(B, T)` bool (True = may be scored; e.g. not special).
    Correct under left or right padding (pads are masked; real tokens are contiguous).
    """
    valid = attention_mask[:, :-1].bool() & attention_mask[:, 1:].bool()
    if target_mask is not None:
        valid &= target_mask[:, 1:].bool()
    n = int(valid.sum())
    if n == 0:
        return 0.0, 0
    nll = F.cross_entropy(logits[:, :-1][valid].float(), input_ids[:, 1:][valid], reduction="sum")
    return float(nll), n


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """``nll_nats / ln 2 / n_bytes``."""
    if n_bytes <= 0:
        raise ValueError("bits per byte needs at least one byte of text")
    return nll_nats / math.log(2) / n_bytes
