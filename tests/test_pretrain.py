import json
import os
import signal
import subprocess
import sys
from functools import partial

import pytest
import torch

from conftest import crash_then_resume, tiny_config, tiny_overrides
from selfsup.engine import NonFiniteLoss, checkpoint
from selfsup.errors import SelfsupError
from selfsup.methods.simclr import SimCLR
from selfsup.recipes.pretrain import pretrain


def _weights(run_dir, name="last.pt"):
    return checkpoint.load(run_dir / "checkpoints" / name)["model"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), rtol=1e-5, atol=1e-6), key


def test_run_directory_holds_everything(mnist_root, tmp_path):
    run = tmp_path / "run"
    summary = pretrain(tiny_config(mnist_root), run, quiet=True, command=["selfsup", "pretrain"])
    assert summary["steps"] == 8 and summary["best_metric"] == "knn_top1"
    for name in ("config.yaml", "meta.json", "metrics.jsonl", "steps.csv", "epochs.csv", "summary.json",
                 "checkpoints/last.pt", "checkpoints/best.pt", "report/loss.png", "report/knn.png",
                 "report/summary.md"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    meta = json.loads((run / "meta.json").read_text())
    assert meta["command"] == ["selfsup", "pretrain"]
    assert meta["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert "git_revision" in meta and meta["data"]["channels"] == 1
    # The kNN monitor (which picks best.pt) queries labelled training images held out of pretraining.
    assert meta["data"]["images"] == 64 and meta["data"]["held_out"] == 16
    assert "held-out training images" in meta["monitor"]["queries"] and meta["monitor"]["query_images"] == 16
    assert "queries from held-out training images" in (run / "report" / "summary.md").read_text()
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epoch_rows = [r for r in epochs if r["stream"] == "epoch"]
    assert [r["epoch"] for r in epoch_rows] == [1, 2] and all(0 <= r["knn_top1"] <= 100 for r in epoch_rows)
    state = checkpoint.load(run / "checkpoints" / "last.pt")
    assert {"model", "optimizer", "scaler", "rng", "step", "epoch", "config", "data"} <= set(state)


def test_crash_and_resume_matches_an_uninterrupted_run(mnist_root, tmp_path, monkeypatch):
    config = tiny_config(mnist_root, train__checkpoint_every_steps=1, train__epochs=3)
    pretrain(config, tmp_path / "straight", quiet=True)

    resumed_from = crash_then_resume(config, tmp_path / "crashed", monkeypatch, crash_step=6)
    assert resumed_from == 6  # mid-epoch (4 steps an epoch)
    _assert_same_weights(_weights(tmp_path / "straight"), _weights(tmp_path / "crashed"))
    probes = [checkpoint.load(run / "checkpoints" / "last.pt")["online_probe"]["head"] for run in
              (tmp_path / "straight", tmp_path / "crashed")]
    _assert_same_weights(*probes)  # the online probe continues exactly too
    rows = lambda run: [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]  # noqa: E731
    straight, resumed = rows(tmp_path / "straight"), rows(tmp_path / "crashed")
    assert [r["step"] for r in resumed] == [r["step"] for r in straight]  # no duplicated or missing rows
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in straight], rel=1e-5)


