"""Training: EMA arithmetic, the warm-up schedule, exact resume after a crash, the non-finite-loss
stop, TensorBoard logging, and that a short run actually learns the ring's score."""
import json
import math
import os
import random

import numpy as np
import pytest
import torch
from ml_collections import ConfigDict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sde_diffusion.app import train as train_lib
from sde_diffusion.app.config import apply_overrides, get_default_config, get_digits_config, model_group, validate
from sde_diffusion.app.train import NonFiniteLossError, init_state, train
from sde_diffusion.core.sde_lib import get_sde
from sde_diffusion.core.targets import ring
from sde_diffusion.models import get_score_fn
from sde_diffusion.training import losses
from sde_diffusion.training.checkpoints import latest_checkpoint, list_checkpoints, load_checkpoint
from sde_diffusion.training.ema import EMA
from sde_diffusion.training.optim import learning_rate


def _tiny(config: ConfigDict, **overrides) -> ConfigDict:
    config.model = model_group("mlp", dim=config.model.get("dim", 2), hidden=32, num_blocks=1, embedding_dim=16)
    base = {"training.batch_size": 16, "training.progress": False, "training.sample_freq": 0}
    return validate(apply_overrides(config, {**base, **overrides}))


# --- EMA and schedule -------------------------------------------------------------------------------
def test_ema_follows_the_warmup_recursion():
    """Three updates with θ = 1, 2, 3 from θ̄_0 = 0: d_n = min(0.9, (1+n)/(10+n)) gives
    d = 2/11, 3/12, 4/13 and θ̄_n = d_n θ̄_{n-1} + (1 - d_n) θ_n, computed here in float64."""
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.9)
    expected = 0.0
    for n, theta in enumerate([1.0, 2.0, 3.0], start=1):
        with torch.no_grad():
            model.weight.fill_(theta)
        ema.update(model)
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * theta
    assert ema.num_updates == 3
    assert float(ema.shadow["weight"]) == pytest.approx(expected, rel=1e-6)


def test_ema_without_warmup_and_swap_restores_weights():
    """Without warm-up d = decay from the first update: θ̄ = 0.5·0 + 0.5·4 = 2. Inside ``averaged``
    the model holds θ̄; afterwards its training weights come back bit for bit."""
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.5, warmup=False)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(4.0)
    ema.update(model)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.averaged(model):
        for k, v in model.state_dict().items():
            assert torch.allclose(v, start[k] + 2.0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, trained[k])


def test_ema_rejects_another_model():
    ema = EMA(torch.nn.Linear(2, 2), decay=0.9)
    with pytest.raises(ValueError, match="does not match the EMA"):
        ema.copy_to(torch.nn.Linear(2, 3, bias=False))


def test_learning_rate_warmup():
    """η_n = lr · min(1, n / warmup) with the constant schedule: 1e-3 · 1/4, 1/2, 1, 1 at n = 1, 2, 4, 9;
    constant without warm-up."""
    optim = ConfigDict({"lr": 1e-3, "warmup": 4, "schedule": "constant"})
    assert [learning_rate(n, optim, 10) for n in (1, 2, 4, 9)] == pytest.approx([2.5e-4, 5e-4, 1e-3, 1e-3])
    assert learning_rate(1, ConfigDict({"lr": 1e-3, "warmup": 0, "schedule": "constant"}), 10) == 1e-3


def test_learning_rate_cosine_decay():
    """The cosine schedule multiplies the warm-up by ½(1 + cos(πn/N)) over a run of N = 8 steps: at
    n = 2 (warm-up 1/2) 0.5 · 0.85355 = 0.42678; at n = 4 the half-way value 0.5; 0.14645 at n = 6; 0 at
    the end."""
    optim = ConfigDict({"lr": 1.0, "warmup": 4, "schedule": "cosine"})
    assert [learning_rate(n, optim, 8) for n in (2, 4, 6, 8)] == pytest.approx([0.42678, 0.5, 0.14645, 0.0], abs=1e-5)


