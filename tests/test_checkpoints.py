"""Checkpoint files: round trip, keep-last-k, the latest one, atomicity under a failed write, the
checksum against every kind of damage, the fallback to the newest valid file, temporaries and the
writability check. (Kills and signals of real training processes: tests/test_reliability.py.)"""
import os
import resource

import pytest
import torch

from sde_diffusion.training.checkpoints import (
    CorruptCheckpointError,
    check_writable,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    remove_temporaries,
    save_checkpoint,
    set_aside,
)


def _state(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    return {"step": step, "weights": torch.randn(64, generator=g), "rng": g.get_state(), "note": ("a", 1, None)}


def test_round_trip_and_keep_last_k(tmp_path):
    """Six saves with keep=2 leave exactly steps 5 and 6, and each loads back bit for bit."""
    d = str(tmp_path)
    for step in range(1, 7):
        save_checkpoint(d, step, _state(step), keep=2)
    assert [s for s, _ in list_checkpoints(d)] == [5, 6]
    assert latest_checkpoint(d) == os.path.join(d, "ckpt_6.pt")
    loaded = load_checkpoint(latest_checkpoint(d))
    assert loaded["step"] == 6 and loaded["note"] == ("a", 1, None)
    assert torch.equal(loaded["weights"], _state(6)["weights"])
    assert torch.equal(loaded["rng"], _state(6)["rng"])
    assert sorted(os.listdir(d)) == ["ckpt_5.pt", "ckpt_6.pt"]


def test_latest_orders_steps_numerically(tmp_path):
    """ckpt_10 is newer than ckpt_9 (a string sort would say otherwise)."""
    d = str(tmp_path)
    for step in (9, 10):
        save_checkpoint(d, step, _state(step), keep=5)
    assert latest_checkpoint(d).endswith("ckpt_10.pt")
    assert latest_checkpoint(str(tmp_path / "missing")) is None


@pytest.fixture
def file_size_limit():
    """``limit(n)``: writes past n bytes fail with EFBIG (RLIMIT_FSIZE; Python ignores SIGXFSZ), a
    real failed write as when the disk fills; the limit is restored afterwards."""
    previous = resource.getrlimit(resource.RLIMIT_FSIZE)
    yield lambda n: resource.setrlimit(resource.RLIMIT_FSIZE, (n, previous[1]))
    resource.setrlimit(resource.RLIMIT_FSIZE, previous)


@pytest.mark.parametrize("crash_step", [2, 1])
def test_failed_write_keeps_previous_checkpoint(tmp_path, file_size_limit, crash_step):
    """The write of a new checkpoint fails half-way (the file size limit is half a checkpoint).
    Whether it is a new step (2) or a rewrite of the existing step (1), the previous ckpt_1.pt must
    still load with its original contents, remain the latest checkpoint, and the temporary file is
    removed."""
    d = str(tmp_path)
    save_checkpoint(d, 1, _state(1), keep=3)
    size = os.path.getsize(os.path.join(d, "ckpt_1.pt"))
    file_size_limit(size // 2)
    with pytest.raises(OSError, match="File too large"):
        save_checkpoint(d, crash_step, _state(crash_step), keep=3)
    file_size_limit(resource.RLIM_INFINITY)
    assert os.listdir(d) == ["ckpt_1.pt"]
    loaded = load_checkpoint(latest_checkpoint(d))
    assert loaded["step"] == 1 and torch.equal(loaded["weights"], _state(1)["weights"])


def _damage(path: str, kind: str) -> None:
    data = open(path, "rb").read()
    damaged = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "trailer cut": data[:-10],
        "garbage": bytes(range(256)) * 8,
        "one byte flipped": data[:100] + bytes([data[100] ^ 1]) + data[101:],
        "bytes appended": data + b"\0" * 16,
    }[kind]
    with open(path, "wb") as f:
        f.write(damaged)


DAMAGE = ["empty", "truncated", "trailer cut", "garbage", "one byte flipped", "bytes appended"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_checkpoint_is_reported_in_one_line(tmp_path, kind):
    """Each kind of damage raises CorruptCheckpointError naming the file and what is wrong, in one
    line, without torch's traceback or its advice to load with weights_only=False."""
    path = save_checkpoint(str(tmp_path), 3, _state(3), keep=1)
    _damage(path, kind)
    with pytest.raises(CorruptCheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"checkpoint {path} ") and "\n" not in message and "weights_only" not in message
    assert info.value.path == path and info.value.__cause__ is None


def test_checkpoint_is_a_torch_file_and_old_files_still_load(tmp_path):
    """The trailer does not stop plain ``torch.load`` from reading a checkpoint; a file written
    without one (before checksums) loads too."""
    path = save_checkpoint(str(tmp_path), 4, _state(4), keep=1)
    assert torch.equal(torch.load(path, weights_only=True)["weights"], _state(4)["weights"])
    legacy = str(tmp_path / "ckpt_5.pt")
    torch.save(_state(5), legacy)
    assert torch.equal(load_checkpoint(legacy)["weights"], _state(5)["weights"])


def test_load_latest_falls_back_past_damaged_files(tmp_path):
    """ckpt_3 empty and ckpt_2 garbage: the newest valid file, ckpt_1, is loaded and both skipped
    files are reported newest first and left in place; set_aside renames one without deleting it."""
    d = str(tmp_path)
    for step in (1, 2, 3):
        save_checkpoint(d, step, _state(step), keep=3)
    _damage(os.path.join(d, "ckpt_3.pt"), "empty")
    _damage(os.path.join(d, "ckpt_2.pt"), "garbage")
    path, state, skipped = load_latest(d)
    assert path == os.path.join(d, "ckpt_1.pt") and state["step"] == 1
    assert [e.path for e in skipped] == [os.path.join(d, "ckpt_3.pt"), os.path.join(d, "ckpt_2.pt")]
    assert sorted(os.listdir(d)) == ["ckpt_1.pt", "ckpt_2.pt", "ckpt_3.pt"]
    moved = set_aside(os.path.join(d, "ckpt_2.pt"))
    assert moved == os.path.join(d, "ckpt_2.pt.corrupt") and os.path.getsize(moved) == 2048
    assert [s for s, _ in list_checkpoints(d)] == [1, 3]
    assert load_latest(str(tmp_path / "none")) == (None, None, [])


def test_every_checkpoint_damaged_is_an_error_naming_each(tmp_path):
    d = str(tmp_path)
    for step in (1, 2):
        save_checkpoint(d, step, _state(step), keep=2)
        _damage(os.path.join(d, f"ckpt_{step}.pt"), "truncated")
    with pytest.raises(CorruptCheckpointError, match=rf"no valid checkpoint in {d}: checkpoint .*ckpt_2.pt is truncated .*; checkpoint .*ckpt_1.pt is truncated"):
        load_latest(d)


def test_intact_checkpoint_that_cannot_be_loaded_is_not_skipped(tmp_path):
    """A checkpoint whose checksum matches but which holds an object that weights_only loading
    refuses is not damaged: no fallback to an older one (it would fail alike), a one-line error."""
    d = str(tmp_path)
    save_checkpoint(d, 1, _state(1), keep=2)
    save_checkpoint(d, 2, {"step": 2, "obj": ValueError("not a tensor")}, keep=2)
    with pytest.raises(ValueError, match=r"ckpt_2.pt is intact \(its checksum matches\) but cannot be loaded by this version of the code \(UnpicklingError\)$") as info:
        load_latest(d)
    assert not isinstance(info.value, CorruptCheckpointError)


def test_leftover_temporary_is_ignored_and_removed(tmp_path):
    """A process killed outright (no cleanup) leaves its temporary file; it is never taken for a
    checkpoint, the next save succeeds, and remove_temporaries deletes it and nothing else."""
    d = str(tmp_path)
    save_checkpoint(d, 1, _state(1), keep=3)
    with open(os.path.join(d, ".ckpt_2.abc123.tmp"), "wb") as f:
        f.write(b"\x80\x02partial")
    assert latest_checkpoint(d).endswith("ckpt_1.pt")
    save_checkpoint(d, 2, _state(2), keep=3)
    assert [s for s, _ in list_checkpoints(d)] == [1, 2]
    assert remove_temporaries(d) == [os.path.join(d, ".ckpt_2.abc123.tmp")]
    assert sorted(os.listdir(d)) == ["ckpt_1.pt", "ckpt_2.pt"]


def test_check_writable_names_the_directory_and_reason(tmp_path):
    """A directory that can be created and written passes and is left empty; a path under a
    regular file cannot be a directory. (Read-only and immutable directories: test_reliability.)"""
    check_writable(str(tmp_path / "new" / "checkpoints"))
    assert os.listdir(tmp_path / "new" / "checkpoints") == []
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"checkpoint directory '.*file/checkpoints' is not writable: Not a directory"):
        check_writable(str(tmp_path / "file" / "checkpoints"))


def test_keep_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="keep must be >= 1, got 0"):
        save_checkpoint(str(tmp_path), 1, _state(1), keep=0)
