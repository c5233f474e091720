"""diffusers ``UNet2DModel``s as ``(sde, score_fn)``: DDPM-chain models (ε, v or x_0 prediction) under
the VP SDE of their own ᾱ table, score-SDE VE models under their VE SDE.

**DDPM-chain models** (DDPM, DDIM, DPM-Solver, ... schedulers; ``beta_schedule`` linear,
scaled_linear, squaredcos_cap_v2, or ``trained_betas``). The SDE is ``DiscreteVPSDE`` on the
scheduler's ``alphas_cumprod`` ᾱ_0..ᾱ_{N-1} (N = ``num_train_timesteps``), and time t maps to the
network's fractional timestep

    τ(t) = N t - 1,    ᾱ(t) = ᾱ_j^{1-w} ᾱ_{j+1}^w,   j = ⌊τ⌋, w = τ - j    (ᾱ_{-1} := 1),

so t_k = (k + 1)/N carries the trained timestep k with its exact ᾱ_k, t = 1 is timestep N - 1 and
t = 1/N (the SDE's ``default_eps``) timestep 0; between timesteps log ᾱ is linear in τ, as in
DPM-Solver's discrete schedule (Lu et al. 2022, App. D.1). The network gets τ as a float tensor;
within 4 float32 ulps of t (per timestep) of an integer, τ is that integer (a float32 time cannot
tell them apart), and a ``learned`` timestep embedding always gets the nearest integer. With
α = √ᾱ(t), σ = √(1 - ᾱ(t)) the output F is a score through ``PARAMETERIZATIONS``:

    epsilon       score = -F/σ
    sample        score = (α F - x)/σ²
    v_prediction  score = -(α F + σ x)/σ      (v = α ε - σ x_0, Salimans & Ho 2022)

**Score-SDE VE models** (``ScoreSdeVeScheduler``; NCSN++ with ``time_embedding_type="fourier"``,
which divides its output by the noise level, so F is the score): the SDE is ``VESDE(σ_min, σ_max)``
and the network is conditioned on the kernel's std σ(t) = √(σ_n(t)² - σ_min²), the level of the noise
it was trained to remove, for t in [t_min, 1] (σ(t_min) = σ_min; ``default_eps`` = t_min).

The scheduler's sampling heuristics (``clip_sample``, ``thresholding``, timestep spacing) belong to
its sampling loop, not to the model: the score here is the network's, unclipped. Data are in
[-1, 1] for DDPM-chain models and [0, 1] for VE ones (``DiffusersScore.data_range``), as their
pipelines assume.
"""
from __future__ import annotations

import inspect
import json
import os
from typing import Any, Optional, Union

import torch
from torch import nn

from sde_diffusion.core.parameterization import PARAMETERIZATIONS
from sde_diffusion.core.sde_lib import VESDE, DiscreteVPSDE, LinearSDE
from sde_diffusion.core.utils import batch_time
from sde_diffusion.interop.common import check_level_range, check_output, ve_sde_for_levels

#: diffusers' ``prediction_type`` -> the toolkit's parameterisation.
PREDICTION_TYPES = {"epsilon": "noise", "sample": "data", "v_prediction": "velocity"}
#: Scheduler classes whose model is a score-SDE VE network conditioned on σ.
VE_SCHEDULERS = ("ScoreSdeVeScheduler",)

PathLike = Union[str, "os.PathLike[str]"]


def require_diffusers() -> Any:
    """The diffusers module, or an ImportError saying how to install it."""
    try:
        import diffusers
    except ImportError as err:
        raise ImportError('pretrained diffusers models need the diffusers package: pip install ".[diffusers]"') from err
    return diffusers


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path}: {err}") from None


