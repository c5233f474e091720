"""Mixed precision: bf16 training steps on the CPU run the network in bfloat16, keep the master weights,
the optimiser state and the EMA in float32, and lower the loss; channels-last weights give the same
network."""
import pytest
import torch

from sde_diffusion.app.config import apply_overrides, get_digits_config, validate
from sde_diffusion.app.train import init_state, train_step
from sde_diffusion.core.sde_lib import get_sde
from sde_diffusion.training import losses
from sde_diffusion.training.precision import autocast


def _config(**overrides):
    base = {"training.progress": False, "training.sample_freq": 0, "training.batch_size": 16, "optim.lr": 2e-3,
            "optim.warmup": 0, "model.nf": 16, "model.dropout": 0.0}
    return validate(apply_overrides(get_digits_config(), {**base, **overrides}))


def _fixed_loss(model, loss_fn, batch) -> float:
    """The loss at fixed times and noise (the same draws for every call), in float32."""
    with torch.no_grad():
        return float(loss_fn(model, batch, generator=torch.Generator().manual_seed(5)))


def test_bf16_steps_lower_the_loss_with_float32_master_weights():
    """20 bf16 Adam steps on one batch of 16 digits: the network's convolutions run in bfloat16 (a
    forward hook sees it), every parameter, gradient, Adam moment and EMA shadow stays float32, and the
    loss at fixed noise falls by more than a quarter (measured well over half; bfloat16's 8-bit mantissa
    perturbs each step's gradient by about 0.4% relative, far too little to stop the descent)."""
    config = _config(**{"training.precision": "bf16"})
    state = init_state(config)
    loss_fn = losses.get_loss_fn(get_sde("vp"), config.training)
    batch = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    before = _fixed_loss(state.model, loss_fn, batch)
    seen = []
    hook = state.model.conv_in.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    for _ in range(20):
        train_step(state, loss_fn, batch, config.optim, 20, precision="bf16")
    hook.remove()
    after = _fixed_loss(state.model, loss_fn, batch)
    assert set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in state.model.parameters())
    assert all(v.dtype == torch.float32 for s in state.optimizer.state.values() for v in s.values() if v.ndim)
    assert all(v.dtype == torch.float32 for v in state.ema.shadow.values() if v.is_floating_point())
    assert after < 0.75 * before, (before, after)


def test_channels_last_gives_the_same_network():
    """The U-Net with channels-last weights and input computes the same outputs (float32 rounding of a
    different summation order)."""
    config = _config()
    model = init_state(config).model.eval()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    c = torch.full((4,), 0.3)
    reference = model(x, c)
    model.to(memory_format=torch.channels_last)
    out = model(x.contiguous(memory_format=torch.channels_last), c)
    assert torch.allclose(out, reference, rtol=1e-4, atol=1e-5)


def test_unknown_precision_is_named():
    with pytest.raises(ValueError, match="unknown training precision 'fp8'; known: bf16, fp32"):
        autocast("fp8", "cpu")
    with pytest.raises(ValueError, match="training.precision"):
        _config(**{"training.precision": "fp16"})