KILLED_AT_STEP = """
import os, signal, sys
from selfsup.cli import main
from selfsup.engine import Engine

original = Engine.train_step

def train_step(self, *batch):
    if self.step == int(os.environ["SELFSUP_KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)  # no clean-up of any kind, as kill -9 from outside
    return original(self, *batch)

Engine.train_step = train_step
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_kill_9_then_resume_matches_an_uninterrupted_run(mnist_root, tmp_path):
    """A real training process dies of SIGKILL mid-run (at a fixed step, so no race with a poller);
    --resume must continue exactly."""
    overrides = tiny_overrides(mnist_root, train__epochs=25, train__checkpoint_every_steps=1, train__knn_every=10)
    arguments = ["pretrain", "--quiet", "--run-dir", str(tmp_path / "killed")]
    for item in overrides:
        arguments += ["--set", item]
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_STEP] + arguments, capture_output=True, text=True,
                            env={**os.environ, "SELFSUP_KILL_AT": "42"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert checkpoint.load(tmp_path / "killed")["step"] == 42  # readable: writes are atomic
    command = [sys.executable, "-m", "selfsup"] + arguments
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    # The reference runs the same way (a fresh process, default threads), without the kill.
    straight = [str(tmp_path / "straight") if part == str(tmp_path / "killed") else part for part in command]
    assert subprocess.run(straight, capture_output=True).returncode == 0
    _assert_same_weights(_weights(tmp_path / "straight"), _weights(tmp_path / "killed"))


def test_non_finite_loss_stops_before_the_update_and_names_the_checkpoint(mnist_root, tmp_path, monkeypatch):
    original = SimCLR.forward
    calls = {"n": 0}

    def diverge_at_third_call(self, batch, progress):
        out = original(self, batch, progress)
        calls["n"] += 1
        return {"loss": out["loss"] * float("nan")} if calls["n"] == 7 else out

    monkeypatch.setattr(SimCLR, "forward", diverge_at_third_call)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLoss) as err:
        pretrain(tiny_config(mnist_root, train__knn_every=0), run, quiet=True)
    message = str(err.value)
    assert "the loss became nan at step 6 (epoch 1)" in message
    assert f"the last good checkpoint is {run / 'checkpoints' / 'last.pt'}" in message
    assert all(torch.isfinite(v.float()).all() for v in _weights(run).values())


def test_existing_run_is_not_overwritten_without_resume(mnist_root, tmp_path):
    run = tmp_path / "run"
    config = tiny_config(mnist_root, train__epochs=1)
    pretrain(config, run, quiet=True)
    before = (run / "checkpoints" / "last.pt").stat().st_mtime_ns
    with pytest.raises(SelfsupError, match="already holds a run.*Pass --resume"):
        pretrain(config, run, quiet=True)
    assert (run / "checkpoints" / "last.pt").stat().st_mtime_ns == before


def test_resume_refuses_a_corrupt_checkpoint_and_leaves_it(mnist_root, tmp_path):
    run = tmp_path / "run"
    config = tiny_config(mnist_root, train__epochs=1)
    pretrain(config, run, quiet=True)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:200])
    damaged = last.read_bytes()
    with pytest.raises(SelfsupError, match="not a readable checkpoint"):
        pretrain(tiny_config(mnist_root, train__epochs=2), run, resume=True, quiet=True)
    assert last.read_bytes() == damaged


def test_resume_refuses_another_architecture(mnist_root, tmp_path):
    run = tmp_path / "run"
    pretrain(tiny_config(mnist_root, train__epochs=1), run, quiet=True)
    with pytest.raises(SelfsupError, match="backbone.width: checkpoint 8, config 16"):
        pretrain(tiny_config(mnist_root, train__epochs=2, backbone__width=16), run, resume=True, quiet=True)


def test_unwritable_run_directory(mnist_root, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the run directory should go")
    with pytest.raises(SelfsupError, match="cannot write to run directory"):
        pretrain(tiny_config(mnist_root), blocker / "run", quiet=True)


def test_batch_larger_than_the_dataset(mnist_root, tmp_path):
    with pytest.raises(SelfsupError, match="train.batch_size=128 is larger than the training set \\(64 images"):
        pretrain(tiny_config(mnist_root, train__batch_size=128), tmp_path / "run", quiet=True)


def test_fp16_on_cpu_is_refused(mnist_root, tmp_path):
    with pytest.raises(SelfsupError, match="fp16 needs a GPU"):
        pretrain(tiny_config(mnist_root, train__precision="fp16", train__device="cpu"), tmp_path / "r", quiet=True)


def test_monitor_on_the_test_split_says_so(mnist_root, tmp_path):
    pretrain(tiny_config(mnist_root, train__epochs=1, train__monitor_split="test"), tmp_path, quiet=True)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["data"]["held_out"] == 0 and meta["data"]["images"] == 80  # nothing held out of training
    assert "test (best.pt is chosen on test data)" == meta["monitor"]["queries"]
    assert "best.pt is chosen on test data" in (tmp_path / "report" / "summary.md").read_text()


def test_budget_steps_fill_what_is_left_of_the_budget():
    from selfsup.recipes.pretrain import budget_steps

    assert budget_steps(1.0, 30.0, 0.5) == int(0.97 * 30 / 0.5)  # 30 s left at 0.5 s a step
    assert budget_steps(1.0, 30.0, 0.5, max_steps=10) == 10
    assert budget_steps(1.0, 90.0, 0.5) == 1  # the set-up ate the budget: one step still runs
    assert budget_steps(1.0, 0.0, 0.0) == 1  # a timer that read 0 cannot make the run endless


def test_a_time_budget_sizes_the_run_and_says_what_it_chose(mnist_root, tmp_path, capsys, fixed_clock):
    config = tiny_config(mnist_root, train__epochs=1000, train__minutes=0.05)  # 3 s of training
    summary = pretrain(config, tmp_path, quiet=False)
    printed = capsys.readouterr().out
    assert "time budget 0.1 min: measured 0.25 s/step (64 img/s) -> 11 steps of 16 images (2.75 epochs)" in printed
    budget = summary["budget"]
    # 97% of 3 s at the timed 0.25 s a step (the set-up took no time on this clock), recorded unrounded.
    assert budget["steps"] == summary["steps"] == int(0.97 * 3 / 0.25) == 11
    assert budget["seconds_per_step"] == 0.25 and budget["setup_seconds"] == 0.0
    assert json.loads((tmp_path / "meta.json").read_text())["budget"] == budget
    # Resuming a budgeted run keeps its length (it does not re-time or grow to 1000 epochs).
    again = pretrain(config, tmp_path, resume=True, quiet=True)
    assert again["steps"] == summary["steps"]


def test_freezing_the_backbone_for_an_epoch_from_the_config(mnist_root, tmp_path):
    config = tiny_config(mnist_root, train__epochs=1, train__knn_every=0, optim__freeze="{backbone: 1}")
    from selfsup.recipes.pretrain import Pretraining

    run = Pretraining(config, tmp_path, quiet=True)
    trunk = {k: v.clone() for k, v in run.method.backbone.state_dict().items()}
    head = run.method.projector[0].weight.detach().clone()
    run.fit()
    assert all(torch.equal(v, trunk[k]) for k, v in run.method.backbone.state_dict().items())  # BN statistics too
    assert not torch.equal(run.method.projector[0].weight, head)


def test_the_faster_memory_layout_is_measured_on_fp32_cpus_without_side_effects(mnist_root, tmp_path, capsys,
                                                                                  monkeypatch):
    from selfsup.recipes import layout as module
    from selfsup.recipes.pretrain import Pretraining

    measured = module.time_forward_backward
    for faster in (True, False):  # the choice follows the timings, whichever layout they favour
        monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / f"cache-{faster}"))  # nothing measured before
        seconds = {faster: 1.0, not faster: 2.0}
        calls = []

        def timed(method, images, device, precision, channels_last):  # noqa: ANN001, ANN202
            calls.append(measured(method, images, device, precision, channels_last))  # really run, then ignored
            return seconds[channels_last]

        monkeypatch.setattr(module, "time_forward_backward", timed)
        config = tiny_config(mnist_root, backbone__name="resnet18", backbone__width=16, train__precision="fp32",
                             train__knn_every=0, train__channels_last="null")
        run = Pretraining(config, tmp_path / str(faster), quiet=False)
        printed = capsys.readouterr().out
        layout = "channels_last" if faster else "NCHW"
        assert f"memory layout: channels_last {seconds[True]:.2f} s/step, NCHW {seconds[False]:.2f} s/step " \
               f"(fp32 on this CPU) -> {layout}" in printed
        assert len(calls) == 4 and run.channels_last is faster
        assert json.loads((tmp_path / str(faster) / "meta.json").read_text())["channels_last"] is faster
    fresh = Pretraining(tiny_config(mnist_root, backbone__name="resnet18", backbone__width=16, train__precision="fp32",
                                    train__knn_every=0, train__channels_last=False), tmp_path / "fresh", quiet=True)
    _assert_same_weights(run.method.state_dict(), fresh.method.state_dict())  # timing left no trace

    # Decided once per machine and model: a later run of one seed computes alike, even if the timings flip.
    monkeypatch.setattr(module, "time_forward_backward", lambda *args: 1.0 if args[-1] else 2.0)
    again = Pretraining(config, tmp_path / "again", quiet=False)
    assert again.channels_last is False and "measured for this model on this machine before" in capsys.readouterr().out
    other_size = tiny_config(mnist_root, backbone__name="resnet18", backbone__width=32, train__precision="fp32",
                             train__knn_every=0, train__channels_last="null")
    assert Pretraining(other_size, tmp_path / "other", quiet=True).channels_last is True  # another model: timed
    (tmp_path / "cache-False" / "layouts.json").write_text("{cut")
    assert Pretraining(config, tmp_path / "damaged", quiet=True).channels_last is True  # a damaged memo: timed again


def test_a_method_can_keep_its_own_parts_fixed_early(mnist_root, tmp_path, monkeypatch):
    """The hook DINO needs (its last layer is frozen in the first epoch), merged with optim.freeze."""
    from selfsup.methods.simclr import SimCLR
    from selfsup.recipes.pretrain import Pretraining

    monkeypatch.setattr(SimCLR, "frozen_epochs", lambda self: {"projector.3.": 1})  # the last linear layer
    run = Pretraining(tiny_config(mnist_root, train__epochs=2, train__knn_every=0, method__proj_layers=2), tmp_path,
                      quiet=True)
    epoch = run.steps_per_epoch  # 5: 80 images in batches of 16
    assert [(spec.prefix, spec.until_step) for spec, _, _ in run.engine.freezes] == [("projector.3.", epoch)]
    last = run.method.projector[3].weight.detach().clone()
    first = run.method.projector[0].weight.detach().clone()
    for images, targets, index in run.loader.iterate():
        run.engine.train_step(images, targets, index)
    assert torch.equal(run.method.projector[3].weight, last) and not torch.equal(run.method.projector[0].weight, first)
    run.engine.train_step(*next(run.loader.iterate()))
    assert not torch.equal(run.method.projector[3].weight, last)


def test_a_resumed_run_keeps_the_layout_its_run_chose(mnist_root, tmp_path, monkeypatch):
    from selfsup.recipes import layout as module
    from selfsup.recipes.pretrain import Pretraining

    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    config = tiny_config(mnist_root, backbone__name="resnet18", backbone__width=16, train__precision="fp32",
                         train__knn_every=0, train__channels_last="null", train__epochs=1)
    monkeypatch.setattr(module, "time_forward_backward", lambda *args: 1.0 if args[-1] else 2.0)
    Pretraining(config, tmp_path / "run", quiet=True).fit()
    assert checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")["channels_last"] is True
    (tmp_path / "cache" / "layouts.json").unlink()  # not the machine's memo: the run's own record

    def must_not_time(*args):  # noqa: ANN002, ANN202
        raise AssertionError("a resumed run measured the layout again")

    monkeypatch.setattr(module, "time_forward_backward", must_not_time)
    longer = tiny_config(mnist_root, backbone__name="resnet18", backbone__width=16, train__precision="fp32",
                         train__knn_every=0, train__channels_last="null", train__epochs=2)
    resumed = Pretraining(longer, tmp_path / "run", resume=True, quiet=True, allow_change=("train.epochs",))
    assert resumed.channels_last is True


def test_channels_last_is_never_chosen_where_onednn_gets_the_weight_gradient_wrong(mnist_root, tmp_path, capsys,
                                                                                     monkeypatch):
    """oneDNN#6035: the CPU weight gradient of a strided 1x1 convolution with fewer input channels than
    a channel block (16 on AVX-512) writes past its workspace in channels_last; a ResNet of width 4
    hung the suite on an AVX2 CPU. Nothing here runs such a gradient: the choice is made before."""
    from selfsup.engine import resolve_precision
    from selfsup.models import build_backbone
    from selfsup.recipes import layout as module
    from selfsup.recipes.pretrain import Pretraining

    assert module.channels_last_hazards(build_backbone("resnet18", 1, 16, width=4)) == [
        "net.layer2.0.downsample.0", "net.layer3.0.downsample.0"]  # 4 and 8 input channels; layer4's 16 are safe
    assert module.channels_last_hazards(build_backbone("resnet18", 1, 16, width=16)) == []

    def must_not_time(*args):  # noqa: ANN002, ANN202
        raise AssertionError("a layout oneDNN gets wrong was timed")

    monkeypatch.setattr(module, "time_forward_backward", must_not_time)
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    narrow = tiny_config(mnist_root, backbone__name="resnet18", backbone__width=8, train__precision="fp32",
                         train__knn_every=0, train__channels_last="null")
    assert Pretraining(narrow, tmp_path / "auto", quiet=False).channels_last is False
    assert "memory layout: NCHW (the strided 1x1 convolution backbone.net.layer2.0.downsample.0 has fewer than 16 " \
           "input channels" in capsys.readouterr().out
    forced = tiny_config(mnist_root, backbone__name="resnet18", backbone__width=8, train__knn_every=0,
                         train__channels_last=True)
    with pytest.raises(SelfsupError, match=r"train.channels_last=true cannot train this model on the CPU.*oneDNN"):
        Pretraining(forced, tmp_path / "forced", quiet=True)

    # A run that chose channels_last elsewhere (a GPU, or before this guard) resumes on the CPU in NCHW.
    method = Pretraining(narrow, tmp_path / "method", quiet=True).method
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    fp32 = resolve_precision("fp32", cpu)
    choose = partial(module.choose_channels_last, narrow, method, must_not_time, precision=fp32, quiet=True)
    assert choose(cpu, kept=True) is False
    assert choose(cuda, kept=None) is True and choose(cuda, kept=False) is False  # the bug is oneDNN's, on CPUs


def test_best_pt_follows_the_knn_monitor_only_and_says_so(mnist_root, tmp_path, monkeypatch):
    from selfsup.recipes.pretrain import KnnMonitor

    falling = iter([70.0, 60.0])
    monkeypatch.setattr(KnnMonitor, "__call__", lambda self: {"knn_top1": next(falling)})
    summary = pretrain(tiny_config(mnist_root, train__epochs=4, train__knn_every=2), tmp_path, quiet=True)
    best = checkpoint.load(tmp_path / "checkpoints" / "best.pt")
    assert best["step"] == 8 and best["best"] == 70.0  # epoch 2 of 4 (4 steps an epoch); never the loss's choice
    assert summary["best_metric"] == "knn_top1"
    assert json.loads((tmp_path / "meta.json").read_text())["best_by"] == {"metric": "knn_top1",
                                                                          "higher_is_better": True}


def test_the_online_probe_watches_without_touching_the_run(mnist_root, tmp_path):
    """The probe's forward passes run in evaluation mode on un-augmented images with no gradient
    into the network: the pretraining is the same with it as without, weight for weight."""
    pretrain(tiny_config(mnist_root), tmp_path / "both", quiet=True)
    pretrain(tiny_config(mnist_root, train__online_probe=False), tmp_path / "knn", quiet=True)  # same held-out set
    _assert_same_weights(_weights(tmp_path / "both"), _weights(tmp_path / "knn"))
    with_probe = pretrain(tiny_config(mnist_root, train__knn_every=0), tmp_path / "probe", quiet=True)
    pretrain(tiny_config(mnist_root, train__knn_every=0, train__online_probe=False), tmp_path / "none", quiet=True)
    epochs = [r for r in map(json.loads, (tmp_path / "probe" / "metrics.jsonl").read_text().splitlines())
              if r["stream"] == "epoch"]
    assert [("probe_top1" in r) for r in epochs] == [True, True] and all(0 <= r["probe_top1"] <= 100 for r in epochs)
    steps = [r for r in map(json.loads, (tmp_path / "probe" / "metrics.jsonl").read_text().splitlines())
             if r["stream"] == "step"]
    assert all("probe_loss" in r for r in steps)
    # Without the kNN monitor, the probe chooses best.pt; the meta says so.
    assert with_probe["best_metric"] == "probe_top1"
    meta = json.loads((tmp_path / "probe" / "meta.json").read_text())
    assert meta["best_by"]["metric"] == "probe_top1" and meta["online_probe"] == {"fraction": 0.125}
    assert meta["monitor"]["query_images"] == 16  # held out of training, as the kNN monitor's
    assert "online linear probe (chooses best.pt)" in (tmp_path / "probe" / "report" / "summary.md").read_text()
    assert json.loads((tmp_path / "none" / "meta.json").read_text())["best_by"]["metric"] == "loss"


def test_best_by_names_a_monitor_that_runs(mnist_root, tmp_path):
    with pytest.raises(SelfsupError, match="train.best_by=knn_top1 needs that monitor, but train.knn_every is 0"):
        pretrain(tiny_config(mnist_root, train__knn_every=0, train__best_by="knn_top1"), tmp_path / "a", quiet=True)
    with pytest.raises(SelfsupError, match="train.online_probe is off"):
        pretrain(tiny_config(mnist_root, train__online_probe=False, train__best_by="probe_top1"), tmp_path / "b",
                 quiet=True)
    summary = pretrain(tiny_config(mnist_root, train__best_by="probe_top1"), tmp_path / "c", quiet=True)
    assert summary["best_metric"] == "probe_top1"  # chosen over the kNN monitor that also runs


def test_the_online_probe_learns_a_linear_class_structure():
    from selfsup.data import ImageDataset
    from selfsup.eval.probe import OnlineProbe
    from selfsup.views import EvalView

    torch.manual_seed(0)
    targets = torch.arange(256) % 4
    images = torch.randint(0, 40, (256, 1, 8, 8), dtype=torch.uint8)
    for i, label in enumerate(targets.tolist()):
        images[i, 0, 2 * label:2 * label + 2] = 220
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.BatchNorm1d(16))
    network.num_features = 16
    before = {k: v.clone() for k, v in network.state_dict().items()}
    queries = ImageDataset(images[192:], targets[192:], ["a", "b", "c", "d"])
    probe = OnlineProbe(network, 16, 4, EvalView(8, (0.3,), (0.3,)), queries, fraction=0.5,
                        device=torch.device("cpu"))
    network.train()
    assert probe.evaluate()["probe_top1"] < 60
    for epoch in range(20):
        for start in range(0, 192, 32):
            row = probe.step(images[start:start + 32], targets[start:start + 32])
    assert row["probe_loss"] > 0 and probe.evaluate()["probe_top1"] > 90
    assert network.training and all(torch.equal(v, before[k]) for k, v in network.state_dict().items())
    state = probe.state_dict()
    fresh = OnlineProbe(network, 16, 4, EvalView(8, (0.3,), (0.3,)), queries, device=torch.device("cpu"))
    fresh.load_state_dict(state)
    assert fresh.evaluate() == probe.evaluate()
    assert probe.step(images[:8], torch.full((8,), -1)) == {}  # no labels: nothing to learn from


def test_the_online_probe_steps_aside_on_a_set_too_small_to_spare_its_queries(mnist_root, tmp_path, capsys):
    summary = pretrain(tiny_config(mnist_root, train__knn_every=0, train__knn_test_size=80, train__epochs=1),
                       tmp_path, quiet=False)
    assert "note: the online probe is off: 80 training images are too few to hold out" in capsys.readouterr().out
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["online_probe"] is None and meta["data"]["images"] == 80 and summary["best_metric"] == "loss"
    with pytest.raises(SelfsupError, match="cannot hold out 80 of its 80"):  # asked for explicitly: refused
        pretrain(tiny_config(mnist_root, train__knn_test_size=80, train__epochs=1), tmp_path / "knn", quiet=True)


def test_gpu_speed_switches_are_set_on_cuda_only_and_recorded(mnist_root, tmp_path, monkeypatch):
    from selfsup.engine.runtime import speed_settings

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    try:
        assert speed_settings(torch.device("cpu")) == {"omp_wait_policy": "PASSIVE"}
        assert speed_settings(torch.device("cuda")) == {"tf32": True, "cudnn_benchmark": True}
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32 and torch.backends.cudnn.benchmark
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark) = saved
    pretrain(tiny_config(mnist_root, train__epochs=1), tmp_path / "run", quiet=True)
    recorded = json.loads((tmp_path / "run" / "meta.json").read_text())["speed_settings"]
    assert recorded == {"omp_wait_policy": "PASSIVE"}  # on a CPU: only how threads wait


def test_train_compile_compiles_every_backbone_in_place_and_records_it(mnist_root, tmp_path, monkeypatch):
    original, compiled = torch.nn.Module.compile, []

    def compile_eagerly(self, *args, **kwargs):  # dynamo traces as it would; no minutes of code generation
        compiled.append(type(self).__name__)
        return original(self, backend="eager")

    monkeypatch.setattr(torch.nn.Module, "compile", compile_eagerly)
    config = tiny_config(mnist_root, method__name="byol", train__compile="true", train__epochs=1)
    pretrain(config, tmp_path / "run", quiet=True)
    assert json.loads((tmp_path / "run" / "meta.json").read_text())["compiled"] == ["backbone", "target.backbone"]
    assert len(compiled) == 2
    weights = checkpoint.load(tmp_path / "run")["model"]
    assert any(key.startswith("backbone.") for key in weights)
    assert not any("_orig_mod" in key for key in weights)  # in place: a compiled run's checkpoint loads anywhere
