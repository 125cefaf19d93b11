"""Checkpoint files: naming and order, corrupt-latest fallback, pruning, and epoch averaging."""
import logging

import pytest
import torch

from wespeaker_lap.training import checkpoint as ckpt


def fake_state(step, weight, epoch=0):
    """A minimal state with every required key; ``weight`` fills the model and head tensors."""
    return {
        "config": {"model": {"backend": "x"}}, "epoch": epoch, "step_in_epoch": 0, "global_step": step,
        "model": {"w": torch.full((2, 3), float(weight)), "bn.num_batches_tracked": torch.tensor(step)},
        "head": {"weight": torch.full((4,), float(weight))}, "optimizer": {}, "scheduler": {}, "scaler": {},
        "nonfinite": {"in_row": 0, "total": 0}, "rng": [], "n_classes": 4, "speakers": ["a", "b"],
    }


def save(tmp_path, step, weight, epoch_end=None, keep=100, keep_epochs=100):
    path = ckpt.checkpoint_path(tmp_path, step, epoch_end)
    ckpt.save_checkpoint(fake_state(step, weight, epoch_end or 0), path, keep, keep_epochs)
    return path


def test_names_order_by_global_step(tmp_path):
    for step, epoch in [(20, 2), (5, None), (10, 1), (15, None)]:
        save(tmp_path, step, step, epoch)
    (tmp_path / "notes.pt").write_text("ignored")
    found = ckpt.list_checkpoints(tmp_path)
    assert [c.global_step for c in found] == [5, 10, 15, 20]
    assert [c.epoch for c in found] == [None, 1, None, 2]
    assert found[1].path.name == "epoch_0001_step_00000010.pt"


def test_latest_readable_checkpoint_is_loaded(tmp_path):
    save(tmp_path, 10, 1.0, 1)
    save(tmp_path, 15, 2.0)
    path, state = ckpt.load_latest_checkpoint(tmp_path)
    assert path.name == "step_00000015.pt" and state["global_step"] == 15


def test_corrupt_latest_falls_back_to_previous_with_a_warning(tmp_path, caplog):
    save(tmp_path, 10, 1.0, 1)
    latest = save(tmp_path, 15, 2.0)
    latest.write_bytes(latest.read_bytes()[:200])  # a torn write from a dying disk, say
    with caplog.at_level(logging.WARNING):
        path, state = ckpt.load_latest_checkpoint(tmp_path)
    assert path.name == "epoch_0001_step_00000010.pt" and state["global_step"] == 10
    assert "step_00000015.pt" in caplog.text and "falling back" in caplog.text
    assert not latest.exists() and latest.with_name(latest.name + ".corrupt").exists()
    assert [c.global_step for c in ckpt.list_checkpoints(tmp_path)] == [10]


def test_incomplete_state_counts_as_corrupt(tmp_path, caplog):
    save(tmp_path, 10, 1.0, 1)
    torch.save({"model": {}}, ckpt.checkpoint_path(tmp_path, 12, None))
    with caplog.at_level(logging.WARNING):
        path, _ = ckpt.load_latest_checkpoint(tmp_path)
    assert path.name.startswith("epoch_0001") and "missing" in caplog.text


def test_all_corrupt_raises_instead_of_restarting(tmp_path):
    save(tmp_path, 10, 1.0, 1).write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="none of the 1 checkpoints"):
        ckpt.load_latest_checkpoint(tmp_path)


def test_no_checkpoint_gives_none(tmp_path):
    assert ckpt.load_latest_checkpoint(tmp_path / "missing") is None


def test_pruning_keeps_newest_and_the_epochs_to_average(tmp_path):
    for step, epoch in [(3, None), (5, 1), (8, None), (10, 2), (13, None), (15, 3), (18, None)]:
        save(tmp_path, step, step, epoch, keep=2, keep_epochs=2)
    assert [c.global_step for c in ckpt.list_checkpoints(tmp_path)] == [10, 15, 18]


def test_average_of_last_epochs(tmp_path):
    save(tmp_path, 5, 1.0, 1)
    save(tmp_path, 10, 2.0, 2)
    save(tmp_path, 12, 50.0)  # mid-epoch: not part of the average
    save(tmp_path, 15, 4.0, 3)
    averaged, paths = ckpt.average_epoch_checkpoints(tmp_path, 2)
    assert [p.name for p in paths] == ["epoch_0002_step_00000010.pt", "epoch_0003_step_00000015.pt"]
    assert torch.equal(averaged["model"]["w"], torch.full((2, 3), 3.0))
    assert torch.equal(averaged["head"]["weight"], torch.full((4,), 3.0))
    assert averaged["model"]["bn.num_batches_tracked"].item() == 15  # a counter: the newest, not a mean
    assert averaged["global_step"] == 15 and averaged["speakers"] == ["a", "b"]


def test_average_keeps_dtype_and_rejects_mismatched_keys():
    a = {"w": torch.tensor([1.0, 2.0], dtype=torch.float16)}
    b = {"w": torch.tensor([3.0, 5.0], dtype=torch.float16)}
    out = ckpt.average_state_dicts([a, b])
    assert out["w"].dtype == torch.float16 and out["w"].tolist() == [2.0, 3.5]
    with pytest.raises(ValueError, match="different keys"):
        ckpt.average_state_dicts([a, {"v": torch.zeros(2)}])


def test_average_without_epoch_checkpoints_is_an_error(tmp_path):
    save(tmp_path, 3, 1.0)
    with pytest.raises(FileNotFoundError, match="no epoch-end checkpoint"):
        ckpt.average_epoch_checkpoints(tmp_path, 2)
