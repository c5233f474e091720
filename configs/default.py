"""The default config: VP SDE, residual MLP, the 2-D ring (every group and field is listed in
``sde_diffusion/config.py:get_default_config``)."""
from sde_diffusion.app.config import get_default_config


def get_config():
    return get_default_config()
