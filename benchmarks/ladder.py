"""The accuracy ladder (issue 22): every method trained for the same number of epochs, one protocol.

Each method keeps its preset's recipe (``configs/<method>_fashion_mnist.yaml``: optimiser, batch,
views, heads; the warm-up capped at a tenth of the run; DINO on the ResNet the official convnet recipe,
``dino_resnet_fashion_mnist``) on one backbone, a ResNet-18 of ``--width``
with the small stem (ViT-tiny with 4 px patches for MaskFeat, and a DINO-ViT row), for ``--epochs``
epochs: epochs, not minutes, so that machines of different speed give comparable rows. Every encoder
is then scored by the same code: weighted kNN at k = 20 and k = 200 (T = 0.07), the linear probe on
the full training set, and the online probe's last top-1 (trained beside the run). Floors and ceiling
in the same table: raw pixels, the backbone at random initialisation, and the backbone trained with
labels (``selfsup supervised``) for the same epochs. ``--seeds`` repeats the methods of ``--seeded`` so the
table states its noise. ``--equal-images`` adds a row for a method whose epoch is smaller than the training
set (Exemplar's 8,000 surrogate classes: an epoch is an eighth of the others'), trained for as many images
as the supervised row saw; its row at equal epochs stays, since epochs are the ladder's unit. Rows carry
img/s, training minutes (the run's own, across resumes), the wall minutes of the row's last process
(training, its test and scoring) and the pretraining's peak RSS.

Resumable: every finished row is written to ``REPORT/ladder.json`` at once, each pretraining runs in its
own process with ``--resume`` under ``OUT`` (a killed ladder continues inside the run it was in), and a
rerun skips the rows it has (``--again ROW`` trains a method row once more, in a fresh ``--out``, and
replaces the report's row when the new one finishes: the same row on another machine). The report (rows, ``ladder.md``, ``ladder.png``) is small and lives in the
repository (``benchmarks/ladder/``) so that a ladder too long for one sitting grows across sessions and
machines; each row names the machine and precision it was trained on and its date.

    python benchmarks/ladder.py --epochs 10                       # every method, width 16, CPU
    python benchmarks/ladder.py --device cuda --width 64 --epochs 100
    python benchmarks/ladder.py --methods simclr rotation --epochs 1 --subset 2000   # a smoke run
    python benchmarks/ladder.py --methods exemplar --vit-methods --equal-images exemplar  # + 75 epochs of Exemplar
    python benchmarks/ladder.py --score runs/simclr-e30   # one finished run, scored by the ladder's protocol
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import signal
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path

import torch

from selfsup.config import RunConfig, apply_overrides, find_config, read_yaml, resolve
from selfsup.engine.metrics import read_rows
from selfsup.engine.preemption import StopRequests
from selfsup.engine.runtime import describe_device, git_revision, library_versions
from selfsup.eval import Evaluator
from selfsup.figures import grouped_bars
from selfsup.files import write_json
from selfsup.methods import METHODS
from selfsup.recipes.evaluate import checkpoint_evaluator, evaluation_splits, pixel_evaluator
from selfsup.tables import markdown_table
from selfsup.views import EvalView

ROOT = Path(__file__).resolve().parents[1]
VIT_ONLY = ("maskfeat",)
RESNET_METHODS = [m for m in METHODS if m not in VIT_ONLY and m != "multitask"]  # the default ResNet rows
MEAN_POOL = "mean of patch tokens"  # the floor row of MaskFeat's preset pooling (backbone.pool: mean)
VIT = ["backbone.name=vit_tiny", "backbone.width=64", "backbone.patch_size=4"]  # width: unused by a ViT
PROTOCOLS = ["knn-grid", "linear"]
STOP_GRACE_S = 300  # a step in progress and the checkpoint's write; then the child is killed
EVAL = ["eval.knn_grid_k=[20, 200]", "eval.knn_grid_temperatures=[0.07]"]


def peak_rss_mib(pid: int | str = "self") -> float:
    """A process's own peak resident memory in MiB (``VmHWM``; 0 once it has exited). Not ``ru_maxrss``:
    Linux carries that across fork and exec, so a child started by a large parent reports the parent's."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:  # already reaped
        return 0
    return next((round(int(line.split()[1]) / 1024, 1) for line in lines if line.startswith("VmHWM:")), 0)  # kB


