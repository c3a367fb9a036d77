"""Kill and resume: does a run killed at a random point (kill -9) and resumed end bit-identical to
the same run left alone? For every stateful method and strategy, in fp32 and bf16 (issue 21).

Each case runs once straight, then ``--trials`` times killed with SIGKILL by the process itself
(no handler runs, as ``kill -9`` from outside) at a drawn point, alternating between a random step
and the middle of a checkpoint write (half of ``last.pt`` or ``best.pt`` written to its temporary
file), then resumed with the same command. Every checkpoint the straight run left (``last.pt``,
``best.pt``, every run of a sweep or continual sequence) is compared with the resumed one, tensor by
tensor: weights, optimiser moments, memory banks, queues, EMA teachers, DINO's centre, temporal
ensembling's memory, RNG states. The states in a case:

- npid: the memory bank; moco: the queue and the momentum encoder; byol: the EMA target;
  dino: the teacher and the centre; simclr: the memory layout left to the run (timed on fp32
  CPUs); pretraining a ResNet-18 of width 8 on the first 1,024 Fashion-MNIST images;
- temporal_ensembling: the ensemble memory (``selfsup semisup``);
- continual: a sequence of tasks with rehearsal (``selfsup continual``);
- finetune_sweep: label fractions x seeds (``selfsup eval finetune``).

    python benchmarks/kill_resume.py                      # every case, fp32 and bf16 (bf16 where native)
    python benchmarks/kill_resume.py --cases moco --trials 2 --precisions fp32

Writes ``benchmarks/out/kill_resume.json`` after every trial; a killed benchmark continues where it
was. Prints "N identical of N" per case.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from throughput import cpu_flags  # noqa: E402

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

KILLED = """
import os, signal, sys
from pathlib import Path
from selfsup import files
from selfsup.cli import main
from selfsup.engine import Engine

kind, _, where = os.environ["SELFSUP_KILL_AT"].partition(":")
if kind == "step":  # at the start of this optimiser step (of the first training that reaches it)
    original_step = Engine.train_step

    def train_step(self, *batch):
        if self.step == int(where):
            os.kill(os.getpid(), signal.SIGKILL)
        return original_step(self, *batch)

    Engine.train_step = train_step
