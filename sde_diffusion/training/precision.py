"""Mixed-precision training: the network's forward pass (and the loss) under ``torch.autocast`` in a
lower precision, while master weights, gradients, optimiser state and the EMA stay float32
(Micikevicius et al. 2018). bfloat16 has float32's exponent range, so no loss scaling is needed.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from sde_diffusion.core.registry import Registry

#: ``precision(device) -> context`` in which the forward pass runs.
PRECISIONS: Registry[Callable[[torch.device], AbstractContextManager]] = Registry("training precision")


@PRECISIONS.register("fp32")
def full_precision(device: torch.device) -> AbstractContextManager:
    """Everything in float32."""
    return contextlib.nullcontext()


@PRECISIONS.register("bf16")
def bfloat16(device: torch.device) -> AbstractContextManager:
    """Matrix products and convolutions in bfloat16 (autocast's op lists), the rest in float32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def autocast(precision: str, device: torch.device | str) -> AbstractContextManager:
    """The forward-pass context of ``precision`` (a name of ``PRECISIONS``) on ``device``."""
    return PRECISIONS.get(precision)(torch.device(device))
