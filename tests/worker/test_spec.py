"""The torch-free contract: spec validation and the shared input-distribution rule."""

from __future__ import annotations

import argparse

import pytest

from worker.errors import BadSpecError
from worker.spec import MAX_CHANNEL_RATIO, Distribution, default_distribution
from worker.spec_cli import add_spec_arguments, spec_from_args, validate_spec


@pytest.mark.parametrize(
    ("shape", "dtype", "table", "expected"),
    [
        ([1, 3, 64, 64], "float32", False, Distribution.CALIBRATION),
        (["N", 3, "H", "W"], "float32", False, Distribution.CALIBRATION),
        ([1, 100, 1, 1], "float32", False, Distribution.NORMAL),  # DCGAN-style latent
        ([1, 64], "float32", False, Distribution.NORMAL),
        ([1], "int64", True, Distribution.RANDINT),
        ([1], "int64", False, None),
    ],
)
def test_default_distribution(shape: list, dtype: str, table: bool, expected: Distribution | None) -> None:
    assert default_distribution(shape, dtype, table) == expected


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_spec_arguments(p)
    return p.parse_args(list(argv))


def test_flags_build_a_spec() -> None:
    spec = spec_from_args(
        _args("--ratio", "0.3", "--loss", "l1=1,feature=0.5", "--target-macs", "2.5M", "--opset", "18")
    )
    assert spec.prune.ratio == 0.3 and spec.prune.target_macs == 2_500_000
    assert {str(k): v for k, v in spec.distill.losses.items()} == {"l1": 1.0, "feature": 0.5}
    assert spec.export.opset == 18


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"prune": {"ratio": 1.5}}, "prune.ratio"),
        ({"prune": {"ratio": MAX_CHANNEL_RATIO + 0.05}}, "at most"),
        ({"prune": {"method": "unstructured", "target_macs": 10}}, "target_macs applies"),
        ({"export": {"opset": 12}}, "export.opset"),
        ({"distill": {"losses": {"perceptual": 1}}}, "distill.losses"),
        ({"inputs": {"z": {"shape": [1, 8], "dtype": "int64"}}}, "randint"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_invalid_specs_name_the_field(raw: dict, needle: str) -> None:
    with pytest.raises(BadSpecError, match=needle):
        validate_spec(raw)


def test_unknown_loss_flag_lists_valid_names() -> None:
    with pytest.raises(BadSpecError, match="valid: l1, mse, ssim, feature"):
        spec_from_args(_args("--loss", "vgg=1"))


def test_progress_fraction_is_overall_and_monotonic() -> None:
    from worker.spec import Progress, Stage

    seq = [
        Progress(stage=Stage.IMPORT),
        Progress(stage=Stage.PRUNE, step=1, total=1),
        Progress(stage=Stage.DISTILL, step=1, total=100),
        Progress(stage=Stage.DISTILL, step=100, total=100),
        Progress(stage=Stage.EXPORT),
        Progress(stage=Stage.REPORT),
        Progress(stage=Stage.DONE, step=1, total=1),
    ]
    fractions = [p.fraction for p in seq]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert seq[3].fraction == pytest.approx(0.80)  # prune done (0.15) + all of distill (0.65)
    assert seq[2].stage_fraction == pytest.approx(0.01)