# --- checkpoints of the training state ----------------------------------------------------------------
def test_state_dict_restores_every_random_stream(tmp_path):
    """After load_state_dict, the global torch/numpy/python RNGs and both training generators
    produce exactly the draws they would have produced at save time, even though they were
    advanced (and reseeded) in between."""
    config = _tiny(get_default_config())
    state = init_state(config)
    saved = state.state_dict()
    expected = (torch.rand(3), np.random.rand(3), random.random(),
                torch.rand(3, generator=state.data_generator), torch.rand(3, generator=state.noise_generator))
    train_lib.seed_everything(999)
    state.data_generator.manual_seed(5)
    state.noise_generator.manual_seed(6)
    state.load_state_dict(saved)
    got = (torch.rand(3), np.random.rand(3), random.random(),
           torch.rand(3, generator=state.data_generator), torch.rand(3, generator=state.noise_generator))
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
    assert torch.equal(got[3], expected[3]) and torch.equal(got[4], expected[4])


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, monkeypatch):
    """Train 20 steps straight; train again in a second workdir, crash at step 13 (checkpoints
    every 5 steps, so the latest is step 10), disturb every global RNG, and rerun: it resumes from
    step 10 and must end with bit-identical weights, EMA and optimiser state (CPU arithmetic is
    deterministic). The run uses every random stream: dropout (global torch RNG), batch indices,
    loss times/noise and uniform dequantisation of the digits, and snapshot sampling in between."""
    config = get_digits_config()
    config.model = model_group("mlp", dim=64, hidden=32, num_blocks=1, embedding_dim=16, dropout=0.1)
    config = validate(apply_overrides(config, {
        "training.n_iters": 20, "training.snapshot_freq": 5, "training.batch_size": 16, "training.progress": False,
        "training.sample_freq": 10, "training.n_snapshot_samples": 4, "sampling.method": "euler_maruyama",
        "sampling.steps": 3, "data.uniform_dequantization": True,
    }))
    straight = train(config, str(tmp_path / "straight"))

    real_step = train_lib.train_step

    def crash_at_13(state, *args):
        if state.step == 13:
            raise KeyboardInterrupt
        return real_step(state, *args)

    monkeypatch.setattr(train_lib, "train_step", crash_at_13)
    with pytest.raises(KeyboardInterrupt):
        train(config, str(tmp_path / "resumed"))
    monkeypatch.setattr(train_lib, "train_step", real_step)
    assert [s for s, _ in list_checkpoints(str(tmp_path / "resumed" / "checkpoints"))] == [5, 10]
    train_lib.seed_everything(12345)
    resumed = train(config, str(tmp_path / "resumed"))

    assert resumed.step == straight.step == 20
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    for name, tensor in straight.ema.shadow.items():
        assert torch.equal(tensor, resumed.ema.shadow[name]), name
    adam_a, adam_b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for k in adam_a:
        for field in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(adam_a[k][field], adam_b[k][field])
    final = load_checkpoint(latest_checkpoint(str(tmp_path / "resumed" / "checkpoints")))
    assert final["step"] == 20 and final["ema"]["num_updates"] == 20


def test_resume_refuses_a_different_model(tmp_path):
    """A workdir trained with hidden=32 cannot be resumed with hidden=64: the error names the field,
    and the run's config.json still describes the run."""
    config = _tiny(get_default_config(), **{"training.n_iters": 2})
    train(config, str(tmp_path))
    other = apply_overrides(config, {"model.hidden": 64, "training.n_iters": 4})
    with pytest.raises(ValueError, match=r"model\.hidden: 32 there, 64 here"):
        train(other, str(tmp_path))
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["model"]["hidden"] == 32


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    """With lr = 1e30 and no warm-up, Adam's first step moves every weight by about 1e30 (its step
    is lr · m̂/√v̂ ≈ lr), so the second loss overflows float32 to inf: training must stop naming step
    2 and leave the step-1 checkpoint loadable, with finite weights."""
    config = _tiny(get_default_config(), **{"training.n_iters": 10, "training.snapshot_freq": 1, "optim.lr": 1e30, "optim.warmup": 0})
    with pytest.raises(NonFiniteLossError, match=r"the loss is (inf|nan) at step 2; training stopped, the last good checkpoint is .*ckpt_1\.pt"):
        train(config, str(tmp_path))
    assert [s for s, _ in list_checkpoints(str(tmp_path / "checkpoints"))] == [1]
    state = load_checkpoint(latest_checkpoint(str(tmp_path / "checkpoints")))
    assert state["step"] == 1
    assert all(bool(torch.isfinite(v).all()) for v in state["model"].values())


