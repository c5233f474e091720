"""Configs: every file loads and validates, generated groups mirror the code they come from, and
every kind of bad field or value is rejected with its dotted path named."""
import glob
import inspect
import os

import pytest
import torch
from ml_collections import ConfigDict

import solvers
from sde_diffusion.app.config import (
    SAMPLING_FIELDS,
    apply_overrides,
    check_path,
    get_default_config,
    get_digits_config,
    load_config,
    load_config_file,
    model_group,
    sampling_group,
    sde_group,
    validate,
)
from sde_diffusion.core.sde_lib import SDES, sde_from_config
from sde_diffusion.core.targets import TOY_DATA, ring
from sde_diffusion.data.datasets import DATASETS
from sde_diffusion.models import MODELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_files_validate(path):
    """Each file validates; files under configs/<sde>/ use that SDE, and <data>.py that data set. A
    file for the user's data (``data.path`` unset) validates for the read-only commands, and for
    training only once the path is given."""
    config = load_config_file(path)
    reads_files = DATASETS.get(config.data.dataset).path is not None
    validate(config, training=not reads_files)
    if reads_files:
        with pytest.raises(ValueError, match=r"bad config\.data: config\.data\.path is not set; expected "):
            validate(config)
    folder, name = os.path.split(os.path.relpath(path, os.path.join(ROOT, "configs")))
    if folder:
        assert config.sde.name == folder
        assert config.data.dataset == name.removesuffix(".py") or reads_files
        assert config.model.name == ("mlp" if config.data.dataset in TOY_DATA else "unet")


def test_required_experiments_exist():
    """A default plus VP, sub-VP and VE files for the ring and for digits."""
    rel = {os.path.relpath(p, os.path.join(ROOT, "configs")) for p in CONFIG_FILES}
    expected = {"default.py"} | {f"{s}/{d}.py" for s in ("vp", "subvp", "ve") for d in ("ring", "digits")}
    assert expected <= rel


def test_sampling_groups_hold_every_option_of_every_method():
    """config.sampling has one group per registered method with exactly its options and defaults."""
    sampling = get_default_config().sampling
    methods = solvers.available()
    assert set(sampling.keys()) == set(methods) | set(SAMPLING_FIELDS)
    for name, spec in methods.items():
        assert sampling[name].to_dict() == spec["options"], name


def test_generated_groups_mirror_constructors():
    """sde_group / model_group list every constructor argument with its default."""
    for name in SDES:
        params = inspect.signature(SDES.get(name).__init__).parameters
        assert set(sde_group(name).keys()) == {"name"} | (set(params) - {"self"})
    unet = model_group("unet")
    params = inspect.signature(MODELS.get("unet").__init__).parameters
    assert set(unet.keys()) == {"name"} | (set(params) - {"self"})
    assert unet.nf == params["nf"].default and tuple(unet.ch_mult) == tuple(params["ch_mult"].default)


def test_ode_tolerance_reaches_the_sampler():
    """The ODE tolerances are config fields (score_sde cannot set them): with the exact ring score
    and the same latents, ``get_sampler(config.sampling)`` spends strictly more evaluations as
    rtol = atol tighten from 1e-2 to 1e-4 to 1e-6. Were the option dropped on the way, all three
    runs would use the default 1e-5 and count the same NFE."""
    nfe = []
    for tol in (1e-2, 1e-4, 1e-6):
        config = validate(apply_overrides(get_default_config(), {"sampling.method": "ode", "sampling.ode.rtol": tol, "sampling.ode.atol": tol}))
        sde = sde_from_config(config.sde)
        sampler = solvers.get_sampler(config.sampling, sde)
        nfe.append(sampler(ring().score_fn(sde), (64, 2), generator=torch.Generator().manual_seed(0))[1])
    assert nfe[0] < nfe[1] < nfe[2]


