"""The user's data files: folders of PNG/JPEG images, .npy/.npz arrays, CIFAR-10's python batches and
MNIST's IDX files, all written here as real files in the formats users have them in. Round trips of
pixel values, labels, splits and levels; the errors that name the path; the streamed batches and
their checkpointed order; training through the CLI with two config fields."""
import gzip
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from ml_collections import ConfigDict
from PIL import Image

from sde_diffusion.app.config import data_group
from sde_diffusion.data import datasets
from sde_diffusion.data.loader import StepBatches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data(dataset: str, path, **fields) -> ConfigDict:
    return data_group(dataset, str(path), **fields)


def _rows(source) -> tuple[np.ndarray, np.ndarray]:
    values, labels = source.rows(range(len(source)))
    return values.numpy(), None if labels is None else labels.numpy()


def _as_set(images: np.ndarray, labels: np.ndarray) -> list[tuple[bytes, int]]:
    """Images with their labels as a sorted multiset, to compare splits with the files written."""
    return sorted((im.tobytes(), int(y)) for im, y in zip(images, labels))


def _split_matches(config: ConfigDict, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """train ∪ test is exactly the written set (as a multiset of (image, label)); returns the train rows."""
    (train_x, train_y), (test_x, test_y) = (_rows(s) for s in datasets.get_split(config))
    assert _as_set(np.concatenate([train_x, test_x]), np.concatenate([train_y, test_y])) == _as_set(images, labels)
    return train_x, train_y


# --- writers ---------------------------------------------------------------------------------------
def write_folder(root, classes: dict[str, np.ndarray], suffix: str = ".png") -> None:
    """uint8 images (N, C, H, W) per class into root/<class>/<i>.<suffix> (nested for odd i, to test
    the recursive scan)."""
    for name, images in classes.items():
        for i, image in enumerate(images):
            folder = os.path.join(root, name, "nested") if i % 2 else os.path.join(root, name)
            os.makedirs(folder, exist_ok=True)
            pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
            Image.fromarray(pixels).save(os.path.join(folder, f"{i:03d}{suffix}"))


def write_cifar10(root, rng, n_per_batch: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CIFAR-10 python-version batches: pickled dicts with bytes keys, b'data' (N, 3072) uint8 rows of
    1024 red, green, blue values, b'labels' a list of ints (protocol 2, as the official files)."""
    os.makedirs(root, exist_ok=True)
    out = []
    for names in ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]):
        images = rng.integers(0, 256, (len(names) * n_per_batch, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, len(names) * n_per_batch)
        for k, name in enumerate(names):
            rows = slice(k * n_per_batch, (k + 1) * n_per_batch)
            batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels[rows]],
                     b"data": images[rows].reshape(n_per_batch, 3072), b"filenames": [b"x.png"] * n_per_batch}
            with open(os.path.join(root, name), "wb") as f:
                pickle.dump(batch, f, protocol=2)
        out += [images, labels]
    return tuple(out)


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    """An IDX file of unsigned bytes: 0x00 0x00 0x08 n_dims, big-endian uint32 sizes, the data."""
    raw = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes() + array.astype(np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(raw) if compress else raw)


def write_mnist(root, rng, n_train: int = 12, n_test: int = 5, compress: bool = True):
    os.makedirs(root, exist_ok=True)
    out = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)
        suffix = ".gz" if compress else ""
        write_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte{suffix}"), images, compress)
        write_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte{suffix}"), labels, compress)
        out += [images[:, None], labels.astype(np.int64)]
    return tuple(out)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# --- folder ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
def test_folder_round_trip_labels_split_and_levels(tmp_path, rng, channels):
    """PNGs at the target size come back pixel for pixel with their class (sorted subdirectory names:
    'bird' 0, 'cat' 1), also from nested folders; 20% of 10 held out by a seeded permutation; 256
    levels, stored at bin centres (v + ½)/256 mapped to (-1, 1)."""
    classes = {"cat": rng.integers(0, 256, (6, channels, 4, 4), dtype=np.uint8),
               "bird": rng.integers(0, 256, (4, channels, 4, 4), dtype=np.uint8)}
    write_folder(tmp_path, classes)
    config = _data("folder", tmp_path, image_size=4, num_channels=channels)
    images = np.concatenate([classes["bird"], classes["cat"]])
    labels = np.array([0] * 4 + [1] * 6)
    train_x, train_y = _split_matches(config, images, labels)
    assert len(train_x) == 8 and datasets.num_classes(config) == 2
    assert datasets.levels(config) == 256 and datasets.data_shape(config) == (channels, 4, 4)
    x = datasets.read(config, datasets.get_split(config)[0])[0]
    assert torch.equal(x, torch.from_numpy(train_x).float().add(0.5).div(256).mul(2).sub(1))
    assert torch.equal(datasets.get_labels(config)[0], torch.from_numpy(train_y))
    other = _rows(datasets.get_split(_data("folder", tmp_path, image_size=4, num_channels=channels, seed=1))[0])[0]
    assert not np.array_equal(other, train_x)
    assert np.array_equal(_rows(datasets.get_split(config)[0])[0], train_x)


def test_folder_resizes_the_shorter_side_and_crops_the_centre(tmp_path):
    """A 12×48 (H×W) RGB image with 8-pixel outer bands and a grey centre: resized to 4×16 and centre-
    cropped to 4×4, only the centre remains, whose constant value bilinear resampling keeps exactly.
    A tall 40×10 JPEG becomes 4×4 grey; images without classes are unlabelled."""
    wide = np.zeros((12, 48, 3), dtype=np.uint8)
    wide[:, :8], wide[:, 8:40], wide[:, 40:] = (255, 0, 0), (90, 90, 90), (0, 0, 255)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray(np.full((40, 10), 200, dtype=np.uint8)).save(tmp_path / "tall.JPG", quality=100)
    config = _data("folder", tmp_path, image_size=4, num_channels=3, test_fraction=0.5)
    values = np.concatenate([_rows(s)[0] for s in datasets.get_split(config)])
    assert values.shape == (2, 3, 4, 4)
    assert any((v == 90).all() for v in values)
    grey = np.concatenate([_rows(s)[0] for s in datasets.get_split(_data("folder", tmp_path, image_size=4, num_channels=1, test_fraction=0.5))])
    assert grey.shape == (2, 1, 4, 4) and any(np.abs(v.astype(int) - 200).max() <= 1 for v in grey)
    assert datasets.num_classes(config) == 0 and datasets.get_split(config)[0].targets is None
    with pytest.raises(ValueError, match="data set 'folder' has no labels"):
        datasets.get_labels(config)


def test_folder_errors_name_the_path(tmp_path):
    """Missing path, no images, an empty class, mixed sizes without image_size, an unreadable file."""
    with pytest.raises(ValueError, match=f"config.data.path='{tmp_path}/nope' does not exist; expected a directory of PNG/JPEG"):
        datasets.get_split(_data("folder", tmp_path / "nope"))
    with pytest.raises(ValueError, match="config.data.path is not set"):
        datasets.check(data_group("folder"))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=f"class directory '{tmp_path}/a' holds no images"):
        datasets.get_split(_data("folder", tmp_path))
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "a" / "small.png")
    Image.fromarray(np.zeros((6, 6), dtype=np.uint8)).save(tmp_path / "a" / "big.png")
    with pytest.raises(ValueError, match=r"different sizes .*big.png' is 6×6, .*small.png' is 4×4\); set config.data.image_size"):
        datasets.get_split(_data("folder", tmp_path, image_size=None))
    os.remove(tmp_path / "a" / "big.png")
    assert datasets.data_shape(_data("folder", tmp_path, image_size=None)) == (1, 4, 4)
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    train, test = datasets.get_split(_data("folder", tmp_path, image_size=4, test_fraction=0.5))
    with pytest.raises(ValueError, match="cannot read image '.*broken.png'"):
        train.rows(range(len(train))) + test.rows(range(len(test)))
    with pytest.raises(ValueError, match="grey .* or RGB"):
        datasets.data_shape(_data("folder", tmp_path, num_channels=4))


# --- arrays ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_uint8_arrays_round_trip(tmp_path, rng, layout):
    """uint8 arrays in every layout come back channels-first with 256 levels; .npz labels are kept;
    a .npy is memory-mapped (its Source pickles to a few hundred bytes, not the data)."""
    images = rng.integers(0, 256, (20, 3 if layout != "NHW" else 1, 5, 5), dtype=np.uint8)
    stored = {"NHW": images[:, 0], "NHWC": images.transpose(0, 2, 3, 1), "NCHW": images}[layout]
    labels = rng.integers(0, 4, 20)
    np.savez(tmp_path / "data.npz", images=stored, labels=labels)
    np.save(tmp_path / "data.npy", stored)
    channels = images.shape[1]
    config = _data("array", tmp_path / "data.npz", image_size=5, num_channels=channels)
    _split_matches(config, images, labels)
    assert datasets.levels(config) == 256 and datasets.data_shape(config) == (channels, 5, 5)
    assert datasets.num_classes(config) == int(labels.max()) + 1
    npy = _data("array", tmp_path / "data.npy", image_size=None, num_channels=channels)
    train, test = datasets.get_split(npy)
    assert train.targets is None and datasets.num_classes(npy) == 0
    assert _as_set(np.concatenate([_rows(train)[0], _rows(test)[0]]), np.zeros(20)) == _as_set(images, np.zeros(20))
    assert len(pickle.dumps(train)) < 2000


def test_float_arrays_use_their_value_range(tmp_path, rng):
    """Float images in a stated range [-1, 1] are continuous (no levels; dequantising them is an
    error) and map to model space by y = (v + 1)/2, x = 2y - 1 = v; values outside the range raise."""
    images = rng.uniform(-1, 1, (10, 1, 4, 4)).astype(np.float32)
    np.save(tmp_path / "f.npy", images)
    config = _data("array", tmp_path / "f.npy", image_size=4, value_range=(-1.0, 1.0))
    assert datasets.levels(config) is None and datasets.bin_width(config) == 0.0
    train, test = datasets.get_dataset(config)
    got = torch.cat([train, test]).numpy()
    assert np.allclose(np.sort(got.ravel()), np.sort(images.ravel()), atol=1e-6)
    with pytest.raises(ValueError, match="uniform_dequantization applies to quantised data sets"):
        datasets.check(_data("array", tmp_path / "f.npy", image_size=4, value_range=(-1.0, 1.0), uniform_dequantization=True))
    with pytest.raises(ValueError, match=r"f.npy' holds values in \[-0\.99.*, 0\.96.*\], outside config.data.value_range=\(0.0, 1.0\)"):
        datasets.get_dataset(_data("array", tmp_path / "f.npy", image_size=4))


def test_array_errors_name_the_path(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros((5, 16), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"flat.npy' holds an array of shape \(5, 16\); expected images \(N, H, W\), \(N, H, W, C\) or \(N, C, H, W\)"):
        datasets.data_shape(_data("array", tmp_path / "flat.npy"))
    np.save(tmp_path / "rgb.npy", np.zeros((5, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="no channel axis .* of size config.data.num_channels=1"):
        datasets.data_shape(_data("array", tmp_path / "rgb.npy"))
    with pytest.raises(ValueError, match=r"rgb.npy' holds 4×4 images, got config.data.image_size=8"):
        datasets.data_shape(_data("array", tmp_path / "rgb.npy", num_channels=3))
    np.save(tmp_path / "wide.npy", np.zeros((5, 4, 4), dtype=np.int32))
    with pytest.raises(ValueError, match="holds int32 values; expected uint8"):
        datasets.levels(_data("array", tmp_path / "wide.npy", image_size=4))
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 4, 4)), b=np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="holds arrays a, b; expected the images under one of images, x, data"):
        datasets.data_shape(_data("array", tmp_path / "two.npz", image_size=4))
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read array file '.*bad.npy'"):
        datasets.data_shape(_data("array", tmp_path / "bad.npy"))
    with pytest.raises(ValueError, match="is neither a .npy nor a .npz file"):
        datasets.data_shape(_data("array", tmp_path))


# --- CIFAR-10 and MNIST ----------------------------------------------------------------------------
def test_cifar10_python_batches_round_trip(tmp_path, rng):
    """data_batch_1..5 are the training set, test_batch the test set, in file order; the 3072 bytes of
    a row are the red, green and blue 32×32 planes; labels kept; 256 levels, 10 classes."""
    train_x, train_y, test_x, test_y = write_cifar10(tmp_path, rng)
    config = _data("cifar10", tmp_path, image_size=32, num_channels=3)
    (got_x, got_y), (got_tx, got_ty) = (_rows(s) for s in datasets.get_split(config))
    assert np.array_equal(got_x, train_x) and np.array_equal(got_y, train_y)
    assert np.array_equal(got_tx, test_x) and np.array_equal(got_ty, test_y)
    assert datasets.levels(config) == 256 and datasets.num_classes(config) == 10 and datasets.data_shape(config) == (3, 32, 32)
    with pytest.raises(ValueError, match="cifar10 images are num_channels=3, got config.data.num_channels=1"):
        datasets.get_split(_data("cifar10", tmp_path, image_size=32, num_channels=1))


def test_cifar10_errors_and_untrusted_pickles(tmp_path, rng):
    """A missing batch is named; a pickle that would call anything but numpy's array constructors
    (here os.system) is refused without running it."""
    write_cifar10(tmp_path, rng)
    os.remove(tmp_path / "data_batch_3")
    config = _data("cifar10", tmp_path, image_size=32, num_channels=3)
    with pytest.raises(ValueError, match="data_batch_3' does not exist; expected CIFAR-10's python-version directory"):
        datasets.get_split(config)

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(ValueError, match=r"cannot read CIFAR-10 batch '.*data_batch_3'.*(posix|os)\.system is not allowed"):
        datasets.get_split(config)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_idx_round_trip(tmp_path, rng, compress):
    """train-* and t10k-* IDX files, gzipped or not, give (N, 1, 28, 28) uint8 images and labels in
    file order; 256 levels, 10 classes."""
    train_x, train_y, test_x, test_y = write_mnist(tmp_path, rng, compress=compress)
    config = _data("mnist", tmp_path, image_size=28)
    (got_x, got_y), (got_tx, got_ty) = (_rows(s) for s in datasets.get_split(config))
    assert np.array_equal(got_x, train_x) and np.array_equal(got_y, train_y)
    assert np.array_equal(got_tx, test_x) and np.array_equal(got_ty, test_y)
    assert datasets.levels(config) == 256 and datasets.num_classes(config) == 10 and datasets.data_shape(config) == (1, 28, 28)


def test_mnist_errors_name_the_file(tmp_path, rng):
    write_mnist(tmp_path, rng)
    config = _data("mnist", tmp_path, image_size=28)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.uint8), compress=True)
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz' holds \(4,\) labels for 5 images"):
        datasets.get_split(config)
    raw = gzip.decompress((tmp_path / "train-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(ValueError, match=r"declares shape \(12, 28, 28\) \(9408 bytes\) but holds 9398 bytes"):
        datasets.get_split(config)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + raw[4:]))
    with pytest.raises(ValueError, match="is not an IDX file of unsigned bytes"):
        datasets.get_split(config)
    os.remove(tmp_path / "train-images-idx3-ubyte.gz")
    with pytest.raises(ValueError, match="neither 'train-images-idx3-ubyte' nor 'train-images-idx3-ubyte.gz' found"):
        datasets.get_split(config)
    with pytest.raises(ValueError, match="mnist images are image_size=28, got config.data.image_size=32"):
        datasets.get_split(_data("mnist", tmp_path, image_size=32))


# --- streamed batches and their order -------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 2])
def test_step_batches_follow_the_data_generator(tmp_path, workers):
    """Step n's rows are the n-th ``torch.randint`` draw of the data generator, read from a memory-
    mapped .npy by any number of workers; after each batch the position generator is exactly the
    generator after that draw (workers prefetch further ahead), so new batches started from it
    continue the same sequence."""
    values = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1).repeat(2, axis=2).repeat(2, axis=3)
    np.save(tmp_path / "rows.npy", values)
    source = datasets.get_split(_data("array", tmp_path / "rows.npy", image_size=2, test_fraction=0.5))[0]
    reference = torch.Generator().manual_seed(3)
    position = torch.Generator().manual_seed(3)
    with StepBatches(source, 5, position, workers) as batches:
        for _ in range(4):
            idx = torch.randint(len(source), (5,), generator=reference)
            got, labels = next(batches)
            assert torch.equal(got, torch.from_numpy(values[source.members[idx.numpy()]])) and labels is None
            assert torch.equal(position.get_state(), reference.get_state())
    with StepBatches(source, 5, position, 0) as again:
        idx = torch.randint(len(source), (5,), generator=reference)
        assert torch.equal(next(again)[0], torch.from_numpy(values[source.members[idx.numpy()]]))


def test_streamed_class_conditional_run_resumes_exactly(tmp_path, monkeypatch):
    """A class-conditional U-Net trained on a labelled folder, streamed by 2 workers with random
    flips and dequantisation, crashes at step 7 and resumes from its step-6 checkpoint: it ends
    bit-identical to an uninterrupted run read in the training process (0 workers), so the
    checkpointed data order does not depend on how far the workers had read ahead."""
    from sde_diffusion.app import train as train_lib
    from sde_diffusion.app.config import apply_overrides, get_digits_config, model_group, validate

    rng = np.random.default_rng(0)
    write_folder(tmp_path / "images", {name: rng.integers(0, 256, (6, 1, 4, 4), dtype=np.uint8) for name in ("a", "b", "c")})
    config = get_digits_config()
    config.data = data_group("folder", str(tmp_path / "images"), image_size=4, num_channels=1, random_flip=True,
                             uniform_dequantization=True, num_workers=2)
    config.model = model_group("unet", image_size=4, num_channels=1, nf=8, ch_mult=(1,), num_res_blocks=1, num_classes=3)
    config = validate(apply_overrides(config, {
        "training.n_iters": 9, "training.snapshot_freq": 3, "training.batch_size": 4, "training.progress": False,
        "training.sample_freq": 0, "training.cond_drop_prob": 0.2,
    }))
    straight = train_lib.train(apply_overrides(config, {"data.num_workers": 0}), str(tmp_path / "straight"))
    real_step = train_lib.train_step

    def crash_at_7(state, *args):
        if state.step == 7:
            raise KeyboardInterrupt
        return real_step(state, *args)

    monkeypatch.setattr(train_lib, "train_step", crash_at_7)
    with pytest.raises(KeyboardInterrupt):
        train_lib.train(config, str(tmp_path / "resumed"))
    monkeypatch.setattr(train_lib, "train_step", real_step)
    resumed = train_lib.train(config, str(tmp_path / "resumed"))
    assert resumed.step == straight.step == 9
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


# --- training through the command line -------------------------------------------------------------
def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "sde_diffusion", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


#: A tiny network and two steps: the runs check that the data reach the model, not that it learns.
TINY = ["--config.model.nf=8", "--config.model.num_res_blocks=1", "--config.training.batch_size=4",
        "--config.training.n_iters=2", "--config.training.sample_freq=0", "--config.training.progress=False"]


def _write(kind: str, path, rng) -> str:
    if kind == "folder":
        write_folder(path, {"x": rng.integers(0, 256, (5, 3, 40, 36), dtype=np.uint8)}, suffix=".jpg")
    elif kind == "array":
        os.makedirs(path)
        path = path / "images.npz"
        np.savez(path, images=rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), labels=rng.integers(0, 3, 10))
    elif kind == "cifar10":
        write_cifar10(path, rng, n_per_batch=2)
    else:
        write_mnist(path, rng)
    return str(path)


@pytest.mark.parametrize("kind, config", [("folder", "rgb32"), ("array", "rgb32"), ("cifar10", "rgb32"), ("mnist", "mnist")])
def test_cli_trains_on_user_files_with_two_fields(tmp_path, rng, kind, config):
    """``train`` with the shipped image config and only ``data.dataset`` and ``data.path`` set (plus a
    tiny network) runs on each format and writes its checkpoint; for the folder, ``sample`` then
    works with the data gone, since the sample shape comes from the config."""
    path = _write(kind, tmp_path / "data", rng)
    workdir = str(tmp_path / "run")
    args = ["--config", f"configs/vp/{config}.py", "--workdir", workdir, f"--config.data.dataset={kind}", f"--config.data.path={path}"]
    out = cli("train", *args, *TINY)
    assert out.returncode == 0, out.stderr
    assert os.path.isfile(os.path.join(workdir, "checkpoints", "ckpt_2.pt"))
    if kind == "folder":
        os.rename(path, path + "_gone")
        out = cli("sample", *args, *TINY, "--config.sampling.steps=2", "--config.sampling.n_samples=2")
        assert out.returncode == 0, out.stderr
        assert np.load(os.path.join(workdir, "samples", "pc.npz"))["samples"].shape == (2, 3, 32, 32)
        out = cli("train", *args, *TINY, "--config.training.n_iters=3")
        assert out.returncode != 0 and f"error: bad config.data: config.data.path={path!r} does not exist" in out.stderr
