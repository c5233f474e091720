"""Feature networks for ``image_metrics``: a small classifier trained on the data set's own training
split (any image size; seconds on a CPU for the 8×8 digits), cached on disk with its test accuracy,
and the FID Inception-v3 network of torch-fidelity when its weights are on disk.

``FeatureNet`` features are the penultimate layer (the SiLU of the last hidden linear layer), on
images in model space, as the classifier was trained. They give a Fréchet distance and KID that
rank samples of one data set; they are not comparable with a published FID (another network, layer,
data set and N), nor between two classifiers (compare ``weights_sha256``).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import sys
import time
import types
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
from torch import nn
from torch.nn import functional as F

from sde_diffusion.evaluation.image_metrics import FeatureFn


class FeatureNet(nn.Module):
    """logits = W_out φ(x), φ(x) = SiLU(W_f AvgPool(h₃)), h₁ = SiLU(conv₃ₓ₃ x), h₂, h₃ = SiLU(stride-2
    conv₃ₓ₃ of the previous), widths w, 2w, 4w. ``features`` returns φ(x), the d = ``feature_dim``
    penultimate activations."""

    def __init__(self, num_channels: int, num_classes: int, feature_dim: int = 64, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(num_channels, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * width, feature_dim),
            nn.SiLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass(frozen=True)
class FeatureNetSettings:
    """How ``train_feature_net`` trains: Adam with weight decay, cross-entropy, each batch shifted by up
    to ``shift`` pixels (edge-replicated) and jittered uniformly within ± ``jitter``/2 (the data's bin
    width, so that values between grey levels, as in samples, are seen)."""

    feature_dim: int = 64
    width: int = 32
    epochs: int = 30
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    shift: int = 1
    jitter: float = 0.0
    seed: int = 0


def random_shift(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image translated by its own uniform offset in [-shift, shift]² pixels, edges replicated."""
    if shift == 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
    dy, dx = (torch.randint(0, 2 * shift + 1, (b,), generator=generator) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(b)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]


def accuracy(net: FeatureNet, x: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(dim=1) == labels).to(torch.float64).mean())


