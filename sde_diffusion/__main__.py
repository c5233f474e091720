"""``python -m sde_diffusion <train|sample|likelihood|bench> --config FILE --workdir DIR``."""
from sde_diffusion.app.cli import run

if __name__ == "__main__":
    run()