def child(command: list[str], program: tuple[str, ...] = (sys.executable, "-m", "selfsup")) -> tuple[float, float]:
    """Run ``selfsup COMMAND`` (or ``PROGRAM COMMAND``) in its own process; (wall minutes, its peak RSS in
    MiB, read every 0.2 s while it runs: the high-water mark only grows).

    A stop signal to this process (SIGTERM, SIGUSR1, Ctrl-C) takes the child down with it: the child gets
    SIGTERM, on which ``selfsup`` saves ``checkpoints/last.pt`` (a rerun resumes), and this process then
    exits as the signal would have (128 + its number). SIGTERM, not the signal received: after the
    terminal's own Ctrl-C a second SIGINT would be the child's "stop at once, without saving"."""
    started, peak = time.perf_counter(), 0
    with StopRequests() as stop:  # before the child starts: no moment in which a stop leaves it running
        process = subprocess.Popen([*program, *command])
        try:
            while process.poll() is None and stop.requested is None:
                peak = max(peak, peak_rss_mib(process.pid))
                time.sleep(0.2)
            if stop.requested is not None:
                print(f"{signal.Signals(stop.requested).name}: stopping the child (pid {process.pid}), which "
                      "saves its checkpoint; a rerun continues", file=sys.stderr)
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):  # then killed below
                    process.wait(timeout=STOP_GRACE_S)
                raise SystemExit(128 + stop.requested)
        finally:  # also on a second Ctrl-C or any error here: never leave a training running unwatched
            if process.poll() is None:
                process.kill()
                process.wait()
    if process.returncode != 0:
        raise SystemExit(f"failed: {' '.join(program[1:] if program[0] == sys.executable else program)} "
                         f"{' '.join(command)}")
    return round((time.perf_counter() - started) / 60, 2), peak


def preset(method: str, vit: bool = False) -> str:
    """The method's Fashion-MNIST preset; DINO on a convnet takes the official code's convnet recipe
    (``dino_resnet_fashion_mnist``: SGD, constant weight decay, smaller crops), not its ViT one."""
    return "dino_resnet_fashion_mnist" if method == "dino" and not vit else f"{method}_fashion_mnist"


def preset_config(method: str, overrides: list[str] = (), vit: bool = False):  # noqa: ANN201
    """That preset, resolved, with ``overrides``."""
    return resolve(apply_overrides(read_yaml(find_config(preset(method, vit))), list(overrides)))