def train_feature_net(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int,
    settings: FeatureNetSettings = FeatureNetSettings(),
) -> tuple[FeatureNet, dict[str, Any]]:
    """A ``FeatureNet`` trained on (train, train_labels) (images (N, C, H, W) in model space), in eval
    mode without gradients, and its description: train and test accuracy, sizes, settings, seconds
    and the SHA-256 of its weights."""
    if train.ndim != 4 or train.shape[0] != train_labels.shape[0] or test.shape[0] != test_labels.shape[0]:
        raise ValueError(f"need images (N, C, H, W) with one label each, got {tuple(train.shape)} with {tuple(train_labels.shape)} labels")
    start = time.perf_counter()
    torch.manual_seed(settings.seed)
    g = torch.Generator().manual_seed(settings.seed)
    net = FeatureNet(train.shape[1], num_classes, settings.feature_dim, settings.width)
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = max(1, train.shape[0] // settings.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.epochs * steps_per_epoch)
    net.train()
    for _ in range(settings.epochs):
        perm = torch.randperm(train.shape[0], generator=g)
        for k in range(steps_per_epoch):
            idx = perm[k * settings.batch_size : (k + 1) * settings.batch_size]
            x = random_shift(train[idx], settings.shift, g)
            x = x + (torch.rand(x.shape, generator=g) - 0.5) * settings.jitter
            loss = F.cross_entropy(net(x), train_labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
    net.eval().requires_grad_(False)
    info = {
        "network": "FeatureNet",
        "layer": f"penultimate (SiLU of the last hidden layer, d = {settings.feature_dim})",
        "test_accuracy": accuracy(net, test, test_labels),
        "train_accuracy": accuracy(net, train, train_labels),
        "n_train": train.shape[0],
        "n_test": test.shape[0],
        "settings": asdict(settings),
        "train_seconds": time.perf_counter() - start,
        "weights_sha256": weights_hash(net),
    }
    return net, info


def weights_hash(net: nn.Module) -> str:
    """SHA-256 of the network's parameters and buffers (names and float32 bytes)."""
    h = hashlib.sha256()
    for name, value in net.state_dict().items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _fingerprint(tensors: tuple[torch.Tensor, ...], settings: FeatureNetSettings, num_classes: int) -> str:
    """SHA-256 of the training inputs, so that a cache trained on other data or settings is not reused."""
    h = hashlib.sha256(json.dumps({"settings": asdict(settings), "num_classes": num_classes}, sort_keys=True).encode())
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_or_train_feature_net(
    path: Optional[str],
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int,
    settings: FeatureNetSettings = FeatureNetSettings(),
    log: Optional[Any] = None,
) -> tuple[FeatureNet, dict[str, Any]]:
    """The network cached at ``path`` (a ``.pt`` file, with its description in ``<path>.json``) if it
    was trained on exactly these inputs and settings; otherwise ``train_feature_net``, saved there
    (``path`` None: no cache). ``log`` receives one line saying which happened."""
    fingerprint = _fingerprint((train, train_labels, test, test_labels), settings, num_classes)
    if path is not None and os.path.exists(path):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("fingerprint") == fingerprint:
            net = FeatureNet(train.shape[1], num_classes, settings.feature_dim, settings.width)
            net.load_state_dict(saved["state_dict"])
            net.eval().requires_grad_(False)
            info = json.loads(saved["info"])
            if log is not None:
                log(f"feature classifier: loaded {path} (test accuracy {info['test_accuracy']:.3f})")
            return net, info
    net, info = train_feature_net(train, train_labels, test, test_labels, num_classes=num_classes, settings=settings)
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        torch.save({"state_dict": net.state_dict(), "info": json.dumps(info), "fingerprint": fingerprint}, path)
        with open(path + ".json", "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=2)
    if log is not None:
        log(f"feature classifier: trained in {info['train_seconds']:.1f} s, test accuracy {info['test_accuracy']:.3f}" + (f", saved to {path}" if path else ""))
    return net, info


def feature_fn(net: FeatureNet, batch_size: int = 1000) -> FeatureFn:
    """``images -> net.features(images)`` in batches, images cast to the network's dtype and device."""
    weight = next(net.parameters())

    def features(x: torch.Tensor) -> torch.Tensor:
        x = x.to(dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            return torch.cat([net.features(x[s : s + batch_size]) for s in range(0, x.shape[0], batch_size)])

    return features


# --- FID Inception-v3 (torch-fidelity) --------------------------------------------------------------
def _fidelity_inception_class() -> type:
    """torch-fidelity's ``FeatureExtractorInceptionV3``. The package's ``__init__`` imports every
    feature extractor, some of which need torchvision; when that import fails (no torchvision, or a
    torchvision built for another torch), the Inception module, which needs only torch, is imported
    under a bare package module instead."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        return FeatureExtractorInceptionV3
    except ImportError as err:
        if getattr(err, "name", None) == "torch_fidelity" or importlib.util.find_spec("torch_fidelity") is None:
            raise ImportError("Inception features need torch-fidelity: pip install --no-deps torch-fidelity") from err
    except RuntimeError:
        pass
    spec = importlib.util.find_spec("torch_fidelity")
    package = types.ModuleType("torch_fidelity")
    package.__path__ = list(spec.submodule_search_locations)
    for name in [m for m in sys.modules if m == "torch_fidelity" or m.startswith("torch_fidelity.")]:
        del sys.modules[name]
    sys.modules["torch_fidelity"] = package
    return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3").FeatureExtractorInceptionV3


def inception_features(weights_path: str, *, batch_size: int = 50, device: str = "cpu") -> FeatureFn:
    """The 2048-d pool3 features of the FID Inception-v3 (torch-fidelity's TF-ported network, its
    bilinear resize to 299×299 included) from the weights file at ``weights_path``
    (``weights-inception-2015-12-05-6726825d.pth``; nothing is downloaded). Images (N, C, H, W) with
    values in [0, 1] are quantised to uint8 (round) and grey images repeated to RGB, as FID expects."""
    if not os.path.isfile(weights_path):
        raise ValueError(f"no Inception weights file at {weights_path!r} (FID needs the file on disk; nothing is downloaded)")
    net = _fidelity_inception_class()("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights_path).to(device)

    def features(x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"Inception features need images (N, 1 or 3, H, W), got shape {tuple(x.shape)}")
        images = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
        with torch.no_grad():
            return torch.cat([net(images[s : s + batch_size].to(device))[0].cpu() for s in range(0, x.shape[0], batch_size)])

    return features
