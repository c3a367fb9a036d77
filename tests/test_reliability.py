"""Reliability (issue 21): one writer per run directory, numbers as people type them."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import tiny_config, tiny_overrides, wait_until_ready
from selfsup.engine.lock import RunDirInUse, lock_run_dir, unlock_run_dir
from selfsup.errors import SelfsupError
from selfsup.recipes.pretrain import pretrain

HOLDS_THE_LOCK = """
import sys, time
from pathlib import Path
from selfsup.engine.lock import lock_run_dir
lock_run_dir(sys.argv[1])
Path(sys.argv[2]).touch()
time.sleep(600)
"""


def _holder(run_dir, ready):
    child = subprocess.Popen([sys.executable, "-c", HOLDS_THE_LOCK, str(run_dir), str(ready)])
    wait_until_ready(child, ready)
    assert ready.exists(), "the holder did not start"
    return child


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_leaves_no_lock(mnist_root, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    child = _holder(run_dir, tmp_path / "ready")
    try:
        with pytest.raises(RunDirInUse, match=rf"run is in use by process {child.pid} .*write elsewhere \(another --run-dir or --out\)"):
            pretrain(tiny_config(mnist_root, train__epochs=1), run_dir, quiet=True)
        assert not (run_dir / "checkpoints" / "last.pt").exists() and not (run_dir / "config.yaml").exists()
        child.send_signal(signal.SIGKILL)  # no handler runs: the kernel releases the lock
        child.wait(timeout=60)
    finally:
        child.kill()
    summary = pretrain(tiny_config(mnist_root, train__epochs=1), run_dir, quiet=True)
    assert summary["steps"] == 4
    # The run let go of its directory when it ended: another process may take it now.
    child = _holder(run_dir, tmp_path / "ready-again")
    child.kill()
    child.wait(timeout=60)


def test_the_lock_is_taken_again_by_its_own_process(tmp_path):
    lock_run_dir(tmp_path)
    lock_run_dir(tmp_path)  # re-entrant: a process resuming its own run in one session
    unlock_run_dir(tmp_path)
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", HOLDS_THE_LOCK, str(tmp_path), str(ready)],
                             stderr=subprocess.PIPE, text=True)
    error = child.stderr.read()
    assert child.wait(timeout=120) == 1 and f"in use by process {os.getpid()}" in error  # still held once
    unlock_run_dir(tmp_path)
    holder = _holder(tmp_path, ready)
    holder.kill()
    holder.wait(timeout=60)


def test_best_is_written_before_the_record_of_it_and_killed_writes_leave_nothing(mnist_root, tmp_path, monkeypatch):
    from selfsup.engine import checkpoint

    original, written = checkpoint.save_atomic, []

    def save_atomic(state, path):
        written.append(path.name)
        return original(state, path)

    monkeypatch.setattr(checkpoint, "save_atomic", save_atomic)
    config = tiny_config(mnist_root, train__epochs=2)
    pretrain(config, tmp_path / "run", quiet=True)
    assert written[:2] == ["best.pt", "last.pt"]  # epoch 1 is the first best
    leftover = tmp_path / "run" / "checkpoints" / ".last.pt.12345.tmp"
    leftover.write_bytes(b"half a checkpoint")
    pretrain(config, tmp_path / "run", resume=True, quiet=True)
    assert not leftover.exists()


def test_a_checkpoint_is_written_when_minutes_have_passed_inside_an_epoch(mnist_root, tmp_path, monkeypatch):
    """A fake clock that moves 4 minutes a reading: with train.checkpoint_every_minutes=10 last.pt is
    written inside the epoch, not only at its end (no wall-clock time involved)."""
    from selfsup.engine import Engine, loop

    readings = iter(range(0, 10**6, 240))
    monkeypatch.setattr(loop.time, "monotonic", lambda: float(next(readings)))
    original, saved_at = Engine.save, []

    def save(self, best=False):
        saved_at.append(self.step)
        return original(self, best)

    monkeypatch.setattr(Engine, "save", save)
    pretrain(tiny_config(mnist_root, train__epochs=1, train__checkpoint_every_minutes=10), tmp_path / "on", quiet=True)
    assert any(0 < step < 4 for step in saved_at) and saved_at[-1] == 4
    saved_at.clear()
    pretrain(tiny_config(mnist_root, train__epochs=1, train__checkpoint_every_minutes=0), tmp_path / "off", quiet=True)
    assert saved_at == [4]


def test_a_divergence_with_a_finite_loss_stops_before_it_is_saved_and_is_refused_when_read(mnist_root, tmp_path,
                                                                                           monkeypatch):
    from selfsup.engine import Engine, NonFiniteLoss, checkpoint
    from selfsup.errors import SelfsupError
    from selfsup.recipes.loading import load_encoder

    config = tiny_config(mnist_root, train__epochs=2)
    pretrain(config, tmp_path / "run", quiet=True)
    good = checkpoint.load(tmp_path / "run")["step"]
    original = Engine.train_step

    def overflowing(self, *batch):  # BatchNorm statistics overflow while the loss stays finite
        row = original(self, *batch)
        next(m for m in self.module.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var.fill_(float("inf"))
        return row

    monkeypatch.setattr(Engine, "train_step", overflowing)
    config = tiny_config(mnist_root, train__epochs=3)
    # Caught at the first metric row after it happened (log_every=1), not only when a checkpoint is due.
    with pytest.raises(NonFiniteLoss, match=r"running_var became non-finite by step 9 .*while the loss stayed "
                                            r"finite; the run stops without saving them, and the last good checkpoint"):
        pretrain(config, tmp_path / "run", resume=True, quiet=True, allow_change=("train.epochs",))
    assert checkpoint.load(tmp_path / "run")["step"] == good  # the good checkpoint was not overwritten
    state = checkpoint.load(tmp_path / "run")
    name = next(key for key in state["model"] if key.startswith("backbone.") and key.endswith("running_var"))
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    checkpoint.save_atomic(state, tmp_path / "diverged.pt")
    with pytest.raises(SelfsupError, match=rf"diverged.pt holds non-finite values \(first: {name[len('backbone.'):]}\)"):
        load_encoder(tmp_path / "diverged.pt")


def _flags(overrides):
    return [arg for item in overrides for arg in ("--set", item)]


def test_resume_refuses_changed_settings_unless_named_and_records_the_ones_accepted(mnist_root, tmp_path, capsys):
    from selfsup.cli import main

    run = tmp_path / "run"
    first = tiny_overrides(mnist_root, train__epochs=1, train__knn_every=0)
    assert main(["pretrain", "--run-dir", str(run), "--quiet"] + _flags(first)) == 0
    kept = {name: (run / name).read_bytes() for name in ("config.yaml", "meta.json")}
    last = (run / "checkpoints" / "last.pt").read_bytes()

    changed = tiny_overrides(mnist_root, train__epochs=2, train__knn_every=0, train__batch_size=8, train__seed=3)
    assert main(["pretrain", "--run-dir", str(run), "--quiet", "--resume"] + _flags(changed)) == 2
    err = capsys.readouterr().err
    assert "train.batch_size: then 16, now 8; train.epochs: then 1, now 2; train.seed: then 0, now 3" in err
    assert "--allow-change train.batch_size train.epochs train.seed; nothing was changed" in err
    assert {name: (run / name).read_bytes() for name in kept} == kept
    assert (run / "checkpoints" / "last.pt").read_bytes() == last

    # Without -c the run's own config.yaml is the base: only what --set changes differs, and it is named.
    assert main(["pretrain", "--run-dir", str(run), "--quiet", "--resume", "--set", "train.epochs=2",
                 "--allow-change", "train.epochs"]) == 0
    meta = json.loads((run / "meta.json").read_text())
    assert meta["config_changes"] == [{"key": "train.epochs", "from": 1, "to": 2, "step": 4}]
    assert json.loads((run / "summary.json").read_text())["steps"] == 8
    assert main(["pretrain", "--run-dir", str(run), "--quiet", "--resume", "--set", "train.epochs=3",
                 "--allow-change", "train.epochs"]) == 0
    changes = json.loads((run / "meta.json").read_text())["config_changes"]
    assert [(c["from"], c["to"], c["step"]) for c in changes] == [(1, 2, 4), (2, 3, 8)]  # every one, in order

    assert main(["pretrain", "--run-dir", str(run), "--quiet", "--resume", "--allow-change", "train.epoch"]) == 2
    assert "--allow-change train.epoch: no such setting (did you mean 'train.epochs'?)" in capsys.readouterr().err
    assert main(["pretrain", "--run-dir", str(tmp_path / "new"), "--allow-change", "train.epochs"] + _flags(first)) == 2
    assert "--allow-change goes with --resume" in capsys.readouterr().err


def test_side_files_are_written_whole_and_a_damaged_record_is_set_aside(tmp_path, monkeypatch, capsys):
    from selfsup.eval.evaluator import record
    from selfsup.files import write_json

    out = tmp_path / "eval"
    record(out, "simclr", {"knn": {"top1": 50.0}})
    before = (out / "results.json").read_bytes()

    def disk_full(fd):  # noqa: ANN001, ANN202
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(SelfsupError, match="No space left on device.*previous file is intact"):
        write_json(out / "results.json", {"cut": True})
    monkeypatch.undo()
    assert (out / "results.json").read_bytes() == before and sorted(p.name for p in out.iterdir()) == [
        "results.json", "results.md"]  # no temporary file left

    (out / "results.json").write_text('{"simclr": {"knn": ')  # cut by something else
    everything = record(out, "byol", {"knn": {"top1": 40.0}})
    assert list(everything) == ["byol"] and "results.json was damaged" in capsys.readouterr().err
    assert len(list(out.glob("results.json.damaged-*"))) == 1  # kept for a look, never read again


def test_names_that_are_not_utf8_show_in_the_contact_sheet_and_the_report(tmp_path, capsys):
    """Folder and file names are bytes; those that are not UTF-8 used to crash matplotlib and the report."""
    from selfsup.cli import main
    from conftest import write_image_folder

    data = tmp_path / "data"
    for split in ("train", "test"):
        write_image_folder(data / split, per_class=4, classes=("cat", "d\udcffg"))  # b"d\xffg" on disk
    (data / "train" / "cat" / "0.png").rename(data / "train" / "cat" / "\udcfe\udcff.png")
    run = tmp_path / "run"
    sets = ["data.name=imagefolder", f"data.root={data}", "data.image_size=16", "backbone.name=toy",
            "backbone.width=8", "train.epochs=1", "train.batch_size=4", "train.knn_every=0", "train.online_probe=false",
            "train.channels_last=false", "method.proj_hidden_dim=32", "method.proj_dim=16"]
    assert main(["pretrain", "--run-dir", str(run), "--quiet"] + _flags(sets)) == 0
    assert main(["report", str(run), "--quiet"]) == 0
    (run / "report" / "report.html").read_text(encoding="utf-8")  # valid UTF-8
    assert list((run / "report").rglob("*confusion*.png"))  # the class names' figure
    assert main(["embed", str(run), str(data / "train"), "--out", str(tmp_path / "index"), "--quiet"]) == 0
    assert main(["search", str(tmp_path / "index"), str(data / "test" / "cat" / "0.png"), "-k", "3"]) == 0
    assert list((tmp_path / "index").glob("search-*.png"))


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs: a disk that really fills (skipped where this process may not mount one)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'})")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_one(small_disk, mnist_root, monkeypatch):
    from selfsup.engine import Engine, checkpoint
    from selfsup.errors import SelfsupError

    run = small_disk / "run"
    original = Engine.train_step
    filler = small_disk / "filler"

    def fill_the_disk_at_step_6(self, *batch):
        if self.step == 6 and not filler.exists():  # after epoch 1's checkpoint (4 steps an epoch)
            with open(filler, "wb") as handle:
                try:
                    while True:
                        handle.write(b"\0" * 65536)
                except OSError:
                    pass
        return original(self, *batch)

    monkeypatch.setattr(Engine, "train_step", fill_the_disk_at_step_6)
    with pytest.raises(SelfsupError, match="No space left on device"):
        pretrain(tiny_config(mnist_root, train__epochs=3, train__knn_every=0), run, quiet=True)
    assert checkpoint.load(run)["step"] == 4  # epoch 1's checkpoint, intact and readable
    assert not list((run / "checkpoints").glob(".*.tmp"))  # the cut write left nothing behind
    filler.unlink()
    monkeypatch.setattr(Engine, "train_step", original)
    pretrain(tiny_config(mnist_root, train__epochs=3, train__knn_every=0), run, resume=True, quiet=True)
    assert checkpoint.load(run)["step"] == 12


def test_two_real_writers_on_one_run_directory_and_a_signal_end_to_end(mnist_root, tmp_path):
    """Real processes: a training holds its run; a second training and an evaluation of it are refused with
    the holder's PID; SIGINT (Ctrl-C) stops the holder with last.pt written; the run then resumes."""
    from test_preemption import WAITS_FOR_A_SIGNAL

    from selfsup.engine import checkpoint

    run = tmp_path / "run"
    arguments = ["pretrain", "--quiet", "--run-dir", str(run)] + _flags(tiny_overrides(
        mnist_root, train__epochs=3, train__checkpoint_every_steps=2))  # last.pt at step 2: something to evaluate
    ready, log = tmp_path / "ready", open(tmp_path / "stderr.txt", "w+")
    holder = subprocess.Popen([sys.executable, "-c", WAITS_FOR_A_SIGNAL] + arguments, stderr=log, text=True,
                              env={**os.environ, "SELFSUP_READY": str(ready)})
    try:
        wait_until_ready(holder, ready)
        for second in (arguments, ["eval", "knn", str(run), "--quiet"]):
            refused = subprocess.run([sys.executable, "-m", "selfsup"] + second, capture_output=True, text=True,
                                     timeout=300)
            lines = refused.stderr.strip().splitlines()
            assert refused.returncode == 2 and len(lines) == 1, refused.stderr
            assert f"is in use by process {holder.pid}" in lines[0]
        holder.send_signal(signal.SIGINT)
        holder.wait(timeout=300)
    finally:
        holder.kill()
        log.close()
    assert holder.returncode == 130, (tmp_path / "stderr.txt").read_text()
    assert checkpoint.load(run)["step"] == 4 and not (run / "eval").exists()  # the refused eval wrote nothing
    resumed = subprocess.run([sys.executable, "-m", "selfsup"] + arguments + ["--resume"], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint.load(run)["step"] == 12


KILLED_INSIDE_A_WRITE = """
import os, signal, sys
from pathlib import Path
from selfsup import files
from selfsup.cli import main

name, nth = os.environ["SELFSUP_KILL_IN"].split("#")
seen, original = [0], files.write_atomic

def write_atomic(path, write, what="file"):
    if Path(path).name == name:
        seen[0] += 1
        if seen[0] == int(nth):
            def half(handle):  # half of the file on disk, then gone: no handler runs, as kill -9
                write(handle)
                handle.flush()
                handle.truncate(handle.tell() // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            return original(path, half, what)
    return original(path, write, what)

files.write_atomic = write_atomic
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("inside", ["last.pt#2", "best.pt#1"])
def test_killed_inside_a_checkpoint_write_then_resumed_ends_identical(inside, mnist_root, tmp_path):
    """MoCo (a queue and a momentum encoder), killed in the middle of writing a checkpoint: the previous one is
    intact, the half-written file is cleaned up, and the resumed run ends bit-identical to an unkilled one."""
    from selfsup.engine import checkpoint

    def arguments(run):
        return ["pretrain", "--quiet", "--run-dir", str(run)] + _flags(tiny_overrides(
            mnist_root, method__name="moco", method__queue_size=64, method__proj_hidden_dim=32, method__proj_dim=16,
            train__epochs=2, train__checkpoint_every_steps=3))

    killed = subprocess.run([sys.executable, "-c", KILLED_INSIDE_A_WRITE] + arguments(tmp_path / "killed"),
                            capture_output=True, text=True, env={**os.environ, "SELFSUP_KILL_IN": inside})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert list((tmp_path / "killed" / "checkpoints").glob(".*.tmp"))  # the cut write is there ...
    resumed = subprocess.run([sys.executable, "-m", "selfsup"] + arguments(tmp_path / "killed") + ["--resume"],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert not list((tmp_path / "killed" / "checkpoints").glob(".*.tmp"))  # ... and gone once the run reopens
    straight = subprocess.run([sys.executable, "-m", "selfsup"] + arguments(tmp_path / "straight"),
                              capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    for name in ("last.pt", "best.pt"):
        a, b = (checkpoint.load(tmp_path / run / "checkpoints" / name) for run in ("straight", "killed"))
        assert a["step"] == b["step"]
        for part in ("model", "optimizer"):
            assert all(torch.equal(x, y) for x, y in zip(_tensors(a[part]), _tensors(b[part]))), (name, part)


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for key in sorted(tree, key=str) for t in _tensors(tree[key])]
    if isinstance(tree, (list, tuple)):
        return [t for item in tree for t in _tensors(item)]
    return []


def test_a_mapping_valued_setting_is_compared_whole_and_a_new_setting_is_no_change():
    from selfsup.config import resolve
    from selfsup.recipes.run import check_settings

    schema = resolve({"method": {"name": "simclr"}}).to_dict()
    saved = resolve({"method": {"name": "simclr"}}).to_dict()
    state = {"config": saved, "path": "last.pt", "step": 7}

    def now(**sections):
        return resolve({"method": {"name": "simclr"}, **sections}).to_dict()

    for changed, key in ((now(optim={"lr_scales": {"backbone": 0.1}}), "optim.lr_scales"),
                         (now(optim={"freeze": {"backbone": 1}}), "optim.freeze"),
                         (now(views={"augment_b": {"blur_p": 0.5}}), "views.augment_b")):
        with pytest.raises(SelfsupError, match=rf"\({key}: then .*--allow-change {key};"):
            check_settings(state, "config", changed, schema=schema)
        assert [c["key"] for c in check_settings(state, "config", changed, (key,), schema=schema)] == [key]
    renamed = {"config": now(optim={"lr_scales": {"backbone": 0.1}}), "path": "last.pt", "step": 7}
    with pytest.raises(SelfsupError, match="optim.lr_scales: then {'backbone': 0.1}, now {'heads': 0.1}"):
        check_settings(renamed, "config", now(optim={"lr_scales": {"heads": 0.1}}), schema=schema)
    older = {"config": {**saved, "train": {k: v for k, v in saved["train"].items() if k != "compile"}},
             "path": "last.pt", "step": 7}  # written before train.compile existed
    assert check_settings(older, "config", now(train={"compile": True}), schema=schema) == []
    budget = check_settings(state, "config", now(train={"minutes": 3.7}), schema=schema)  # the demo's re-run
    assert budget == [{"key": "train.minutes", "from": None, "to": 3.7, "step": 7}]  # accepted, and recorded


def test_a_fine_tuning_and_a_continual_sequence_do_not_depend_on_the_process_seed(pretrained_run, tmp_path):
    """A new process's own torch seed is random: a head initialised without a seed made fine-tuning, ClusterFit's
    N_cf and continual runs differ run to run (and a killed-and-resumed sweep differ from an unkilled one)."""
    from selfsup.engine import checkpoint
    from selfsup.recipes.classifier import ClassifierTraining
    from selfsup.recipes.continual import ContinualSettings, run_sequence
    from selfsup.recipes.finetune import finetune
    from selfsup.recipes.loading import StartingPoint

    settings = ClassifierTraining(epochs=1, batch_size=16, device="cpu", precision="fp32")
    finals = []
    for process_seed in (1, 2):  # what two processes would start from
        torch.manual_seed(process_seed)
        run = tmp_path / f"finetune-{process_seed}"
        finetune(pretrained_run, run, settings, quiet=True)
        torch.manual_seed(process_seed)
        sequence = tmp_path / f"continual-{process_seed}"
        run_sequence(StartingPoint.load(pretrained_run, None), sequence, settings, ContinualSettings(), resume=False,
                     quiet=True)
        finals.append([checkpoint.load(run)["model"], checkpoint.load(sequence / "task-1")["model"]])
    for a, b in zip(*finals):
        assert all(torch.equal(a[key], b[key]) for key in a)