def warmup_overrides(method: str, epochs: int, vit: bool = False) -> list[str]:
    """The preset's warm-up, at most a tenth of the run: the presets' warm-ups (BYOL's, Barlow Twins' and
    DINO's 10 epochs) are written for 100 epochs and would otherwise fill a short run."""
    warmup = preset_config(method, vit=vit).optim.warmup_epochs
    return [f"optim.warmup_epochs={min(warmup, epochs / 10):g}"] if warmup > epochs / 10 else []


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The settings every row of a side-by-side benchmark shares (epochs and width are each script's)."""
    parser.add_argument("--subset", type=int, help="train on this many images (smoke runs; default: all 60k)")
    parser.add_argument("--data-root", help="the Fashion-MNIST folder (default: where selfsup looks)")
    parser.add_argument("--backbone", default="resnet18", help="(tests: toy)")
    parser.add_argument("--batch-size", type=int, help="every row's batch (default: each preset's)")
    parser.add_argument("--device", default="auto")


def shared_overrides(args: argparse.Namespace, online_probe: bool) -> list[str]:
    """The --set overrides of :func:`add_run_arguments`: one backbone, epochs not minutes, no kNN monitor.
    Each preset's drop path is kept (DINO's ViT trains with its paper's 0.1; the ResNet presets have none)."""
    shared = [f"train.epochs={args.epochs}", "train.minutes=null", "train.knn_every=0",
              f"train.online_probe={str(online_probe).lower()}", f"backbone.name={args.backbone}",
              f"backbone.width={args.width}", "backbone.patch_size=null", "backbone.registers=0",
              f"train.device={args.device}"]
    shared += [f"data.root={args.data_root}"] if args.data_root else []
    shared += [f"data.subset={args.subset}"] if args.subset else []
    return shared + ([f"train.batch_size={args.batch_size}", f"train.knn_test_size={args.batch_size}"]
                     if args.batch_size else [])


def scores(results: dict) -> dict:
    return {"knn20": results["knn k=20, T=0.07"]["top1"], "knn200": results["knn k=200, T=0.07"]["top1"],
            "linear": results["linear"]["top1"]}


def method_row(method: str, overrides: list[str], run_dir: Path, vit: bool = False) -> dict:
    sets = [arg for value in overrides for arg in ("--set", value)]
    minutes, rss = child(["pretrain", "-c", preset(method, vit), "--run-dir", str(run_dir), "--resume",
                          "--quiet", *sets])
    return {**score_run(run_dir), "wall_minutes": minutes, "peak_rss_mib": rss}


def score_run(run_dir: Path) -> dict:
    """A finished run scored by the ladder's protocol, with its online probe (if any) and training facts."""
    evaluator, config = checkpoint_evaluator(run_dir, EVAL, quiet=True)
    probe = [row["probe_top1"] for row in read_rows(run_dir, "epoch") if row.get("probe_top1") is not None]
    return {**scores(evaluator.run(PROTOCOLS, config.eval, config.train.seed)[evaluator.name]),
            "online_probe": probe[-1] if probe else None, "epochs": config.train.epochs, "seed": config.train.seed,
            **training_facts(run_dir, config)}


def training_facts(run_dir: Path, config) -> dict:  # noqa: ANN001 - a resolved RunConfig
    """Steps, speed and training minutes from the run's ``summary.json`` (accumulated across resumes, where
    the row's wall minutes are only the last process's), and where, when and from which commit it trained
    (``meta.json``: rows of one ladder may come from several machines and several versions of the code)."""
    summary, meta = (json.loads((run_dir / name).read_text()) for name in ("summary.json", "meta.json"))
    return {"steps": summary["steps"], "batch_size": config.train.batch_size, "img_per_s": summary["img_per_s"],
            "train_minutes": summary["train_minutes"], "machine": meta["device"], "precision": meta["precision"],
            "date": meta["date"][:10], "commit": meta.get("git_revision", "unknown"),
            **({"test_top1": summary["test_top1"]} if "test_top1" in summary else {})}


def equal_images_epochs(row: dict, reference: dict) -> int:
    """The epochs at which the method of ``row`` sees as many images as ``reference`` (the supervised row) did,
    from the steps and batch each row recorded (Exemplar at 10 epochs: 620 x 128 images; supervised: 2,340 x 256,
    so 75 epochs)."""
    per_epoch = row["steps"] * row["batch_size"] / row["epochs"]
    return max(row["epochs"], round(reference["steps"] * reference["batch_size"] / per_epoch))


def supervised_row(overrides: list[str], epochs: int, run_dir: Path, data_root: str | None,
                   batch_size: int | None) -> dict:
    """The backbone trained with every label for the same epochs: the ceiling."""
    root = (["--data-root", data_root] if data_root else []) + (["--batch-size", str(batch_size)] if batch_size else [])
    minutes, rss = child(["supervised", "-c", "simclr_fashion_mnist", "--epochs", str(epochs), "--run-dir", str(run_dir),
                          "--resume", "--quiet", *root, *[arg for value in overrides for arg in ("--set", value)]])
    return {**score_run(run_dir), "epochs": epochs, "wall_minutes": minutes, "peak_rss_mib": rss}


def floor_networks(shared: list[str], vit: bool) -> dict[str, RunConfig]:
    """The random networks every method must beat, by row name: the ResNet, and with ViT rows a random
    ViT read both ways (its [CLS] token, and the mean of its patch tokens as MaskFeat's row is)."""
    config = resolve(apply_overrides(read_yaml(find_config("simclr_fashion_mnist")), shared + EVAL))
    if not vit:
        return {"random init": config}
    return {"random init": config, "random init (vit_tiny)": resolve(apply_overrides(config.to_dict(), VIT)),
            f"random init (vit_tiny, {MEAN_POOL})": resolve(apply_overrides(config.to_dict(),
                                                                            [*VIT, "backbone.pool=mean"]))}


def floor_rows(shared: list[str], vit: bool, out: Path, device: str, have: Collection[str] = ()) -> dict[str, dict]:
    """The rows every method must beat that are not in ``have``: raw pixels and :func:`floor_networks`."""
    every = floor_networks(shared, vit)
    config = every["random init"]
    networks = {name: network for name, network in every.items() if name not in have}
    rows = {}
    if "raw pixels" not in have:
        rows["raw pixels"] = scores(pixel_evaluator(config, out / "pixels", quiet=True).run(
            PROTOCOLS, config.eval, 0)["raw pixels"])
    if not networks:
        return rows
    splits = evaluation_splits(config, quiet=True)
    mean, std = splits.train.stats()
    for name, backbone in networks.items():
        torch.manual_seed(0)
        network = backbone.backbone.build(splits.train.channels, splits.train.image_size)
        evaluator = Evaluator(name, splits.train, splits.test, EvalView(splits.train.image_size, mean, std),
                              out / name.replace(" ", "-").replace("(", "").replace(")", "").replace(",", ""),
                              network, device=device, quiet=True)
        rows[name] = scores(evaluator.run(PROTOCOLS, backbone.eval, 0)[name])
    return rows


def machine_kind(row: dict) -> str | None:
    """A row's machine in a few words: the GPU's name, or the CPU's widest vector feature; and the precision."""
    if "machine" not in row:
        return None
    machine = row["machine"]
    if machine.endswith(")") and "threads" in machine:  # a CPU: "MODEL (N threads; avx2 avx512f ...)"
        features = machine.rsplit(";", 1)[-1].rstrip(")").split() if ";" in machine else ["no AVX"]
        machine = f"CPU {features[-1]}"
    return f"{machine}, {row['precision']}" if row.get("precision") else machine


def table(rows: dict[str, dict]) -> str:
    columns = ["row", "kNN k=20", "kNN k=200", "linear", "online probe", "epochs", "img/s", "train (min)",
               "wall (min)", "peak RSS (MiB)", "machine"]
    lines = [{"row": name, "kNN k=20": row["knn20"], "kNN k=200": row["knn200"], "linear": row["linear"],
              "online probe": row.get("online_probe"), "epochs": row.get("epochs"), "img/s": row.get("img_per_s"),
              "train (min)": row.get("train_minutes"), "wall (min)": row.get("wall_minutes"),
              "peak RSS (MiB)": row.get("peak_rss_mib"), "machine": machine_kind(row)}
             for name, row in rows.items()]
    return markdown_table([{key: value for key, value in line.items() if value is not None} for line in lines],
                          columns)


COLUMNS_NOTE = ("train (min): the training's minutes summed over every process of a run that was stopped and "
                "resumed; wall (min): the last process's minutes, its training and the scoring.")


def write_table_and_chart(report_dir: Path, rows: dict[str, dict], epochs: int) -> None:
    """``ladder.md`` and ``ladder.png`` from the rows (also after a row written by a ladder still running:
    ``python -c "import ladder; ladder.write_table_and_chart(...)"`` from ``benchmarks/``)."""
    (report_dir / "ladder.md").write_text(table(rows) + "\n\n" + COLUMNS_NOTE + "\n")
    names, series = list(rows), {"kNN k=20": "knn20", "linear": "linear"}
    pixels = rows.get("raw pixels")
    grouped_bars(report_dir / "ladder.png", names,
                 {label: [rows[n][key] for n in names] for label, key in series.items()},
                 "top-1 (%)", f"Fashion-MNIST, {epochs} epochs each",
                 references={label: pixels[key] for label, key in series.items()} if pixels else None,
                 reference_name="raw pixels", zoom=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", default=RESNET_METHODS,
                        help="methods on the ResNet-18 (default: every single method)")
    parser.add_argument("--vit-methods", nargs="*", default=["maskfeat", "dino"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--width", type=int, default=16, help="ResNet-18 width (64 = standard)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--seeded", nargs="*", default=["simclr", "byol", "rotation"],
                        help="methods trained once per --seeds (the others with the first seed)")
    parser.add_argument("--equal-images", nargs="*", default=[], metavar="METHOD",
                        help="also train these methods (after their row at --epochs) for as many images as the "
                             "supervised row saw: for methods whose epoch is smaller than the training set's")
    add_run_arguments(parser)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "ladder"), help="the runs")
    parser.add_argument("--report", default=str(ROOT / "benchmarks" / "ladder"),
                        help="the rows, table and chart (default: in the repository, to grow across sessions)")
    parser.add_argument("--again", nargs="+", default=[], metavar="ROW",
                        help="method rows to train again though the report has them, e.g. 'dino (vit_tiny)': "
                             "the new row replaces the report's when it finishes (in a fresh --out: a run "
                             "finished there is only scored again)")
    parser.add_argument("--score", nargs="+", metavar="RUN", help="only score these finished runs by the ladder's "
                        "protocol and print their rows (choosing E: a run trained apart, e.g. with the kNN monitor)")
    args = parser.parse_args(argv)
    if args.score:
        for run in args.score:
            print(json.dumps({run: score_run(Path(run))}), flush=True)
        return
    runs = [(method if seed == args.seeds[0] else f"{method} seed {seed}", method, False, seed)
            for method in args.methods for seed in (args.seeds if method in args.seeded else args.seeds[:1])]
    runs += [(f"{method} (vit_tiny)", method, True, args.seeds[0]) for method in args.vit_methods]
    if unknown := sorted(set(args.again) - {name for name, *_ in runs}):
        parser.error(f"--again {unknown}: not a row this command trains ({', '.join(name for name, *_ in runs)})")
    out, report_dir = Path(args.out), Path(args.report)
    out.mkdir(parents=True, exist_ok=True)
    report_dir.mkdir(parents=True, exist_ok=True)
    report_file = report_dir / "ladder.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else {"rows": {}}
    shared = shared_overrides(args, online_probe=True)
    report.update({"date": datetime.date.today().isoformat(),
                   "command": " ".join(["python benchmarks/ladder.py", *argv]),
                   "machine": describe_device(torch.device("cuda") if torch.cuda.is_available()
                                              and args.device != "cpu" else torch.device("cpu")),
                   "versions": library_versions(), "shared_overrides": shared})
    rows = report["rows"]

    def done(name: str, row: dict) -> None:
        # The table and chart follow every row, so that a ladder stopped between rows leaves a
        # report that matches its rows (a session commits them one row at a time).
        rows[name] = row
        write_json(report_file, report)
        write_table_and_chart(report_dir, rows, args.epochs)
        print(json.dumps({name: row}), flush=True)

    here = {"machine": report["machine"], "date": report["date"], "commit": git_revision()}
    for name, row in floor_rows(shared, bool(args.vit_methods), out, args.device, have=rows).items():
        done(name, {**row, **here})
    floors = [name for name in ["raw pixels", *floor_networks(shared, True)] if name in rows]
    report["rows"] = rows = {**{name: rows[name] for name in floors}, **rows}  # the floors first, as they came
    supervised = f"supervised ({args.epochs} epochs, all labels)"
    if supervised not in rows:
        done(supervised, supervised_row(shared, args.epochs, out / "supervised", args.data_root, args.batch_size))
    for name, method, vit, seed in runs:
        if name not in rows or name in args.again:
            run_dir = out / name.replace(" (vit_tiny)", "-vit").replace(" ", "-")
            overrides = shared + (VIT if vit else []) + warmup_overrides(method, args.epochs, vit)
            done(name, method_row(method, overrides + [f"train.seed={seed}"], run_dir, vit))

    for method in args.equal_images:
        if method not in rows:
            raise SystemExit(f"--equal-images {method}: its {args.epochs}-epoch row comes first (add it to --methods)")
        epochs = equal_images_epochs(rows[method], rows[supervised])
        if f"{method} (equal images)" not in rows:
            overrides = shared + warmup_overrides(method, epochs) + [f"train.epochs={epochs}",
                                                                      f"train.seed={args.seeds[0]}"]
            done(f"{method} (equal images)", method_row(method, overrides, out / f"{method}-equal-images"))

    print(f"\n{report['machine']}; {args.epochs} epochs each, ResNet-18 width {args.width} (ViT-tiny where marked)\n")
    print(table(rows))
    write_table_and_chart(report_dir, rows, args.epochs)


if __name__ == "__main__":
    main()
