"""Classifier-free guidance on the 8×8 digits: how often a classifier trained on real digits labels a
class-k sample as k, per class and overall, and how diverse the samples stay, as the guidance weight w
grows (w = -1 is the unconditional model, w = 0 the plain conditional one).

    python -m benchmarks.guidance_digits [--workdir runs/digits_cond] [--n-iters N] [--per-class 100]
                                         [--scales -1 0 0.5 1 2 4] [--threads 1]

1. Trains (or resumes, so a re-run only samples) the class-conditional VP model of
   ``configs/digits_vp_conditional.py`` in ``--workdir``.
2. Fits a multinomial logistic regression (scikit-learn) on the real training digits, pixels in [0, 1],
   and reports its accuracy on the held-out real digits.
3. For each w, draws ``--per-class`` samples of every class with the config's sampler and weight w,
   classifies them, and writes ``guidance_w<w>.png`` (one row per class) under ``<workdir>/guidance``.
   Diversity is the per-pixel standard deviation within a class, averaged over pixels and classes,
   relative to that of the real held-out digits (1 = as varied as the data).

Prints a table and writes ``<workdir>/guidance/results.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
from sklearn.linear_model import LogisticRegression

from sde_diffusion.app.build import draw_samples
from sde_diffusion.app.config import apply_overrides, load_config, validate
from sde_diffusion.app.train import train
from sde_diffusion.app.workdir import load_score_fn, write_samples
from sde_diffusion.conditioning.guidance import ALL_CLASSES
from sde_diffusion.data import datasets

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "digits_vp_conditional.py")


def real_digit_classifier(config) -> tuple[LogisticRegression, float]:
    """Logistic regression on the real training digits (pixels in [0, 1]) and its held-out accuracy."""
    to_unit = datasets.get_inverse_scaler(config.data)
    (train_x, test_x), (train_y, test_y) = datasets.get_dataset(config.data), datasets.get_labels(config.data)
    clf = LogisticRegression(max_iter=5000, C=0.1)
    clf.fit(to_unit(train_x).flatten(1).numpy(), train_y.numpy())
    return clf, float(clf.score(to_unit(test_x).flatten(1).numpy(), test_y.numpy()))


def within_class_spread(x: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Per-pixel standard deviation within each class, averaged over pixels and classes."""
    flat = x.flatten(1)
    return float(torch.stack([flat[labels == k].std(0).mean() for k in range(num_classes)]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/digits_cond")
    parser.add_argument("--n-iters", type=int, default=None, help="training steps (default: the config's)")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--scales", type=float, nargs="+", default=[-1.0, 0.0, 0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    overrides = {"training.progress": False} if args.n_iters is None else {"training.n_iters": args.n_iters, "training.progress": False}
    config = load_config(CONFIG, overrides)
    start = time.perf_counter()
    train(config, args.workdir)
    train_s = time.perf_counter() - start

    clf, real_acc = real_digit_classifier(config)
    print(f"logistic regression on real digits: held-out accuracy {real_acc:.3f}; training {train_s:.0f} s")
    sde, score_fn = load_score_fn(config, args.workdir)
    num_classes = config.model.num_classes
    test_x, test_y = datasets.get_dataset(config.data)[1], datasets.get_labels(config.data)[1]
    real_spread = within_class_spread(datasets.get_inverse_scaler(config.data)(test_x), test_y, num_classes)
    out_dir = os.path.join(args.workdir, "guidance")
    rows = []
    for w in args.scales:
        cfg = validate(apply_overrides(config, {"sampling.class_label": ALL_CLASSES, "sampling.guidance_scale": w}))
        start = time.perf_counter()
        x, nfe = draw_samples(cfg, sde, score_fn, num_classes * args.per_class, args.seed, progress=False)
        labels = torch.arange(num_classes).repeat_interleave(args.per_class)
        predicted = torch.as_tensor(clf.predict(x.clamp(0, 1).flatten(1).numpy()))
        correct = (predicted == labels).reshape(num_classes, args.per_class).double().mean(1)
        rows.append({"w": w, "nfe": nfe, "seconds": time.perf_counter() - start,
                     "accuracy": float(correct.mean()), "per_class": correct.tolist(),
                     "diversity": within_class_spread(x.clamp(0, 1), labels, num_classes) / real_spread})
        shown = x.reshape(num_classes, args.per_class, *x.shape[1:])[:, :10].flatten(0, 1)
        write_samples(os.path.join(out_dir, f"guidance_w{w:g}"), shown, f"w = {w:g}: one row per class", nrow=10)
        print(f"w = {w:<4g} accuracy {rows[-1]['accuracy']:.3f}  diversity {rows[-1]['diversity']:.2f}  per class"
              f" {' '.join(f'{a:.2f}' for a in correct.tolist())}  ({nfe} NFE, {rows[-1]['seconds']:.0f} s)")
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"method": config.sampling.method, "steps": config.sampling.steps, "per_class": args.per_class,
                   "n_iters": config.training.n_iters, "train_seconds": train_s, "real_accuracy": real_acc,
                   "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
