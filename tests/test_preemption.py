"""Stopping on a cluster's warning (SIGTERM, SIGUSR1) or a Ctrl-C: the step in progress finishes,
last.pt is written, the exit status is 128 + the signal, and --resume continues exactly."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import tiny_config, tiny_overrides, wait_until_ready
from selfsup.cli import main
from selfsup.engine import Engine, Preempted, checkpoint
from selfsup.recipes.pretrain import pretrain


def _weights(run_dir):
    return checkpoint.load(run_dir / "checkpoints" / "last.pt")["model"]


def _signal_at(monkeypatch, step, *signals):
    """Send ``signals`` to this process when the engine starts ``step`` (a fixed step: no race)."""
    original = Engine.train_step

    def train_step(self, *batch):
        if self.step == step:
            for sig in signals:
                os.kill(os.getpid(), sig)
        return original(self, *batch)

    monkeypatch.setattr(Engine, "train_step", train_step)
    return original


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_warned_run_saves_the_step_it_finished_and_resumes_exactly(sig, mnist_root, tmp_path, monkeypatch):
    config = tiny_config(mnist_root, train__epochs=3)  # 4 steps an epoch; no step checkpoints
    pretrain(config, tmp_path / "straight", quiet=True)
    original = _signal_at(monkeypatch, 5, sig)
    with pytest.raises(Preempted) as stop:
        pretrain(config, tmp_path / "warned", quiet=True)
    assert stop.value.exit_status == 128 + sig and stop.value.step == 6
    assert checkpoint.load(tmp_path / "warned")["step"] == 6  # mid-epoch: the step in progress finished
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored after the fit
    monkeypatch.setattr(Engine, "train_step", original)
    pretrain(config, tmp_path / "warned", resume=True, quiet=True)
    straight, warned = _weights(tmp_path / "straight"), _weights(tmp_path / "warned")
    assert all(torch.allclose(straight[k].float(), warned[k].float(), rtol=1e-5, atol=1e-6) for k in straight)
    rows = lambda run: [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert rows(tmp_path / "warned") == rows(tmp_path / "straight")


def test_ctrl_c_once_saves_and_twice_stops_at_once(mnist_root, tmp_path, monkeypatch, capsys):
    sets = [arg for item in tiny_overrides(mnist_root, train__epochs=3) for arg in ("--set", item)]
    _signal_at(monkeypatch, 5, signal.SIGINT)
    assert main(["pretrain", "--run-dir", str(tmp_path / "once"), "--quiet"] + sets) == 130
    err = capsys.readouterr().err
    assert "SIGINT: finishing this step" in err and "stopped by SIGINT after step 6" in err and "--resume" in err
    assert checkpoint.load(tmp_path / "once")["step"] == 6
    _signal_at(monkeypatch, 5, signal.SIGINT, signal.SIGINT)
    assert main(["pretrain", "--run-dir", str(tmp_path / "twice"), "--quiet"] + sets) == 130
    assert "interrupted without saving" in capsys.readouterr().err
    assert checkpoint.load(tmp_path / "twice")["step"] == 4  # the last epoch's checkpoint, nothing newer


WAITS_FOR_A_SIGNAL = """
import os, sys, time
from pathlib import Path
from selfsup.cli import main
from selfsup.engine import Engine

original = Engine.train_step

def train_step(self, *batch):
    if self.step == 3:
        Path(os.environ["SELFSUP_READY"]).touch()  # the test sends the signal once it sees this
        while self.stop.requested is None:
            time.sleep(0.01)
    return original(self, *batch)

Engine.train_step = train_step
sys.exit(main(sys.argv[1:]))
"""


def test_a_real_process_stopped_by_sigterm_from_outside(mnist_root, tmp_path):
    arguments = ["pretrain", "--quiet", "--run-dir", str(tmp_path / "run")]
    for item in tiny_overrides(mnist_root, train__epochs=3):
        arguments += ["--set", item]
    ready = tmp_path / "ready"
    log = open(tmp_path / "stderr.txt", "w+")  # a file, not a pipe: nothing blocks on a full buffer
    child = subprocess.Popen([sys.executable, "-c", WAITS_FOR_A_SIGNAL] + arguments, stderr=log,
                             text=True, env={**os.environ, "SELFSUP_READY": str(ready)})
    try:
        wait_until_ready(child, ready)
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=300)
    finally:
        child.kill()
        log.close()
    err = (tmp_path / "stderr.txt").read_text()
    assert child.returncode == 143, err
    assert checkpoint.load(tmp_path / "run")["step"] == 4 and "stopped by SIGTERM after step 4" in err
    resumed = subprocess.run([sys.executable, "-m", "selfsup"] + arguments + ["--resume"], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint.load(tmp_path / "run")["step"] == 12


def test_a_signal_during_the_last_step_lets_the_run_finish(mnist_root, tmp_path, monkeypatch):
    config = tiny_config(mnist_root, train__epochs=1)  # 4 steps
    _signal_at(monkeypatch, 3, signal.SIGTERM)
    summary = pretrain(config, tmp_path / "run", quiet=True)
    assert summary["steps"] == 4 and (tmp_path / "run" / "summary.json").is_file()


def test_a_stop_at_an_epochs_end_keeps_that_epochs_row_and_checkpoint(mnist_root, tmp_path, monkeypatch):
    """Stopped after the last step of epoch 1: the epoch ends as usual (its row, monitor, best.pt) before
    the run stops, and the resumed run's records equal an uninterrupted run's."""
    config = tiny_config(mnist_root, train__epochs=3)  # 4 steps an epoch
    pretrain(config, tmp_path / "straight", quiet=True)
    original = _signal_at(monkeypatch, 3, signal.SIGTERM)
    with pytest.raises(Preempted) as stop:
        pretrain(config, tmp_path / "warned", quiet=True)
    assert stop.value.step == 4 and (tmp_path / "warned" / "checkpoints" / "best.pt").is_file()
    monkeypatch.setattr(Engine, "train_step", original)
    pretrain(config, tmp_path / "warned", resume=True, quiet=True)
    rows = lambda run: [(r["stream"], r["step"]) for r in  # noqa: E731
                        map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert rows(tmp_path / "warned") == rows(tmp_path / "straight")
