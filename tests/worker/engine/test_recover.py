"""Closed-form recovery: exact refits of single layers, kept-channel tracking through
Torch-Pruning, and a whole pruned network recovered exactly where that is possible."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn

from worker.engine import im2col
from worker.engine import recover as R


def _exact_case(true: nn.Module, x: torch.Tensor, tol: float = 1e-8, atol: float = 1e-4) -> None:
    """Refit a randomly initialised copy of ``true`` from rows of ``x`` / ``true(x)``; it must
    then reproduce ``true`` on a fresh input."""
    student = copy.deepcopy(true)
    with torch.no_grad():
        for p in student.parameters():
            p.normal_()
        out = true(x)
    gen = torch.Generator().manual_seed(0)
    pos = R.sample_positions(out, 4096, gen)
    rows = R.layer_rows(student, x, pos)
    before, after = R.refit_layer(student, rows, R.output_rows(out, pos), ridge=1e-9)
    assert after < tol < before
    fresh = torch.randn_like(x)
    with torch.no_grad():
        torch.testing.assert_close(student(fresh), true(fresh), atol=atol, rtol=1e-4)


def test_wide_layers_use_a_float32_gram_and_still_fit() -> None:
    wide = nn.Conv2d(128, 4, 3, padding=1)  # d = 1152 features: float32 Gram
    _exact_case(wide, torch.randn(3, 128, 40, 40), tol=1e-6, atol=2e-3)


def test_exact_linear() -> None:
    _exact_case(nn.Linear(12, 7), torch.randn(300, 12))


def test_exact_linear_on_3d_input() -> None:
    _exact_case(nn.Linear(6, 5, bias=False), torch.randn(20, 30, 6))


@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv2d(4, 6, 3, padding=1),
        nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, bias=False),
        nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(4, 6, 3, padding=1, groups=2),
        nn.Conv2d(6, 6, 3, padding=1, groups=6),  # depthwise
    ],
    ids=["conv", "strided-dilated", "reflect", "grouped", "depthwise"],
)
def test_exact_conv(layer: nn.Conv2d) -> None:
    _exact_case(layer, torch.randn(6, layer.in_channels, 13, 11))


@pytest.mark.parametrize(
    "layer",
    [
        nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1),
        nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1),
        nn.ConvTranspose2d(4, 6, 3, stride=1, padding=0, bias=False),
        nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1, groups=2),
    ],
    ids=["k4s2", "output-padding", "s1", "grouped"],
)
def test_exact_conv_transpose(layer: nn.ConvTranspose2d) -> None:
    _exact_case(layer, torch.randn(5, 4, 7, 9))


def test_transpose_weight_round_trip() -> None:
    w = torch.randn(6, 3, 4, 5)
    for g in (1, 2, 3):
        w_g = torch.randn(6, 6 // g, 4, 5) if g > 1 else w
        back = im2col.conv_weight_to_transpose(im2col.transpose_weight_to_conv(w_g, g), g)
        assert torch.equal(back, w_g)


def test_refit_keeps_the_old_weights_when_the_fit_is_not_better() -> None:
    layer = nn.Linear(3, 2)
    x = torch.randn(50, 3)
    with torch.no_grad():
        y = layer(x)
    w = layer.weight.detach().clone()
    before, after = R.refit_layer(layer, x, y, ridge=10.0)  # a heavy ridge fits worse than the truth
    assert after == before
    assert torch.equal(layer.weight, w)


class Redundant(nn.Module):
    """conv1's channels 4..7 are exact copies of 0..3, so removing them loses nothing that a refit
    of conv2 cannot restore (conv2 must add the copies' weights onto the kept channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 5, 3, padding=1)
        self.up = nn.ConvTranspose2d(5, 3, 4, stride=2, padding=1)
        with torch.no_grad():
            self.conv1.weight[4:] = self.conv1.weight[:4]
            self.conv1.bias[4:] = self.conv1.bias[:4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.conv2(self.act(self.conv1(x))))


def _prune_conv1_copies(model: nn.Module, example: torch.Tensor) -> dict[str, list[int]]:
    with R.track_kept_channels(model) as kept:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        dg.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[5, 4, 7, 6]).prune()
        return {k: list(v) for k, v in kept.items()}


def test_tracking_records_the_kept_channels() -> None:
    torch.manual_seed(0)
    model = Redundant()
    kept = _prune_conv1_copies(model, torch.randn(1, 3, 8, 8))
    assert kept["conv1"] == [0, 1, 2, 3]
    assert kept["conv2"] == [0, 1, 2, 3, 4]
    assert model.conv1.out_channels == 4 and model.conv2.in_channels == 4
    # the patch is removed: later prunings are not recorded into the old dict
    assert tp.dependency.Dependency.__call__.__name__ == "__call__"


