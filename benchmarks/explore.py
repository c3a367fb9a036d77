"""What using a trained encoder costs: ``selfsup embed`` (a folder of PNG files and a dataset split),
``selfsup search`` (faiss against exact torch, at two index sizes, and their agreement), the
report's 2-D maps (t-SNE; UMAP when umap-learn is installed) and ``selfsup report`` as a whole.

The encoder is the SimCLR ResNet-18 (width 16) of RESULTS section 10 (run
``benchmarks/simclr_v2.py`` first, or pass ``--checkpoint`` a run directory). Everything runs one after the
other in this one process, so the ratios are measured side by side.

    python benchmarks/explore.py            # ~6 min on 2 CPU cores
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from selfsup.data import load_dataset
from selfsup.engine.runtime import pick_device, provenance, resolve_precision
from selfsup.explore import Index, embed, project_2d, search
from selfsup.explore.embed import Encoder
from selfsup.files import write_json
from selfsup.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]


def timed(function):  # noqa: ANN001, ANN201
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT / "benchmarks" / "out" / "simclr_v2" / "pretrain"))
    parser.add_argument("--files", type=int, default=2000, help="PNG files in the folder to embed")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "explore"))
    args = parser.parse_args()
    out = Path(args.out)
    if not Path(args.checkpoint).exists():
        sys.exit(f"{args.checkpoint} does not exist: run benchmarks/simclr_v2.py first, or pass --checkpoint")
    shutil.rmtree(out, ignore_errors=True)
    rows = []

    # A folder of PNG files, written from the test split (decoding is part of what is measured).
    from PIL import Image

    test = load_dataset("fashion_mnist", "test", quiet=True)
    photos = out / "photos"
    for row in range(args.files):
        target = photos / test.classes[int(test.targets[row])].replace("/", "-") / f"{row:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.images[row][0].numpy()).save(target)
    meta, seconds = timed(lambda: embed(args.checkpoint, str(photos), out / "photos-index", quiet=True))
    rows.append({"step": f"embed {meta['count']} PNG files (decode + encode)", "seconds": round(seconds, 2),
                 "rate": f"{meta['count'] / seconds:.0f} img/s"})
    for split in ("test", "train"):
        meta, seconds = timed(lambda: embed(args.checkpoint, "fashion_mnist", out / f"{split}-index", split=split,
                                            quiet=True))
        rows.append({"step": f"embed fashion_mnist {split} ({meta['count']} images in memory)",
                     "seconds": round(seconds, 2), "rate": f"{meta['count'] / seconds:.0f} img/s"})

    # Search: a batch of queries against the 10k and 60k indexes, both backends, and agreement.
    encoder = Encoder.load(args.checkpoint)
    queries = encoder(test.images[-args.queries:]).numpy()
    agreement = {}
    for split in ("test", "train"):
        index = Index.load(out / f"{split}-index")
        results = {}
        for backend in ("faiss", "torch"):
            index.search(queries[:2], 10, backend)  # warm-up
            (sims, found, _), seconds = timed(lambda: index.search(queries, 10, backend))
            results[backend] = found
            rows.append({"step": f"search {len(index.embeddings)} x {index.meta['dim']} with {backend}, "
                                 f"{len(queries)} queries, k=10", "seconds": round(seconds, 4),
                         "rate": f"{1000 * seconds / len(queries):.2f} ms/query"})
        same_sets = np.mean([set(a) == set(b) for a, b in zip(results["faiss"], results["torch"])])
        agreement[split] = {"same rows in the same order": float((results["faiss"] == results["torch"]).mean()),
                            "same top-10 set per query": float(same_sets)}
    query_file = out / "query.png"
    Image.fromarray(test.images[-1][0].numpy()).resize((56, 56)).save(query_file)
    result, seconds = timed(lambda: search(out / "train-index", query_file, 10))
    rows.append({"step": "selfsup search: one image query on the 60k index (load, embed, search, contact sheet)",
                 "seconds": round(seconds, 2), "rate": f"top-1 similarity {result.similarities[0]:.3f}"})

    # The report's 2-D maps on the test features.
    features = torch.from_numpy(np.load(out / "test-index" / "embeddings.npy"))
    labels = test.targets
    methods = ["tsne"]
    try:
        import umap  # noqa: F401
        methods.append("umap")
    except ImportError:
        pass
    for method in methods:
        for points in (1000, 3000):
            chosen = torch.randperm(len(features), generator=torch.Generator().manual_seed(0))[:points]
            (coords, name), seconds = timed(lambda: project_2d(features[chosen], method, seed=0))
            distances = torch.cdist(torch.from_numpy(coords).float(), torch.from_numpy(coords).float())
            distances.fill_diagonal_(float("inf"))
            kept = (labels[chosen][distances.argmin(1)] == labels[chosen]).float().mean().item()
            rows.append({"step": f"{name} of {points} test embeddings", "seconds": round(seconds, 2),
                         "rate": f"1-NN on the map agrees with the class for {100 * kept:.1f}%"})

    # selfsup report on a copy of the run: cold (features, probe, map) then warm (cached features and probe).
    run = out / "run"
    source = Path(args.checkpoint)
    shutil.copytree(source, run, ignore=shutil.ignore_patterns("eval", "report", "tensorboard", "best.pt"))
    for state in ("cold", "warm"):
        _, seconds = timed(lambda: subprocess.run([sys.executable, "-m", "selfsup", "report", str(run), "--quiet"],
                                                  check=True))
        rows.append({"step": f"selfsup report ({state}: {'features + linear probe + map' if state == 'cold' else 'map'}"
                             " + figures + page)", "seconds": round(seconds, 2), "rate": "-"})
    shutil.rmtree(run / "checkpoints")  # 2 copies of the weights are enough on disk

    machine = pick_device("auto")
    report = {**provenance(machine, resolve_precision("auto", machine)), "checkpoint": args.checkpoint,
              "faiss_torch_top10_agreement": agreement, "rows": rows}
    device = report["device"]
    write_json(out / "explore.json", report)
    print(markdown_table(rows, ["step", "seconds", "rate"]))
    print(f"\nfaiss and torch return the same top-10 rows for {agreement} of the entries; {device}")
    print(json.dumps(agreement))


if __name__ == "__main__":
    main()
