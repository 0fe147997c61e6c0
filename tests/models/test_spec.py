import pytest
from typer.testing import CliRunner

from ccnbench.cli import app
from ccnbench.errors import SpecError
from ccnbench.models import PRESETS, ModelSpec, spec_from_preset
from ccnbench.models.spec import VARIANTS


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"variant": "late"}, "variant", "unknown variant 'late'"),
        ({"branches": 0}, "branches", ">= 1"),
        ({"branches": -2}, "branches", ">= 1"),
        ({"variant": "feature", "input_mode": "shared"}, "input_mode", "one input per branch"),
        ({"variant": "multitask", "input_mode": "shared"}, "input_mode", "one input per branch"),
        ({"input_mode": "both"}, "input_mode", "separate, shared"),
        ({"volume": (9, 24, 24), "depth": 3}, "volume", "needs at least 10"),
        ({"volume": (24, -1, 24)}, "volume", "positive"),
        ({"volume": (24, 24)}, "volume", "three integers"),
        ({"filters": -8}, "filters", ">= 1"),
        ({"depth": 0}, "depth", ">= 1"),
        ({"classes": 0}, "classes", ">= 1"),
        ({"dropout": 1.0}, "dropout", "[0, 1)"),
        ({"seed": -1}, "seed", "non-negative"),
        (
            {"variant": "decision", "branches": 2, "decision_weights": (1.0,)},
            "decision_weights",
            "one weight per branch",
        ),
        (
            {"variant": "decision", "branches": 2, "decision_weights": (0.0, 0.0)},
            "decision_weights",
            "not all zero",
        ),
        ({"variant": "model", "decision_weights": (1.0, 1.0, 1.0)}, "decision_weights", "only decision"),
    ],
)
def test_invalid_spec_names_the_field(changes, field, words):
    values = {"variant": "model", **changes}
    with pytest.raises(SpecError) as info:
        ModelSpec(**values)
    assert info.value.field == field
    assert field in str(info.value) and words in str(info.value)


def test_every_preset_builds_every_variant():
    for preset in PRESETS:
        for variant in VARIANTS:
            spec = spec_from_preset(preset, variant)
            assert spec.features_per_extractor == spec.filters * (spec.volume[0] - 3 * spec.depth) ** 3


def test_spec_round_trips_through_dict_and_rejects_unknown_fields():
    spec = ModelSpec("decision", branches=2, decision_weights=(3.0, 1.0), volume=(13, 14, 15))
    again = ModelSpec.from_dict(spec.to_dict())
    assert again == spec and again.digest() == spec.digest()
    assert again.normalized_weights == (0.75, 0.25)
    with pytest.raises(SpecError, match="colour"):
        ModelSpec.from_dict({**spec.to_dict(), "colour": "red"})


def test_labels_name_the_size():
    assert spec_from_preset("medium", "model", branches=4).label == "model-n4@medium"
    assert spec_from_preset("small", "decision", input_mode="shared").label == "decision-n3-shared@small"
    assert ModelSpec("early", volume=(20, 21, 22), filters=6).label == "early-n3@20x21x22f6d2"


def test_digest_changes_with_the_seed():
    spec = ModelSpec("model")
    assert spec.digest() != spec.with_(seed=1).digest()


@pytest.mark.parametrize(
    "args",
    [
        ["variants", "--branches", "0"],
        ["variants", "--preset", "huge"],
        ["variants", "--no-such-option"],
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "Traceback" not in result.output