# --- a real (short) run --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ring_run(tmp_path_factory):
    """300 steps of a 2-block, 64-wide MLP on the ring (the default loss 'stf', batch 256 out of a reference
    batch of 1024, constant lr 2e-3), logging every 50 steps with a 100-step warm-up, one snapshot sample
    at the end."""
    workdir = str(tmp_path_factory.mktemp("ring_run"))
    config = get_default_config()
    config.model = model_group("mlp", dim=2, hidden=64, num_blocks=2, embedding_dim=32)
    config = validate(apply_overrides(config, {
        "training.n_iters": 300, "training.batch_size": 256, "training.reference_batch_size": 1024,
        "training.progress": False, "training.log_freq": 50,
        "training.sample_freq": 300, "training.n_snapshot_samples": 200, "training.snapshot_freq": 300,
        "sampling.method": "euler_maruyama", "sampling.steps": 50, "data.n_train": 20000, "optim.lr": 2e-3,
        "optim.schedule": "constant",
    }))
    return config, workdir, train(config, workdir)


def test_short_run_learns_the_score(ring_run):
    """DSM loss (reduce='mean', per dimension) on 20000 fresh ring points, with common random
    times/noise for every model: the zero model (the untrained output) scores L_0 = E‖z‖²/2 ≈ 1 and
    the exact mixture score the minimum L*. Training must close at least 65% of the gap L_0 - L*
    (measured: 80% for the EMA weights after 300 steps). Each per-sample term has std ≲ 1, so with
    n = 20000 each L carries a Monte-Carlo error ≲ 0.007, about 1% of the gap ≈ 0.79."""
    config, _, state = ring_run
    sde = get_sde("vp")
    per_sample = losses.LOSSES.get("dsm")(sde, config.training)
    x0 = ring().sample(20000, torch.Generator().manual_seed(5)).float()

    def loss(score_fn) -> float:
        with torch.no_grad():
            return float(per_sample(score_fn, x0, torch.Generator().manual_seed(7)).mean()) / 2

    l_zero, l_exact = loss(lambda x, t: torch.zeros_like(x)), loss(ring().score_fn(sde))
    assert l_zero == pytest.approx(1.0, abs=0.03)
    with state.ema.averaged(state.model) as model:
        l_ema = loss(get_score_fn(sde, model.eval()))
    assert (l_ema - l_exact) / (l_zero - l_exact) < 0.35


def test_stable_loss_steps_draw_the_reference_batch(ring_run):
    """With loss 'stf' each of the 300 steps draws ``reference_batch_size`` (1024) data indices, of
    which the batch's 256 are trained on, so the data generator stands where 300 draws of 1024 indices
    from the 20000 training points leave it."""
    config, _, state = ring_run
    assert config.training.loss == "stf" and config.training.reference_batch_size == 1024
    replay = torch.Generator().manual_seed(int(state.data_generator.initial_seed()))
    for _ in range(300):
        torch.randint(20000, (1024,), generator=replay)
    assert torch.equal(replay.get_state(), state.data_generator.get_state())


def test_tensorboard_logs_the_schedule_and_samples(ring_run):
    """Scalars every 50 steps: the learning rate follows the warm-up (lr · min(1, n/100)), the loss
    and gradient norm are finite and positive; a sample scatter plot is logged at step 300 and the
    snapshot samples are written as PNG + npz."""
    config, workdir, _ = ring_run
    events = EventAccumulator(os.path.join(workdir, "tensorboard"), size_guidance={"scalars": 0}).Reload()
    lr = {e.step: e.value for e in events.Scalars("training/lr")}
    assert sorted(lr) == [50, 100, 150, 200, 250, 300]
    for step, value in lr.items():
        assert value == pytest.approx(config.optim.lr * min(1.0, step / 100), rel=1e-6)
    for tag in ("training/loss", "training/grad_norm"):
        values = [e.value for e in events.Scalars(tag)]
        assert len(values) == 6 and all(math.isfinite(v) and v > 0 for v in values)
    assert "samples" in events.Tags()["images"]
    samples = np.load(os.path.join(workdir, "samples", "step_300.npz"))["samples"]
    assert samples.shape == (200, 2) and np.isfinite(samples).all()
    assert os.path.getsize(os.path.join(workdir, "samples", "step_300.png")) > 1000
