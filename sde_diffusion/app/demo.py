"""The main job (`make demo`): train a VP-SDE score model on scikit-learn's 8×8 digits on the CPU
(a few minutes), then sample it with predictor–corrector and with the probability-flow ODE.

Everything lands under ``runs/demo_digits/``: checkpoints, TensorBoard logs, ``samples/pc.png`` and
``samples/ode.png`` (with their ``.npz``). Rerunning resumes the finished run and only samples again;
delete the directory to train from scratch.
"""
from __future__ import annotations

import os
import time

from sde_diffusion.app.commands import describe, sample_command
from sde_diffusion.app.config import apply_overrides, load_config
from sde_diffusion.app.train import train

CONFIG = "configs/vp/digits.py"

#: The two samplers the demo compares, as overrides of the config: its predictor–corrector sampler
#: (Euler–Maruyama + Langevin, 250 steps) and the probability-flow ODE (dopri5 at the config's tolerance).
SAMPLERS = {"pc": {}, "ode": {"sampling.method": "ode"}}


def main(workdir: str = "runs/demo_digits", config_path: str = CONFIG) -> None:
    config = load_config(config_path)
    start = time.time()
    train(config, workdir)
    print(f"training: {time.time() - start:.0f} s")
    for tag, overrides in SAMPLERS.items():
        start = time.time()
        paths = sample_command(apply_overrides(config, overrides), workdir, tag)
        print(f"{tag} sampling: {time.time() - start:.0f} s\n{describe(paths)}")
    print(f"TensorBoard logs: {os.path.join(workdir, 'tensorboard')}  (tensorboard --logdir {workdir})")


if __name__ == "__main__":
    main()
