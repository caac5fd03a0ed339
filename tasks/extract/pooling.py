"""Pooling of per-token / per-position hidden states into one vector per sample (pure torch).

Every function returns `(B, D)` in float32, whatever the input dtype, and never lets padded
positions influence the result (masked with `torch.where`, so NaN/inf at pads cannot leak).
"""

from __future__ import annotations

import torch


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid tokens. hidden `(B, T, D)`, mask `(B, T)` (1 = valid) -> `(B, D)` float32.

    Works for any padding side. Every row must have at least one valid token (a row without
    one would give zeros: `hf_language` refuses such a caption before any forward).
    """
    valid = mask.to(torch.bool).unsqueeze(-1)
    h = torch.where(valid, hidden.float(), 0.0)
    count = valid.sum(dim=1).clamp_min(1).to(h.dtype)
    return h.sum(dim=1) / count


def last_valid_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last valid token of each row, for left or right padding. mask `(B, T)` -> `(B,)`.

    >>> last_valid_index(torch.tensor([[1, 1, 0], [0, 1, 1]]))
    tensor([1, 2])
    """
    t = mask.shape[1]
    positions = torch.arange(t, device=mask.device).expand_as(mask)
    return torch.where(mask.to(torch.bool), positions, -1).amax(dim=1).clamp_min(0)


def last_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of the last valid token. hidden `(B, T, D)`, mask `(B, T)` -> `(B, D)` float32."""
    idx = last_valid_index(mask)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx].float()


def pool_tokens(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Language pooling: ``'avg'`` (masked mean) or ``'last'`` (last valid token) -> `(B, D)` float32."""
    if how == "avg":
        return masked_mean(hidden, mask)
    if how == "last":
        return last_token(hidden, mask)
    raise ValueError(f"unknown language pooling {how!r}: use 'avg' or 'last'")


def spatial_mean(feature_map: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """Global average pooling of a feature map over its H x W positions -> `(B, C)` float32.

    `(B, C, H, W)` (CNN stages, the default) or, with ``channels_last``, `(B, H, W, C)` (SAM's
    vision encoder, DINAT: transformers returns their hidden states that way)."""
    return feature_map.float().mean(dim=(1, 2) if channels_last else (2, 3))


def pool_vision(hidden: torch.Tensor, how: str, num_prefix_tokens: int, channels_last: bool = False) -> torch.Tensor:
    """Vision pooling of one hidden state -> `(B, D)` float32.

    - 4-D feature maps, `(B, C, H, W)` (CNN stages) or `(B, H, W, C)` with ``channels_last``:
      global average pooling over H x W, whatever `how` is (`'cls'` is rejected earlier, at load
      time, for such models).
    - `(B, T, D)` token sequences whose first `num_prefix_tokens` are CLS/register tokens:
      ``'cls'`` takes token 0; ``'avg'`` averages the patch tokens only (prefix tokens excluded,
      as timm's ``global_pool='avg'``).
    """
    if hidden.dim() == 4:
        return spatial_mean(hidden, channels_last)
    if hidden.dim() != 3:
        raise ValueError(f"cannot pool a vision hidden state of shape {tuple(hidden.shape)}")
    if how == "cls":
        if num_prefix_tokens < 1:
            raise ValueError("'cls' pooling needs a model with a CLS token (this one has none): use 'avg'")
        return hidden[:, 0].float()
    if how == "avg":
        return hidden[:, num_prefix_tokens:].float().mean(dim=1)
    raise ValueError(f"unknown vision pooling {how!r}: use 'avg' or 'cls'")


def pool_patches(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Vision pooling of one hidden state of a patch model (SigLIP 2 NaFlex), `(B, N, D)` over the
    N patch positions its processor gave, ``mask`` `(B, N)` (1 = the image's patch, 0 = padding)
    -> `(B, D)` float32. ``'avg'``: mean over each image's own patches (`masked_mean`); ``'cls'``
    is refused: such a model has no CLS token (as SigLIP)."""
    if hidden.dim() != 3 or tuple(hidden.shape[:2]) != tuple(mask.shape):
        raise ValueError(f"a hidden state of shape {tuple(hidden.shape)} does not hold one token per patch position "
                         f"of the mask {tuple(mask.shape)}: cannot tell the image's patches")
    if how == "cls":
        raise ValueError("'cls' pooling needs a model with a CLS token (this one has none): use 'avg'")
    if how == "avg":
        return masked_mean(hidden, mask)
    raise ValueError(f"unknown vision pooling {how!r}: use 'avg' or 'cls'")
