"""Probing which layers can lose a channel: groups are tested together and halved only where
something breaks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from worker.engine import prunable


class FixedView(nn.Module):
    """``b``'s channels are read by a reshape to a fixed size: removing one breaks the model; the
    other convolutions can lose channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 3, padding=1)
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.d = nn.Conv2d(8, 8, 3, padding=1)
        self.e = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fixed = self.b(torch.relu(self.a(x))).reshape(x.shape[0], 4 * 8 * 8)  # 4 channels, or bust
        y = self.e(torch.relu(self.d(torch.relu(self.c(x)))))
        return y + fixed.mean(1).view(-1, 1, 1, 1)


def test_only_the_layer_whose_removal_breaks_the_model_is_kept_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = FixedView().eval()
    trials: list[list[str]] = []
    probe = prunable._probe

    def counting(*args: object) -> str | None:
        trials.append(list(args[2]))  # type: ignore[arg-type]
        return probe(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(prunable, "_probe", counting)
    reasons = prunable.probe_exclusions(model, {"x": torch.randn(1, 3, 8, 8)}, skip=set())
    assert set(reasons) == {"b", "e"} and "breaks the graph" in reasons["b"]
    # e produces the image: kept too (statically, in the engine; here by the probe)
    assert len(trials[0]) >= 4 and all(set(t) <= set(trials[0]) for t in trials)  # all at once first
    assert len(trials) < 2 * len(trials[0])  # then halves of the failing set only


def test_nothing_breaks_in_one_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1)
    )
    calls = []
    probe = prunable._probe
    monkeypatch.setattr(prunable, "_probe", lambda *a: calls.append(a) or probe(*a))
    assert prunable.probe_exclusions(model, {"x": torch.randn(1, 3, 8, 8)}, skip={"4"}) == {}
    assert len(calls) == 1
