import dataclasses

import pytest

from percepiano import PRESETS, ModelConfig
from percepiano.config import PRESET_FEATURES, describe_deviations, get_preset


def test_defaults_are_the_published_han():
    cfg = ModelConfig()
    assert (cfg.note_size, cfg.voice_size, cfg.beat_size, cfg.measure_size) == (256, 256, 256, 256)
    assert (cfg.note_layers, cfg.voice_layers, cfg.beat_layers, cfg.measure_layers) == (2, 2, 2, 1)
    assert (cfg.num_heads, cfg.dropout, cfg.num_labels, cfg.level, cfg.input_size) == (8, 0.2, 19, "measure", 101)
    assert cfg.is_original() and cfg.deviations() == {}


def test_presets():
    assert PRESETS["han"].level == "measure" and PRESETS["han"].input_size == 101
    assert PRESETS["bilstm"].level == "note" and PRESETS["bilstm"].input_size == 9
    assert PRESETS["bilstm_sa"].level == "note" and PRESETS["bilstm_sa"].input_size == 101
    assert set(PRESET_FEATURES) == set(PRESETS)
    assert all(cfg.is_original() for cfg in PRESETS.values())


def test_hidden_size_sets_every_level():
    cfg = ModelConfig(input_size=78, hidden_size=16, num_heads=8, level="measure", dropout=0.1)
    assert (cfg.note_size, cfg.voice_size, cfg.beat_size, cfg.measure_size) == (16, 16, 16, 16)
    assert cfg.dropout == 0.1


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ModelConfig().level = "note"


@pytest.mark.parametrize(
    "change, listed",
    [
        ({"boundary_rule": "diff_gt_0"}, "boundary_rule"),
        ({"attention_temperature": 0.5}, "attention_temperature"),
        ({"init": "orthogonal_lstm"}, "init"),
        ({"init": "xavier_attention"}, "init"),
    ],
)
def test_each_deviation_is_listed(change, listed):
    cfg = ModelConfig(**change)
    assert list(cfg.deviations()) == [listed]
    assert not cfg.is_original()
    (line,) = describe_deviations(cfg)
    assert line.startswith(listed) and "original" in line


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"level": "piece"}, "level"),
        ({"boundary_rule": "diff_ge_1"}, "boundary_rule"),
        ({"init": "he"}, "init"),
        ({"attention_temperature": 0.0}, "attention_temperature"),
        ({"dropout": 1.0}, "dropout"),
        ({"hidden_size": 10, "num_heads": 8}, r"num_heads = 8 \(hidden_size 10, --hidden-size: choose a multiple of 4\)"),
        ({"note_layers": 0}, r"note_layers: expected a positive integer, got 0"),
        ({"beat_layers": 2.5}, r"beat_layers: expected a positive integer, got 2.5"),
        ({"measure_layers": True}, r"measure_layers: expected a positive integer, got True"),
    ],
)
def test_bad_values_name_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**bad)


def test_round_trip_and_unknown_fields():
    cfg = get_preset("bilstm", dropout=0.0)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown fields"):
        ModelConfig.from_dict({"temperature": 0.5})
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("transformer")