# --- rejected configs ---------------------------------------------------------------------------------
def _with(**overrides) -> ConfigDict:
    return apply_overrides(get_default_config(), {k.replace("__", "."): v for k, v in overrides.items()})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"training__batch_size": 0}, r"bad value 0 for config\.training\.batch_size; allowed: an integer >= 1"),
        ({"training__n_iters": -5}, r"config\.training\.n_iters"),
        ({"optim__lr": -1e-3}, r"bad value -0\.001 for config\.optim\.lr; allowed: a number in \(0\.0, inf\)"),
        ({"optim__lr": float("nan")}, r"config\.optim\.lr"),
        ({"training__ema_rate": 1.0}, r"config\.training\.ema_rate; allowed: a number in \[0\.0, 1\.0\)"),
        ({"training__eps": 0.0}, r"config\.training\.eps"),
        ({"training__loss": "dsn"}, r"bad value 'dsn' for config\.training\.loss; allowed: one of ddpm, ddpm_vlb, dsm, smld, stf"),
        ({"training__reference_batch_size": 512}, r"bad config\.training: reference_batch_size=512 must be 0 \(the batch itself\) or >= batch_size=1024"),
        ({"training__weighting": "sigma"}, r"config\.training\.weighting; allowed: one of likelihood, sigma2"),
        ({"optim__optimizer": "sgd"}, r"config\.optim\.optimizer; allowed: one of adam, adamw"),
        ({"data__dataset": "mnist2"}, r"config\.data\.dataset; allowed: one of array, checkerboard, cifar10, digits, folder, mnist, moons, ring, swiss_roll"),
        ({"sampling__method": "pc2"}, r"bad value 'pc2' for config\.sampling\.method; allowed: one of .*\bpc\b"),
        ({"sampling__steps": 0}, r"config\.sampling\.steps; allowed: None or an integer >= 1"),
        ({"device": "gpu0"}, r"config\.device; allowed: a torch device string"),
        ({"sde__beta_min": -1.0}, r"bad config\.sde: beta_min must be > 0, got -1\.0"),
        ({"training__loss": "smld"}, r"bad config\.training: loss 'smld' needs an SDE with a SMLDChain"),
        ({"training__importance_sampling": True}, r"bad config\.training: importance_sampling needs weighting='likelihood'"),
        ({"data__uniform_dequantization": True}, r"bad config\.data: uniform_dequantization applies to quantised data sets"),
    ],
)
def test_bad_values_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate(_with(**overrides))


def test_unknown_fields_name_the_path_and_the_allowed_ones():
    config = get_default_config()
    config.training.n_iter = 10
    with pytest.raises(ValueError, match=r"unknown field config\.training\.n_iter; allowed in config\.training: batch_size, "):
        validate(config)

    config = get_default_config()
    config.extra = ConfigDict({"a": 1})
    with pytest.raises(ValueError, match=r"unknown field config\.extra; allowed in the top level of the config: bench, data"):
        validate(config)

    config = get_default_config()
    config.sde.sigma_max = 50.0
    with pytest.raises(ValueError, match=r"unknown field config\.sde\.sigma_max; allowed in config\.sde: N, beta_max, beta_min, name"):
        validate(config)

    config = get_default_config()
    config.sampling.ode.rtoll = 1e-3
    with pytest.raises(ValueError, match=r"unknown field config\.sampling\.ode\.rtoll; allowed in config\.sampling\.ode: atol, denoise, rho, rtol, schedule, solver, variable"):
        validate(config)


def test_missing_fields_and_wrong_types_are_named():
    config = get_default_config()
    del config.optim["warmup"]
    with pytest.raises(ValueError, match=r"missing field config\.optim\.warmup"):
        validate(config)

    config = get_default_config()
    config.training = ConfigDict({**config.training.to_dict(), "n_iters": 10.5})
    with pytest.raises(ValueError, match=r"config\.training\.n_iters must be of type int, got 10\.5"):
        validate(config)

    config = get_default_config()
    config.training = ConfigDict({**config.training.to_dict(), "progress": "yes"})
    with pytest.raises(ValueError, match=r"config\.training\.progress must be of type bool, got 'yes'"):
        validate(config)


def test_model_must_match_the_data():
    """A U-Net for 16×16 images cannot train on the 8×8 digits."""
    config = get_digits_config()
    config.model = model_group("unet", image_size=16)
    with pytest.raises(ValueError, match=r"config\.model\.image_size=16 does not match config\.data\.image_size=8"):
        validate(config)


def test_group_builders_reject_unknown_arguments():
    with pytest.raises(ValueError, match=r"unknown field\(s\) sigma_max for SDE 'vp'; allowed: beta_min, beta_max, N"):
        sde_group("vp", sigma_max=10.0)
    with pytest.raises(ValueError, match=r"unknown option\(s\) rtoll for method 'ode'; known: atol, denoise, rho, rtol, schedule, solver, variable"):
        sampling_group("ode", rtoll=1e-3)
    with pytest.raises(ValueError, match=r"unknown model 'resnet'; known: mlp, unet"):
        model_group("resnet")


def test_overrides_and_paths():
    """apply_overrides sets dotted fields on a copy; unknown paths are named with what is allowed."""
    base = get_default_config()
    config = apply_overrides(base, {"training.n_iters": 7, "sampling.ode.rtol": 1e-3, "seed": 3})
    assert (config.training.n_iters, config.sampling.ode.rtol, config.seed) == (7, 1e-3, 3)
    assert base.training.n_iters == get_default_config().training.n_iters != 7
    with pytest.raises(ValueError, match=r"unknown field config\.trainin; allowed in config: bench, data, device"):
        apply_overrides(base, {"trainin.n_iters": 3})
    with pytest.raises(ValueError, match=r"config\.seed is a value, not a group: config\.seed\.x does not exist"):
        check_path(base, "seed.x")


def test_missing_config_file():
    with pytest.raises(ValueError, match=r"config file 'nope\.py' does not exist"):
        load_config("nope.py")
