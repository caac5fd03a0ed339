"""Mamba, Mamba2 (before transformers 5.25), FalconMamba and RWKV return hidden_states [block 1 ..
block N, final norm(block N)], with no embedding output: prh puts the embedding output in front and
drops the un-normed last block, so that ``embeddings`` is the embedding output and ``layer.NN`` the
last block after the final norm (as Llama's hidden_states are), N + 1 layers; a model of those types
that returns the embedding output first (5.25's Mamba2) is taken as it is. Checked against module
outputs caught by hooks in an independent forward of each caption alone."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import transformers

from tasks.extract import extract_all, load_extractor
from tasks.extract import hf_language
from tasks.extract.spec import ModelSpec
from tests.tasks.extract.helpers import TINY_LANGUAGE

SSM = {  # config class, tiny config, (attribute of the block list, of the final norm)
    "mamba": ("MambaConfig", dict(hidden_size=32, num_hidden_layers=3, state_size=4, expand=2, conv_kernel=4),
              ("layers", "norm_f")),
    "falcon_mamba": ("FalconMambaConfig", dict(hidden_size=32, num_hidden_layers=3, state_size=4, expand=2, conv_kernel=4),
                     ("layers", "norm_f")),
    "mamba2": ("Mamba2Config", dict(hidden_size=32, num_hidden_layers=3, state_size=4, expand=2, head_dim=8, num_heads=8,
                                    n_groups=1, conv_kernel=4), ("layers", "norm_f")),
    "rwkv": ("RwkvConfig", dict(hidden_size=32, num_hidden_layers=3, attention_hidden_size=32, intermediate_size=64,
                                context_length=128), ("blocks", "ln_out")),
}
CAPTIONS = ["a red apple", "two cats sleeping on a long sofa", "ok"]


def _spec(cls: str, config: dict) -> ModelSpec:
    return ModelSpec(name="m", loader="random_hf", id=cls, modality="language", config=config, max_length=64)


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def _reference(ex, caption: str, blocks_attr: str, norm_attr: str) -> list[np.ndarray]:
    """Mean over tokens (float64) of the embedding module's output, of blocks 1 .. N-1 and of the
    final norm, caught by hooks in a forward of the caption alone (no hidden_states asked for)."""
    model = ex.model
    mods = [model.get_input_embeddings(), *getattr(model, blocks_attr)[:-1], getattr(model, norm_attr)]
    caught: list[torch.Tensor | None] = [None] * len(mods)

    def hook(i):
        def keep(module, args, output):
            caught[i] = _first(output).detach()
        return keep

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(mods)]
    ids = torch.tensor([[b + 3 for b in caption.encode("utf-8")] + [1]])  # ByT5: byte + 3, then EOS (id 1)
    try:
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return [t[0].double().mean(dim=0).numpy() for t in caught]


@pytest.mark.parametrize("kind", sorted(SSM))
def test_embeddings_is_the_embedding_output_and_the_last_layer_is_after_the_final_norm(kind):
    _check_layers_against_hooks(kind)


def _check_layers_against_hooks(kind: str) -> None:
    """The SSM ``kind`` extracted: ``embeddings`` then ``layer.01`` .. ``layer.NN``, each equal to
    the hooked reference (`_reference`) for every caption."""
    cls, config, (blocks_attr, norm_attr) = SSM[kind]
    ex = load_extractor(_spec(cls, config), device="cpu")
    feats = extract_all(ex, CAPTIONS, batch_size=3)
    n = config["num_hidden_layers"]
    assert feats.layer_names == ["embeddings"] + [f"layer.{i:02d}" for i in range(1, n + 1)]
    for row, caption in enumerate(CAPTIONS):
        for name, layer, ref in zip(feats.layer_names, feats.layers, _reference(ex, caption, blocks_attr, norm_attr)):
            np.testing.assert_allclose(layer[row], ref, rtol=0, atol=2e-5, err_msg=f"{kind} {name} {caption!r}")


def test_found_without_the_model_type_list_and_not_for_llama(monkeypatch):
    """The probe finds the layout by itself (hidden_states[0] is the first block's output); a model
    whose hidden_states start with the embedding output is left alone."""
    monkeypatch.setattr(hf_language, "NO_EMBEDDING_STATE", frozenset())
    cls, config, _ = SSM["mamba"]
    assert load_extractor(_spec(cls, config), device="cpu")._embedding_state is not None
    cls, config = TINY_LANGUAGE["llama"]
    llama = load_extractor(_spec(cls, config), device="cpu")
    assert llama._embedding_state is None and len(llama.layer_names) == config["num_hidden_layers"] + 1


BASE_MODEL = {"mamba": "MambaModel", "falcon_mamba": "FalconMambaModel", "mamba2": "Mamba2Model", "rwkv": "RwkvModel"}


def _embedding_output_first(forward):
    """``forward`` of a model whose hidden_states are [block 1 .. block N, final norm(block N)] made
    to return them as transformers 5.25's Mamba2 does: [embedding output, block 1 .. block N-1,
    final norm(block N)] (same signature; left as they are where they already start with it)."""

    @functools.wraps(forward)
    def wrapped(self, input_ids=None, *args, **kwargs):
        out = forward(self, input_ids, *args, **kwargs)
        states = getattr(out, "hidden_states", None)
        if states is not None:
            embedded = self.get_input_embeddings()(input_ids)
            if not torch.equal(states[0], embedded):
                out.hidden_states = (embedded, *states[:-2], states[-1])
        return out

    return wrapped


@pytest.mark.parametrize("kind", sorted(SSM))
def test_a_listed_model_type_whose_hidden_states_start_with_the_embedding_output_is_taken_as_it_is(kind, monkeypatch):
    """transformers 5.25's Mamba2 returns the embedding output first, like other models: the layout is
    what the probe finds in the model's output, not what its type (`NO_EMBEDDING_STATE`) suggests, so
    ``embeddings`` stays the embedding output and ``layer.01`` block 1 (not the embedding output again,
    block 2 lost). Built here from each SSM's base model with its hidden_states rearranged so."""
    assert kind in hf_language.NO_EMBEDDING_STATE
    base = getattr(transformers, BASE_MODEL[kind])
    monkeypatch.setattr(base, "forward", _embedding_output_first(base.forward))
    _check_layers_against_hooks(kind)
