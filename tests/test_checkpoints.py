"""Checkpoint files: round trip, keep-last-k, the latest one, and atomicity under a crash mid-write."""
import os

import pytest
import torch

from sde_diffusion.training import checkpoints
from sde_diffusion.training.checkpoints import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint


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


@pytest.mark.parametrize("crash_step", [2, 1])
def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch, crash_step):
    """torch.save writes half of its bytes and then dies (a crash of a real component: the process
    is killed or the disk fills mid-write). Whether the crash hits a new step (2) or a rewrite of the
    existing step (1), the previous ckpt_1.pt must still load with its original contents, remain the
    latest checkpoint, and no temporary file may be left behind."""
    d = str(tmp_path)
    save_checkpoint(d, 1, _state(1), keep=3)
    real_save = torch.save

    def crashing_save(obj, f):
        real_save(obj, f)
        f.seek(0)
        f.truncate(f.tell() // 2 + 10)
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", crashing_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(d, crash_step, _state(crash_step), keep=3)
    monkeypatch.setattr(checkpoints.torch, "save", real_save)

    assert os.listdir(d) == ["ckpt_1.pt"]
    assert latest_checkpoint(d) == os.path.join(d, "ckpt_1.pt")
    loaded = load_checkpoint(latest_checkpoint(d))
    assert loaded["step"] == 1 and torch.equal(loaded["weights"], _state(1)["weights"])


def test_leftover_temporary_is_ignored(tmp_path):
    """A process killed outright (no cleanup) leaves its temporary file; it is never taken for a
    checkpoint, and the next save succeeds."""
    d = str(tmp_path)
    save_checkpoint(d, 1, _state(1), keep=3)
    with open(os.path.join(d, ".ckpt_2.abc123.tmp"), "wb") as f:
        f.write(b"\x80\x02partial")
    assert latest_checkpoint(d).endswith("ckpt_1.pt")
    save_checkpoint(d, 2, _state(2), keep=3)
    assert [s for s, _ in list_checkpoints(d)] == [1, 2]


def test_keep_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="keep must be >= 1, got 0"):
        save_checkpoint(str(tmp_path), 1, _state(1), keep=0)
