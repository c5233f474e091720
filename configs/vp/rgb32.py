"""VP SDE on 32×32 RGB images from your files with a small U-Net: a folder of PNG/JPEG images by
default (resized and centre-cropped to 32×32, flipped at random) — set ``data.path``; CIFAR-10's
python-version directory or an array file of 32×32 RGB images train with ``data.dataset=cifar10`` or
``array``. Subdirectories of the folder are classes; ``model.num_classes`` and
``training.cond_drop_prob`` make the model class-conditional. score_sde's full-size CIFAR-10 settings
are in the CIFAR-scale configs."""
from sde_diffusion.app.config import data_group, get_default_config, model_group, sampling_group, sde_group


def get_config():
    config = get_default_config()
    config.data = data_group("folder", image_size=32, num_channels=3, random_flip=True, uniform_dequantization=True)
    config.model = model_group("unet", image_size=32, num_channels=3, nf=64, ch_mult=(1, 2, 2), num_res_blocks=2,
                               attn_resolutions=(8,), dropout=0.1)
    config.sde = sde_group("vp", beta_min=0.1, beta_max=20.0, N=1000)
    config.training.loss = "dsm"
    config.training.batch_size = 128
    config.training.n_iters = 100000
    config.optim.lr, config.optim.schedule, config.optim.warmup = 2e-4, "constant", 5000
    config.training.snapshot_freq = 5000
    config.training.sample_freq = 5000
    config.training.n_snapshot_samples = 64
    config.sampling = sampling_group("pc", steps=1000, n_samples=64, predictor="euler_maruyama", corrector="langevin", snr=0.16)
    config.eval.batch_size, config.eval.n_samples = 100, 1000
    return config
