"""``python -m sde_diffusion <train|sample|likelihood|bench> --config FILE --workdir DIR``."""
from .cli import run

if __name__ == "__main__":
    run()
