"""Exponential moving average (EMA) of a model's parameters, the weights score models sample with.

After every optimiser step n = 1, 2, ... (Polyak & Juditsky 1992; score_sde's ``models/ema.py``):

    θ̄ ← d_n θ̄ + (1 - d_n) θ,    d_n = min(decay, (1 + n) / (10 + n))  with warm-up, else decay,

so the average is not dominated by the random initialisation early on. The shadow weights are kept
by parameter name, in float32/64 as the parameters are, and travel in checkpoints via
``state_dict`` / ``load_state_dict``.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class EMA:
    """Shadow copy θ̄ of ``model``'s trainable parameters, updated by ``update(model)``."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = warmup
        self.num_updates = 0
        self.shadow = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    def current_decay(self) -> float:
        """d_n for the next update n = num_updates + 1."""
        n = self.num_updates + 1
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """θ̄ ← d θ̄ + (1 - d) θ, i.e. θ̄ += (1 - d)(θ - θ̄)."""
        d = self.current_decay()
        self.num_updates += 1
        for name, p in self._matched(model):
            self.shadow[name].lerp_(p.detach(), 1.0 - d)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters with the averaged ones."""
        for name, p in self._matched(model):
            p.copy_(self.shadow[name])

    @contextmanager
    def averaged(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily swap the EMA weights into ``model`` (e.g. to sample during training); the
        training weights are restored bit for bit on exit."""
        saved = {name: p.detach().clone() for name, p in self._matched(model)}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in self._matched(model):
                    p.copy_(saved[name])

    def _matched(self, model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        if params.keys() != self.shadow.keys():
            missing = sorted(self.shadow.keys() - params.keys())
            extra = sorted(params.keys() - self.shadow.keys())
            raise ValueError(f"model does not match the EMA: missing {missing}, unexpected {extra}")
        return iter(params.items())

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["shadow"].keys() != self.shadow.keys():
            raise ValueError(
                f"EMA state has parameters {sorted(state['shadow'])}, the model has {sorted(self.shadow)}"
            )
        self.decay, self.warmup, self.num_updates = float(state["decay"]), bool(state["warmup"]), int(state["num_updates"])
        self.shadow = {name: t.detach().to(self.shadow[name].device, copy=True) for name, t in state["shadow"].items()}
