"""`hf_language._config_field` reads a config field for the window probe: absent is None, a field a
heterogeneous config keeps per layer (transformers' ``AmbiguousGlobalPerLayerAttributeError``) is the
list of its layers' values, and any other error (a bug, in prh's code or the config's) is raised,
not read as "no such field" (it had caught every ``Exception``)."""

from __future__ import annotations

import pytest

from tasks.extract.hf_language import _config_field, declared_window

TINY_TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                 intermediate_size=37, max_position_embeddings=128)


def test_a_per_layer_field_is_read_per_layer_and_an_absent_one_is_none() -> None:
    from transformers import NeoMMEConfig

    config = NeoMMEConfig(**TINY_TEXT)
    want = [layer.sliding_window for layer in config.per_layer_config]
    assert _config_field(config, "sliding_window") == want and any(want)
    assert _config_field(config, "keep_window_size") is None


class _Broken:
    """A config whose field raises an error that means a bug, not an absent field."""

    per_layer_config = ()

    @property
    def sliding_window(self) -> int:
        raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")


def test_another_error_while_reading_a_field_is_raised_not_taken_for_absent() -> None:
    with pytest.raises(TypeError, match="unsupported operand"):
        _config_field(_Broken(), "sliding_window")
    with pytest.raises(TypeError, match="unsupported operand"):
        declared_window(_Broken())
