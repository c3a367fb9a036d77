"""benchmarks/ladder.py (issue 22) runs end to end on tiny data and continues where it stopped."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import ladder  # noqa: E402
from conftest import children_in_process  # noqa: E402


def test_the_ladder_scores_every_row_alike_and_a_rerun_skips_what_is_done(mnist_root, tmp_path, monkeypatch, capsys):
    children_in_process(monkeypatch, ladder)
    out = tmp_path / "ladder"
    command = ["--methods", "simclr", "rotation", "--vit-methods", "--epochs", "1", "--backbone", "toy", "--width", "4",
               "--seeds", "0", "1", "--seeded", "simclr", "--batch-size", "16", "--data-root", str(mnist_root),
               "--device", "cpu", "--out", str(tmp_path / "runs"), "--report", str(out)]
    ladder.main(command)
    rows = json.loads((out / "ladder.json").read_text())["rows"]
    assert list(rows) == ["raw pixels", "random init", "supervised (1 epochs, all labels)", "simclr",
                          "simclr seed 1", "rotation"]
    for row in rows.values():
        assert all(0 <= row[key] <= 100 for key in ("knn20", "knn200", "linear"))
    assert rows["simclr"]["epochs"] == 1 and rows["simclr"]["peak_rss_mib"] > 0
    assert rows["supervised (1 epochs, all labels)"]["steps"] > 0 and rows["simclr"]["steps"] > 0
    assert rows["simclr"]["train_minutes"] >= 0 and "| train (min) |" in (out / "ladder.md").read_text()
    assert ladder.COLUMNS_NOTE in (out / "ladder.md").read_text()
    assert isinstance(rows["simclr"]["img_per_s"], (int, float))  # recorded; its value is the machine's, not tested
    assert rows["simclr"]["seed"] == 0 and rows["simclr seed 1"]["seed"] == 1
    # Rows of one ladder may come from several machines: each names its own.
    assert all(row["machine"] and row["date"] and row["commit"] for row in rows.values())
    assert rows["simclr"]["precision"] in ("fp32", "bf16") and "| machine |" in (out / "ladder.md").read_text()
    assert (out / "ladder.png").stat().st_size > 5000 and "| simclr seed 1 |" in (out / "ladder.md").read_text()
    capsys.readouterr()
    ladder.main(command)
    assert '{"' not in capsys.readouterr().out  # every row read back, none trained or scored again
    ladder.main(["--score", str(tmp_path / "runs" / "simclr")])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])[str(tmp_path / "runs" / "simclr")]
    assert {key: row[key] for key in ("knn20", "knn200", "linear", "steps")} == \
        {key: rows["simclr"][key] for key in ("knn20", "knn200", "linear", "steps")}
    # A method whose epoch is smaller than the training set's gets a row at equal images beside its own.
    with pytest.raises(SystemExit, match="npid: its 1-epoch row comes first"):
        ladder.main(command + ["--equal-images", "npid"])
    ladder.main(command + ["--equal-images", "simclr"])
    rows = json.loads((out / "ladder.json").read_text())["rows"]
    assert rows["simclr (equal images)"]["epochs"] == ladder.equal_images_epochs(
        rows["simclr"], rows["supervised (1 epochs, all labels)"])
    assert (tmp_path / "runs" / "simclr-equal-images" / "summary.json").is_file()


def test_again_names_a_row_the_command_trains_or_stops_before_anything_runs(tmp_path, capsys):
    command = ["--methods", "simclr", "--vit-methods", "dino", "--seeds", "0", "--out", str(tmp_path / "runs"),
               "--report", str(tmp_path / "ladder")]
    with pytest.raises(SystemExit) as stopped:
        ladder.main(command + ["--again", "simclr seed 1", "dino (vit_tiny)"])
    assert stopped.value.code == 2 and "--again ['simclr seed 1']: not a row this command trains (simclr, dino " \
        "(vit_tiny))" in capsys.readouterr().err
    assert not (tmp_path / "ladder").exists() and not (tmp_path / "runs").exists()


def test_a_ladder_stopped_between_rows_leaves_a_table_and_chart_of_the_rows_it_has(tmp_path, monkeypatch):
    """The rows are faked (their training is the test above's): the second method is stopped as a signal would."""
    def row(top1: float) -> dict:
        return {"knn20": top1, "knn200": top1 - 1, "linear": top1 + 1}

    def method_row(method, overrides, run_dir, vit=False):  # noqa: ANN001, ANN202
        if method == "rotation":
            raise KeyboardInterrupt
        return row(80.0)

    monkeypatch.setattr(ladder, "floor_rows", lambda *args, **kwargs: {"raw pixels": row(85.0)})
    monkeypatch.setattr(ladder, "supervised_row", lambda *args: row(92.0))
    monkeypatch.setattr(ladder, "method_row", method_row)
    out = tmp_path / "report"
    with pytest.raises(KeyboardInterrupt):
        ladder.main(["--methods", "simclr", "rotation", "--vit-methods", "--seeds", "0", "--epochs", "1",
                     "--out", str(tmp_path / "runs"), "--report", str(out)])
    assert list(json.loads((out / "ladder.json").read_text())["rows"]) == \
        ["raw pixels", "supervised (1 epochs, all labels)", "simclr"]
    table = (out / "ladder.md").read_text()
    assert "| simclr | 80.00 | 79.00 | 81.00 |" in table and "rotation" not in table
    assert (out / "ladder.png").stat().st_size > 5000


def test_vit_floors_read_a_random_vit_both_ways_and_only_missing_floors_are_scored(mnist_root, tmp_path):
    shared = ["train.epochs=1", "backbone.name=toy", "backbone.width=4", "backbone.patch_size=null",
              "backbone.registers=0", "train.device=cpu", f"data.root={mnist_root}"]
    rows = ladder.floor_rows(shared, True, tmp_path, "cpu", have={"raw pixels", "random init"})
    cls, mean = "random init (vit_tiny)", f"random init (vit_tiny, {ladder.MEAN_POOL})"
    assert list(rows) == [cls, mean]
    assert all(0 <= row[key] <= 100 for row in rows.values() for key in ("knn20", "knn200", "linear"))
    assert ladder.floor_rows(shared, True, tmp_path, "cpu", have={"raw pixels", "random init", cls, mean}) == {}


def test_equal_images_are_counted_from_the_steps_and_batch_each_row_recorded():
    supervised = {"steps": 2340, "batch_size": 256, "epochs": 10}
    assert ladder.equal_images_epochs({"steps": 620, "batch_size": 128, "epochs": 10}, supervised) == 75  # Exemplar
    assert ladder.equal_images_epochs({"steps": 2340, "batch_size": 256, "epochs": 10}, supervised) == 10
    assert ladder.equal_images_epochs({"steps": 4680, "batch_size": 256, "epochs": 10}, supervised) == 10  # never fewer


def test_a_child_reports_its_own_peak_rss_not_its_parents_and_a_failure_names_its_command(tmp_path, monkeypatch):
    allocated, seen = tmp_path / "allocated", tmp_path / "seen"
    read = ladder.peak_rss_mib

    def watched(pid):  # noqa: ANN001, ANN202
        after_allocation = allocated.exists()
        value = read(pid)
        if after_allocation:
            seen.touch()  # the child may exit: its 80 MB have been read
        return value

    monkeypatch.setattr(ladder, "peak_rss_mib", watched)
    code = (f"import pathlib, time\nbuffer = bytearray(80_000_000)\nbuffer[::4096] = bytes(len(buffer[::4096]))\n"
            f"pathlib.Path({str(allocated)!r}).touch()\n"
            f"while not pathlib.Path({str(seen)!r}).exists():\n    time.sleep(0.01)")
    minutes, peak = ladder.child(["-c", code], program=(sys.executable,))
    # The child's 80 MB and Python (~10 MB); this test's process (torch loaded) holds several hundred, and
    # ru_maxrss would have reported those.
    assert minutes >= 0 and 80 <= peak < 200 < read()
    with pytest.raises(SystemExit, match="failed:.*-c raise SystemExit.3."):
        ladder.child(["-c", "raise SystemExit(3)"], program=(sys.executable,))


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_benchmark_stops_its_child_with_sigterm_so_it_saves_and_exits_as_the_signal_would(stop, tmp_path):
    """Real processes: the benchmark, and a child that records which signal reached it (``selfsup`` saves its
    checkpoint on SIGTERM). Killing the benchmark alone once left its training running."""
    started, stopped_by = tmp_path / "child-pid", tmp_path / "stopped-by"
    grandchild = (f"import os, pathlib, signal, sys, time\n"
                  f"def record(signum, frame):\n"
                  f"    pathlib.Path({str(stopped_by)!r}).write_text(signal.Signals(signum).name)\n"
                  f"    sys.exit(0)\n"
                  f"signal.signal(signal.SIGTERM, record)\nsignal.signal(signal.SIGINT, record)\n"
                  f"pathlib.Path({str(started)!r}).write_text(str(os.getpid()))\n"
                  f"while True:\n    time.sleep(0.05)")
    benchmark = (f"import sys\nsys.path.insert(0, {str(ROOT / 'benchmarks')!r})\nimport ladder\n"
                 f"ladder.child(['-c', {grandchild!r}], program=(sys.executable,))")
    process = subprocess.Popen([sys.executable, "-c", benchmark], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(started.exists, process)
        process.send_signal(stop)  # to the benchmark alone, not its process group
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + stop, stderr
    assert stopped_by.read_text() == "SIGTERM" and f"{stop.name}: stopping the child" in stderr
    with pytest.raises(ProcessLookupError):
        os.kill(int(started.read_text()), 0)  # gone, and reaped by the benchmark


def wait_for(condition, process: subprocess.Popen) -> None:  # noqa: ANN001
    """Until ``condition()`` holds; fails if the process exits first (no clock: the process bounds it)."""
    while not condition():
        assert process.poll() is None, process.communicate()[1]
        time.sleep(0.05)


def test_a_rows_machine_is_named_in_a_few_words():
    assert ladder.machine_kind({"machine": "AMD EPYC (2 threads; avx2 avx512f avx512_bf16)", "precision": "bf16"}) \
        == "CPU avx512_bf16, bf16"
    assert ladder.machine_kind({"machine": "AMD EPYC (2 threads; avx2)", "precision": "fp32"}) == "CPU avx2, fp32"
    assert ladder.machine_kind({"machine": "NVIDIA H200", "precision": "bf16"}) == "NVIDIA H200, bf16"
    assert ladder.machine_kind({"machine": "arm (4 threads)"}) == "CPU no AVX"
    assert ladder.machine_kind({}) is None


def test_dino_on_a_convnet_trains_by_the_official_convnet_recipe_and_on_a_vit_by_the_vit_one():
    from selfsup.config import find_config, read_yaml, resolve

    convnet = resolve(read_yaml(find_config(ladder.preset("dino"))))
    assert (convnet.backbone.name, convnet.optim.name, convnet.optim.weight_decay_end) == ("resnet18", "sgd", None)
    assert convnet.views["global_augment"]["crop_scale"] == [0.14, 1.0]
    assert convnet.views["local_augment"]["crop_scale"] == [0.05, 0.14]
    assert ladder.preset("dino", vit=True) == "dino_fashion_mnist" and ladder.preset("byol") == "byol_fashion_mnist"
    assert ladder.warmup_overrides("dino", 10) == ["optim.warmup_epochs=1"]


def test_the_shared_overrides_keep_dinos_vit_drop_path_and_every_resnet_row_resolves():
    import argparse

    parser = argparse.ArgumentParser()
    ladder.add_run_arguments(parser)  # the ladder's own defaults for the shared settings
    args = parser.parse_args([])
    args.epochs, args.width = 10, 16
    shared = ladder.shared_overrides(args, online_probe=True)
    vit = ladder.preset_config("dino", shared + ladder.VIT, vit=True)
    assert (vit.backbone.name, vit.backbone.drop_path) == ("vit_tiny", 0.1)  # the DINO paper's stochastic depth
    for method in ladder.RESNET_METHODS:
        assert ladder.preset_config(method, shared).backbone.drop_path == 0.0, method


def test_the_gpu_script_trains_the_dino_vit_row_again_on_a_copy_of_the_ladder(mnist_root, tmp_path):
    """``benchmarks/device_ladder.sh`` runs once on a scarce lent GPU, so it is run here for real, on the CPU:
    the ladder ($LADDER) is copied under $OUT, the rows it has are skipped (here faked) but for the DINO-ViT row,
    which trains again, the report and the run's csv and json come back, the checkpoints do not, and the copied
    ladder is untouched."""
    have = {name: {"knn20": 50.0, "knn200": 49.0, "linear": 51.0} for name in
            ["raw pixels", *ladder.floor_networks([], vit=True), "supervised (1 epochs, all labels)"]}
    cpu_row = {"knn20": 73.1, "knn200": 68.15, "linear": 79.55, "epochs": 10}
    source = tmp_path / "ladder"
    source.mkdir()
    (source / "ladder.json").write_text(json.dumps({"rows": {**have, "dino (vit_tiny)": cpu_row}}))
    before = (source / "ladder.json").read_bytes()
    out, runs = tmp_path / "out", tmp_path / "runs"
    environment = {**os.environ, "OUT": str(out), "RUNS": str(runs), "LADDER": str(source),
                   "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # python3: this test's
    completed = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device_ladder.sh"), "--device", "cpu", "--epochs", "1", "--backbone",
         "toy", "--width", "4", "--batch-size", "16", "--data-root", str(mnist_root)],
        env=environment, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    rows = json.loads((out / "ladder" / "ladder.json").read_text())["rows"]
    assert list(rows) == [*have, "dino (vit_tiny)"] and all(rows[name] == row for name, row in have.items())
    assert rows["dino (vit_tiny)"]["epochs"] == 1 and "| dino (vit_tiny) |" in (out / "ladder" / "ladder.md").read_text()
    assert {path.name for path in (out / "runs" / "dino-vit").iterdir()} >= {"epochs.csv", "summary.json"}
    assert not list(out.rglob("*.pt")) and list((runs / "dino-vit").rglob("*.pt"))
    assert (source / "ladder.json").read_bytes() == before and "dino (vit_tiny)" in (out / "ladder.log").read_text()
