import os

import pytest
import torch
from torch import nn

from selfsup.engine import checkpoint
from selfsup.errors import SelfsupError


def _state(value=1.0):
    return {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "model": {"w": torch.full((3,), value)},
            "config": {"method": {"name": "simclr"}, "backbone": {"name": "toy", "width": 8}}}


def test_atomic_save_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    checkpoint.save_atomic(_state(1.0), path)
    checkpoint.save_atomic(_state(2.0), path)
    assert checkpoint.load(path)["model"]["w"][0] == 2.0
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic(_state(1.0), path)
    before = path.read_bytes()

    def disk_full(obj, handle):
        handle.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(SelfsupError, match="No space left on device.*previous checkpoint is intact"):
        checkpoint.save_atomic(_state(2.0), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_truncated_checkpoint_gives_clear_error_and_is_not_touched(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic(_state(), path)
    path.write_bytes(path.read_bytes()[:100])
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    with pytest.raises(SelfsupError, match="last.pt is not a readable checkpoint.*left untouched"):
        checkpoint.load(path)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickled_code_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"format": checkpoint.FORMAT, "model": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(SelfsupError) as err:
        checkpoint.load(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    message = str(err.value)
    assert "not a weights-only checkpoint" in message and "may be unsafe" in message
    # Never pass on PyTorch's hint to unpickle the file anyway.
    assert "weights_only" not in message and "False" not in message


def test_other_files_are_refused(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(SelfsupError, match="not a selfsup checkpoint"):
        checkpoint.load(tmp_path / "plain.pt")
    with pytest.raises(SelfsupError, match="does not exist"):
        checkpoint.load(tmp_path / "absent.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(SelfsupError, match="not a readable checkpoint"):
        checkpoint.load(tmp_path / "text.pt")


def test_run_directory_resolves_to_last_checkpoint(tmp_path):
    checkpoint.save_atomic(_state(3.0), tmp_path / "checkpoints" / "last.pt")
    assert checkpoint.load(tmp_path)["model"]["w"][0] == 3.0


def test_architecture_mismatch_names_the_difference(tmp_path):
    checkpoint.save_atomic(_state(), tmp_path / "last.pt")
    state = checkpoint.load(tmp_path / "last.pt")
    other = {"method": {"name": "simclr"}, "backbone": {"name": "toy", "width": 16}}
    with pytest.raises(SelfsupError, match="backbone.width: checkpoint 8, config 16"):
        checkpoint.check_compatible(state, other)


def test_load_weights_names_missing_and_mismatched_keys():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    weights = model.state_dict()
    weights["0.weight"] = torch.zeros(4, 2)
    del weights["1.bias"]
    with pytest.raises(SelfsupError, match=r"missing: 1.bias; shape mismatch: 0.weight \(4, 2\) vs \(3, 2\)"):
        checkpoint.load_weights(model, weights, "x.pt")


def test_a_config_key_added_after_the_checkpoint_is_no_difference():
    """Checkpoints written before a key existed (e.g. backbone.norm) still load: their run used what
    is now the default; a key they hold with another value is still refused."""
    state = {"path": "old.pt", "config": {"method": {"name": "simclr"}, "backbone": {"name": "resnet18"}}}
    checkpoint.check_compatible(state, {"method": {"name": "simclr"}, "backbone": {"name": "resnet18", "norm": "batch"}})
    with pytest.raises(SelfsupError, match="backbone.name"):
        checkpoint.check_compatible(state, {"method": {"name": "simclr"}, "backbone": {"name": "resnet50"}})


def test_a_network_may_be_read_another_way_but_its_training_resumes_only_as_it_was():
    state = {"path": "maskfeat.pt", "config": {"method": {"name": "maskfeat"},
                                               "backbone": {"name": "vit_tiny", "pool": "mean"}}}
    by_cls = {"method": {"name": "maskfeat"}, "backbone": {"name": "vit_tiny", "pool": "cls"}}
    checkpoint.check_compatible(state, by_cls, readout_may_differ=True)  # eval --set backbone.pool=cls
    with pytest.raises(SelfsupError, match="backbone.pool: checkpoint 'mean', config 'cls'"):
        checkpoint.check_compatible(state, by_cls)  # resuming
    with pytest.raises(SelfsupError, match="backbone.name"):
        checkpoint.check_compatible(state, {**by_cls, "backbone": {"name": "vit_small", "pool": "mean"}},
                                    readout_may_differ=True)
