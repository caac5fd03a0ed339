"""What docs/extraction.md says of the paper's padding: its code left-pads every caption to the
longest one and passes no ``position_ids``. Learned positions read from the token index (GPT-2)
then shift; OPT's come from the attention mask; rotary (Llama) and ALiBi (BLOOM) are relative.
Checked on tiny random models against the same caption unpadded."""

from __future__ import annotations

import pytest
import torch

_SMALL = dict(vocab_size=64, pad_token_id=0)
MODELS = {
    "gpt2": ("GPT2Config", dict(n_layer=2, n_embd=32, n_head=2, n_positions=64, **_SMALL), False),
    "opt": ("OPTConfig", dict(num_hidden_layers=2, hidden_size=32, ffn_dim=64, num_attention_heads=2,
                              max_position_embeddings=64, word_embed_proj_dim=32, **_SMALL), True),
    "llama": ("LlamaConfig", dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                  num_key_value_heads=2, max_position_embeddings=64, **_SMALL), True),
    "bloom": ("BloomConfig", dict(n_layer=2, hidden_size=32, n_head=2, **_SMALL), True),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_left_padding_without_position_ids(kind):
    """Hidden states of a 5-token caption alone vs behind 4 pads (mask 0), no position_ids given:
    equal where positions come from the mask or are relative; not equal for GPT-2."""
    import transformers

    cls_name, config, invariant = MODELS[kind]
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(getattr(transformers, cls_name)(**config)).eval()
    ids = torch.tensor([[5, 9, 17, 33, 2]])
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)], dim=1)
    with torch.inference_mode():
        alone = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        shifted = model(input_ids=padded, attention_mask=mask).last_hidden_state[:, 4:]
    assert torch.allclose(alone, shifted, atol=1e-5) == invariant, (kind, float((alone - shifted).abs().max()))