def test_recover_restores_a_network_exactly_where_possible() -> None:
    torch.manual_seed(0)
    teacher = Redundant().eval()
    student = copy.deepcopy(teacher)
    x = torch.randn(16, 3, 12, 12)
    kept = _prune_conv1_copies(student, x[:1])
    with torch.no_grad():
        t_out = teacher(x)
        pruned_err = float((student(x) - t_out).pow(2).mean())
    result = R.recover(teacher, student, kept, {"x": x}, ridge=1e-9)
    assert result.refitted == ["conv1", "conv2", "up"]
    assert result.error_after < result.error_before
    fresh = torch.randn(4, 3, 10, 14)
    with torch.no_grad():
        torch.testing.assert_close(student(fresh), teacher(fresh), atol=1e-4, rtol=1e-3)
    assert pruned_err > 1e-3  # pruning alone did lose something


def test_recover_stops_at_the_deadline() -> None:
    torch.manual_seed(0)
    teacher = Redundant().eval()
    student = copy.deepcopy(teacher)
    x = torch.randn(4, 3, 8, 8)
    kept = _prune_conv1_copies(student, x[:1])
    w = student.conv2.weight.detach().clone()
    result = R.recover(teacher, student, kept, {"x": x}, deadline=0.0)
    assert result.refitted == [] and result.stopped_by == "deadline"
    assert torch.equal(student.conv2.weight, w)


def test_an_automatic_ridge_shrinks_towards_the_pruned_weights_where_rows_say_little() -> None:
    """Barely more rows than weights, noisy targets: plain least squares fits the noise and does
    worse than the pruned weights on fresh inputs of the same distribution; the automatic ridge,
    validated on other samples' rows, keeps close to the pruned weights and is no worse than them."""
    torch.manual_seed(0)
    true = nn.Linear(16, 4)
    pruned = copy.deepcopy(true)
    with torch.no_grad():
        pruned.weight.add_(0.05 * torch.randn_like(pruned.weight))  # close to the truth
    x = torch.randn(24, 16)
    with torch.no_grad():
        y = true(x) + 0.5 * torch.randn(24, 4)  # noisy targets
    fresh = torch.randn(2000, 16)

    def fresh_error(layer: nn.Module) -> float:
        with torch.no_grad():
            return float((layer(fresh) - true(fresh)).pow(2).mean())

    plain = copy.deepcopy(pruned)
    R.refit_layer(plain, x, y, ridge=1e-6, to_pruned=False)
    auto = copy.deepcopy(pruned)
    R.refit_layer(auto, x, y, ridge=None, validate=R.validation_rows(torch.arange(24)[:, None]))
    assert fresh_error(plain) > 3 * fresh_error(pruned)  # the trap is real
    assert fresh_error(auto) <= fresh_error(pruned) * 1.05


def test_validation_rows_are_whole_samples() -> None:
    pos = torch.tensor([[0, 1, 1], [1, 0, 0], [4, 2, 2], [5, 3, 3], [8, 0, 1]])
    assert R.validation_rows(pos).tolist() == [True, False, True, False, True]
    with pytest.raises(ValueError, match="validation rows"):
        R.refit_layer(nn.Linear(2, 2), torch.randn(5, 2), torch.randn(5, 2), ridge=None)


def test_rows_fall_with_width_past_the_full_gram_width_and_never_below_the_floor() -> None:
    narrow = nn.Conv2d(32, 8, 3)  # D = 288
    at = nn.Conv2d(R.GRAM_FULL_D // 9, 8, 3)  # D just under the full-rows width
    wide = nn.Conv2d(512, 8, 3)  # D = 4608
    assert R.rows_for(narrow) == R.MAX_ROWS
    assert R.rows_for(at) == R.MAX_ROWS
    assert R.rows_for(wide) == R.MIN_ROWS
    mid = nn.Conv2d(2 * R.GRAM_FULL_D // 9, 8, 3)  # about twice as wide: a quarter of the rows, floored
    assert R.rows_for(mid) == max(R.MIN_ROWS, int(R.MAX_ROWS * (R.GRAM_FULL_D / (mid.in_channels * 9)) ** 2))
    assert R.rows_for(narrow, 100) == 100  # a caller's smaller number is kept


def test_recover_gives_a_narrow_layer_more_rows_than_a_wide_one(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    wide = 2 * R.GRAM_FULL_D // 9 + 1  # the second conv's D = 9 x this > 2 x GRAM_FULL_D
    net = nn.Sequential(nn.Conv2d(3, wide, 3, padding=1), nn.ReLU(), nn.Conv2d(wide, 4, 3, padding=1))
    teacher = copy.deepcopy(net)
    batch = {"x": torch.randn(4, 3, 64, 64)}  # 16384 output positions per layer
    seen: dict[str, int] = {}
    original = R.refit_layer

    def spy(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, *a: object) -> tuple[float, float]:
        seen[next(n for n, m in net.named_modules() if m is layer)] = x.shape[0]
        return original(layer, x, y, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(R, "refit_layer", spy)
    R.recover(teacher, net, {}, batch)
    assert seen == {"0": 4 * 64 * 64, "2": R.MIN_ROWS}