def _model_dir_and_scheduler_file(path: str) -> tuple[str, str]:
    """(UNet directory, scheduler config file) of a pipeline directory (``model_index.json`` with
    ``unet/`` and ``scheduler/``) or of a model directory (``config.json``, optionally with a
    ``scheduler_config.json`` beside it)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"pretrained model directory {path!r} does not exist")
    if os.path.isfile(os.path.join(path, "model_index.json")):
        index = _read_json(os.path.join(path, "model_index.json"))
        if "unet" not in index:
            raise ValueError(f"{path}/model_index.json names no 'unet' component (it has {', '.join(k for k in index if not k.startswith('_'))})")
        return os.path.join(path, "unet"), os.path.join(path, "scheduler", "scheduler_config.json")
    if os.path.isfile(os.path.join(path, "config.json")):
        return path, os.path.join(path, "scheduler_config.json")
    raise ValueError(
        f"{path!r} is not a diffusers save_pretrained directory: expected model_index.json (a pipeline)"
        " or config.json (a UNet2DModel)"
    )


def load_pretrained(path: PathLike) -> tuple[nn.Module, Optional[dict[str, Any]]]:
    """The ``UNet2DModel`` saved in ``path`` and its scheduler config (None if the directory has none).
    Only local files are read."""
    diffusers = require_diffusers()
    model_dir, scheduler_file = _model_dir_and_scheduler_file(os.fspath(path))
    config_file = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_file):
        raise ValueError(f"{model_dir!r} has no config.json")
    cls = _read_json(config_file).get("_class_name")
    if cls != "UNet2DModel":
        raise ValueError(f"{config_file} describes a {cls!r}; only UNet2DModel is supported")
    model = diffusers.UNet2DModel.from_pretrained(model_dir, local_files_only=True)
    return model, _read_json(scheduler_file) if os.path.isfile(scheduler_file) else None


def _scheduler_config(scheduler: Any) -> tuple[dict[str, Any], Optional[torch.Tensor]]:
    """(config dict with ``_class_name``, ``alphas_cumprod`` if the object has one) of a scheduler
    object, a config dict, or a directory / JSON file holding ``scheduler_config.json``."""
    if isinstance(scheduler, dict):
        return dict(scheduler), None
    if isinstance(scheduler, (str, os.PathLike)):
        path = os.fspath(scheduler)
        if os.path.isdir(path):
            path = os.path.join(path, "scheduler_config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"scheduler config {path!r} does not exist")
        return _read_json(path), None
    if hasattr(scheduler, "config"):
        config = {**dict(scheduler.config), "_class_name": type(scheduler).__name__}
        return config, getattr(scheduler, "alphas_cumprod", None)
    raise TypeError(f"scheduler must be a diffusers scheduler, its config dict or a path, got {type(scheduler).__name__}")


def _alphas_cumprod(config: dict[str, Any]) -> torch.Tensor:
    """ᾱ of a DDPM-family scheduler config, computed by diffusers' own ``DDPMScheduler`` (every
    DDPM-chain scheduler builds its betas with the same code)."""
    ddpm = require_diffusers().DDPMScheduler
    known = set(inspect.signature(ddpm.__init__).parameters) - {"self"}
    return ddpm(**{k: v for k, v in config.items() if k in known}).alphas_cumprod


def _is_ve(config: dict[str, Any]) -> bool:
    return config.get("_class_name") in VE_SCHEDULERS or ("sigma_max" in config and "beta_schedule" not in config)


def _model_config(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"model must be a diffusers UNet2DModel (a module with a .config), got {type(model).__name__}")
    return dict(config)


class DiffusersScore:
    """``score_fn(x, t, labels=None)`` of a diffusers ``UNet2DModel`` under ``sde`` (module docstring);
    ``labels`` are passed as the model's ``class_labels``.

    Attributes: ``model``, ``sde``, ``parameterization`` (of the raw output), ``data_range`` (low,
    high), ``sample_shape`` (C, H, W).
    """

    def __init__(self, model: nn.Module, sde: LinearSDE, parameterization: str, data_range: tuple[float, float]) -> None:
        config = _model_config(model)
        self.model, self.sde, self.parameterization = model, sde, parameterization
        self.data_range = data_range
        size = config.get("sample_size")
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.sample_shape = (int(config.get("in_channels", 3)), *map(int, size))
        self.quantize = config.get("time_embedding_type") == "learned"
        self._to_score = PARAMETERIZATIONS.get(parameterization).to_score

    @property
    def is_ve(self) -> bool:
        return isinstance(self.sde, VESDE)

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """τ(t) = N t - 1 in float64, snapped to an integer within the time's float rounding."""
        sde = self.sde
        tau = sde.timestep(t.to(torch.float64))
        nearest = torch.round(tau)
        tol = 4 * sde.N * torch.finfo(t.dtype).eps
        tau = nearest if self.quantize else torch.where((tau - nearest).abs() <= tol, nearest, tau)
        if bool((tau < 0).any()):
            raise ValueError(
                f"time {float(t.min()):.6g} is below 1/N = {1 / sde.N:.6g}, timestep 0, the least noisy one"
                " the model was trained on; sample with eps >= 1/N (the SDE's default_eps)"
            )
        return tau

    def condition(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(what the network is given, α, σ) at times t, in float64: the timestep τ(t) (VP) or the
        noise level σ(t) (VE)."""
        if self.is_ve:
            sigma = self.sde.sigma(t.to(torch.float64))
            check_level_range(sigma, self.sde.sigma_min, self.sde.sigma_max)
            return sigma, torch.ones_like(sigma), sigma
        tau = self.timestep(t)
        t_eff = (tau + 1.0) / self.sde.N
        return tau, self.sde.alpha(t_eff), self.sde.sigma(t_eff)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        t = batch_time(t, x)
        cond, alpha, sigma = self.condition(t)
        cond = cond.long() if self.quantize else cond.to(torch.float32)
        dtype = next(self.model.parameters()).dtype
        out = self.model(x.to(dtype), cond, class_labels=labels).sample.to(x.dtype)
        check_output(out, x, type(self.model).__name__)
        return self._to_score(out, x, alpha.to(x.dtype), sigma.to(x.dtype))

    def __repr__(self) -> str:
        return f"DiffusersScore({type(self.model).__name__}, {self.parameterization}, {self.sde!r})"


def from_diffusers(
    model_or_path: Union[nn.Module, PathLike],
    scheduler: Any = None,
    *,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[torch.dtype] = None,
) -> tuple[LinearSDE, DiffusersScore]:
    """``(sde, score_fn)`` of a diffusers ``UNet2DModel`` and its scheduler (module docstring).

    Args:
      model_or_path: the module, or a local ``save_pretrained`` directory (a pipeline with ``unet/`` and
        ``scheduler/``, or a model directory with an optional ``scheduler_config.json``).
      scheduler: a diffusers scheduler, its config dict, or a directory / file with its
        ``scheduler_config.json``; None takes the one saved with the model.
      device, dtype: move the model there (default: as loaded). Its weights are frozen and it is put
        in eval mode.
    """
    require_diffusers()
    saved = None
    if isinstance(model_or_path, nn.Module):
        model = model_or_path
    else:
        model, saved = load_pretrained(model_or_path)
    if scheduler is None:
        if saved is None:
            raise ValueError(
                "no scheduler: pass scheduler= (a diffusers scheduler, its config dict or a directory with"
                " scheduler_config.json) or save the model with its scheduler"
            )
        scheduler = saved
    config, alphas_cumprod = _scheduler_config(scheduler)
    embedding = _model_config(model).get("time_embedding_type", "positional")
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if _is_ve(config):
        if embedding != "fourier":
            raise ValueError(f"a score-SDE VE model takes σ through a Fourier embedding; this model's time_embedding_type is {embedding!r}")
        sde = ve_sde_for_levels(float(config.get("sigma_min", 0.01)), float(config.get("sigma_max", 1348.0)), int(config.get("num_train_timesteps", 2000)))
        return sde, DiffusersScore(model, sde, "score", (0.0, 1.0))
    if embedding == "fourier":
        raise ValueError("a Fourier time embedding takes a noise level σ > 0, not a DDPM timestep; use a ScoreSdeVeScheduler config")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction!r} is not supported; allowed: {', '.join(PREDICTION_TYPES)}")
    if config.get("rescale_betas_zero_snr", False):
        raise ValueError("rescale_betas_zero_snr=True makes ᾱ_{N-1} = 0 (infinite noise), which no VP SDE reaches")
    abar = _alphas_cumprod(config) if alphas_cumprod is None else alphas_cumprod
    sde = DiscreteVPSDE(N=int(abar.numel()), alphas_cumprod=abar)
    return sde, DiffusersScore(model, sde, PREDICTION_TYPES[prediction], (-1.0, 1.0))