else:  # in the middle of the n-th write of a file of this name: half of it on disk, then gone
    name, _, nth = where.partition("#")
    seen, original_write = [0], files.write_atomic

    def write_atomic(path, write, what="file"):
        if Path(path).name == name:
            seen[0] += 1
            if seen[0] == int(nth):
                def half(handle):
                    write(handle)
                    handle.flush()
                    handle.truncate(handle.tell() // 2)
                    os.fsync(handle.fileno())
                    os.kill(os.getpid(), signal.SIGKILL)
                return original_write(path, half, what)
        return original_write(path, write, what)

    files.write_atomic = write_atomic
sys.exit(main(sys.argv[1:]))
"""

PRETRAIN_COMMON = ["backbone.name=resnet18", "backbone.width=8", "train.batch_size=64",
                   "train.epochs=3", "train.knn_every=1", "train.knn_bank_size=256", "train.knn_test_size=128",
                   "train.checkpoint_every_steps=3", "train.log_every=1", "train.channels_last=false",
                   "optim.warmup_epochs=1"]
METHOD_SETS = {
    "npid": ["method.num_negatives=256", "method.feature_dim=32"],
    "moco": ["method.queue_size=256", "method.proj_hidden_dim=64", "method.proj_dim=32"],
    "byol": ["method.proj_hidden_dim=64", "method.proj_dim=32", "method.pred_hidden_dim=64"],
    "dino": ["method.out_dim=256", "method.hidden_dim=64", "method.bottleneck_dim=32", "views.num_local=2"],
    # The memory layout left to the run: on fp32 CPUs it is timed (once per machine and model, then kept).
    "simclr": ["method.proj_hidden_dim=64", "method.proj_dim=32", "train.channels_last=null"],
}
CASES = [*METHOD_SETS, "temporal_ensembling", "continual", "finetune_sweep"]


def small_fashion_mnist(source: str, folder: Path, train: int = 1024, test: int = 512) -> Path:
    """The first ``train`` / ``test`` images of Fashion-MNIST in its own format (idx, gzip): every case
    reads the same few real images, and the downstream ones evaluate on a test split of seconds."""
    for split, count in (("train", train), ("t10k", test)):
        for kind, header in (("images-idx3-ubyte", 16), ("labels-idx1-ubyte", 8)):
            target = folder / f"{split}-{kind}.gz"
            if target.is_file():
                continue
            raw = gzip.decompress((Path(source) / f"{split}-{kind}.gz").read_bytes())
            dims = struct.unpack(">IIII" if header == 16 else ">II", raw[:header])
            item = dims[2] * dims[3] if header == 16 else 1
            head = raw[:4] + struct.pack(">I", count) + raw[8:header]
            folder.mkdir(parents=True, exist_ok=True)
            target.write_bytes(gzip.compress(head + raw[header:header + count * item]))
    return folder


def command(case: str, precision: str, run: Path, source: Path, data: str) -> list[str]:
    """The CLI command of ``case`` writing into ``run`` (``source``: the pretrained run downstream cases start from)."""
    if case in METHOD_SETS:
        sets = [f"method.name={case}", "data.name=fashion_mnist", f"data.root={data}", f"train.precision={precision}",
                *PRETRAIN_COMMON, *METHOD_SETS[case]]
        return ["pretrain", "--quiet", "--run-dir", str(run)] + [arg for item in sets for arg in ("--set", item)]
    common = [str(source), "--quiet", "--precision", precision, "--batch-size", "64", "--set", f"data.root={data}"]
    if case == "temporal_ensembling":
        return ["semisup", *common, "--method", "temporal-ensembling", "--labels", "0.25", "--epochs", "3",
                "--run-dir", str(run)]
    if case == "continual":
        return ["continual", *common, "--strategies", "rehearsal", "--scenarios", "class", "--classes-per-task", "5",
                "--epochs", "2", "--buffer-size", "64", "--run-dir", str(run)]
    return ["eval", "finetune", *common, "--labels", "0.25", "1", "--seeds", "0", "1", "--epochs", "2",
            "--run-dir", str(run)]


def resume_flag(case: str) -> list[str]:
    return ["--resume"] if case in METHOD_SETS or case == "temporal_ensembling" else []  # sweeps continue by themselves


def run(argv: list[str], kill: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SELFSUP_KILL_AT": kill or "none:"}
    return subprocess.run([sys.executable, "-c", KILLED, *argv], capture_output=True, text=True, env=env)


def checkpoints(folder: Path) -> dict[str, Path]:
    return {str(path.relative_to(folder)): path for path in sorted(folder.rglob("*.pt")) if "checkpoints" in path.parts}


IGNORED = {"config", "meta", "path", "elapsed", "saved_at", "time"}
"""Entries that record where and when, not what was computed (and every ``*seconds``)."""


def compared(keys: Any) -> set:
    return {key for key in keys if key not in IGNORED and not str(key).endswith("seconds")}


def first_difference(a: Any, b: Any, where: str = "") -> str | None:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
        return None if same else where
    if isinstance(a, dict) and isinstance(b, dict):
        if compared(a) != compared(b):
            return f"{where} (keys)"
        for key in sorted(compared(a), key=str):
            found = first_difference(a[key], b[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{where} (length)"
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if a == b or (a != a and b != b) else where  # NaN == NaN for this purpose


def compare(straight: Path, resumed: Path) -> str | None:
    """None when every checkpoint of ``straight`` has an identical twin in ``resumed``, else the first difference."""
    expected, got = checkpoints(straight), checkpoints(resumed)
    if set(expected) != set(got):
        return f"checkpoint files differ: {sorted(set(expected) ^ set(got))}"
    for name, path in expected.items():
        found = first_difference(torch.load(path, weights_only=True), torch.load(got[name], weights_only=True), name)
        if found:
            return found
    return None


def kill_points(case: str, trials: int, rng: random.Random) -> list[str]:
    """Alternately a random step and the middle of a checkpoint write."""
    points = []
    for trial in range(trials):
        if trial % 2 == 0:
            points.append(f"step:{rng.randint(1, 20)}")
        else:
            name = rng.choice(["last.pt", "best.pt"]) if case in METHOD_SETS else "last.pt"
            points.append(f"write:{name}#{rng.randint(1, 3)}")
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    parser.add_argument("--precisions", nargs="+", default=None, choices=["fp32", "bf16"],
                        help="default: fp32, and bf16 where the CPU has it natively")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=FASHION_MNIST)
    parser.add_argument("--scratch", default="/tmp/selfsup-kill-resume")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "kill_resume.json"))
    args = parser.parse_args()
    from selfsup.engine.runtime import cpu_supports_bf16

    precisions = args.precisions or (["fp32", "bf16"] if cpu_supports_bf16() else ["fp32"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = json.loads(out.read_text()) if out.is_file() else {}
    report.update({"command": "python benchmarks/kill_resume.py " + " ".join(sys.argv[1:]), "cpu_flags": cpu_flags(),
                   "torch": torch.__version__})
    report.setdefault("cases", {})
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    data = str(small_fashion_mnist(args.data_root, scratch / "fashion-mnist-small"))
    source = scratch / "source"
    if not (source / "checkpoints" / "last.pt").is_file():  # the pretrained run the downstream cases start from
        shutil.rmtree(source, ignore_errors=True)
        done = run(command("moco", "fp32", source, source, data))
        if done.returncode != 0:
            sys.exit(f"the source run failed:\n{done.stderr[-2000:]}")
    rng = random.Random(args.seed)
    for case in args.cases:
        for precision in precisions:
            key = f"{case} {precision}"
            entry = report["cases"].setdefault(key, {"trials": []})
            points = kill_points(case, args.trials, rng)
            straight = scratch / key.replace(" ", "-") / "straight"
            if not checkpoints(straight):
                shutil.rmtree(straight, ignore_errors=True)
                started = time.perf_counter()
                done = run(command(case, precision, straight, source, data))
                if done.returncode != 0:
                    entry["error"] = done.stderr[-1500:]
                    print(f"{key}: the straight run failed\n{done.stderr[-1500:]}", flush=True)
                    break
                entry["straight_seconds"] = round(time.perf_counter() - started, 1)
            for trial, point in enumerate(points[len(entry["trials"]):], start=len(entry["trials"])):
                folder = scratch / key.replace(" ", "-") / f"trial{trial}"
                shutil.rmtree(folder, ignore_errors=True)
                argv = command(case, precision, folder, source, data)
                killed = run(argv, point)
                row = {"kill": point, "killed": killed.returncode == -9}
                resumed = run(argv + resume_flag(case))
                row["resumed_exit"] = resumed.returncode
                row["difference"] = compare(straight, folder) if resumed.returncode == 0 else resumed.stderr[-500:]
                row["identical"] = row["difference"] is None
                entry["trials"].append(row)
                out.write_text(json.dumps(report, indent=1) + "\n")
                print(f"{key} trial {trial}: kill at {point} ({'killed' if row['killed'] else 'not reached'}), "
                      f"{'identical' if row['identical'] else 'DIFFERENT: ' + str(row['difference'])}", flush=True)
                shutil.rmtree(folder, ignore_errors=True)
            killed_rows = [row for row in entry["trials"] if row["killed"]]
            entry["summary"] = f"{sum(r['identical'] for r in killed_rows)} identical of {len(killed_rows)} killed"
            out.write_text(json.dumps(report, indent=1) + "\n")
            print(f"{key}: {entry['summary']}", flush=True)
    print("\n" + "\n".join(f"{key}: {entry.get('summary', entry.get('error', '')[:200])}"
                           for key, entry in report["cases"].items()))


if __name__ == "__main__":
    main()
