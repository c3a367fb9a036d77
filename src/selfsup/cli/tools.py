"""Commands around runs and encoders: ``selfsup data``, ``export``, ``report``, ``runs``, ``embed``
and ``search``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import SelfsupError
from .common import COUNT, POSITIVE_INT


def data(args: argparse.Namespace) -> int:
    from ..data import DATASETS, USER_FORMATS, describe, load_dataset, prepare

    if args.action == "list":
        for name, text in [*((name, spec.description) for name, spec in DATASETS.items()), *USER_FORMATS.items()]:
            print(f"  {name:14s} {text}")
        return 0
    if args.name is None:
        raise SelfsupError(f"data {args.action} needs a dataset name (see `selfsup data list`)")
    if args.action == "shard":
        from ..data.shards import write_shards

        if args.target is None:
            raise SelfsupError("selfsup data shard IMAGE_FOLDER SHARD_FOLDER: say where the shards go")
        counts = write_shards(args.name, args.target, args.shard_size, quiet=args.quiet)
        print(f"wrote {', '.join(f'{n} {split} images' for split, n in counts.items())} to {args.target} "
              f"({args.shard_size} a shard); train on them with --data webdataset --data-root {args.target}")
        return 0
    if args.action == "cache":
        from ..data import FILE_FORMATS, cache_folder, write_cache

        name, root = (args.name, args.root) if not Path(args.name).expanduser().exists() else ("imagefolder", args.name)
        out = cache_folder(name, root, args.split, args.image_size, args.target)
        source = "stream" if name in FILE_FORMATS else "memory"  # files are decoded a chunk at a time
        dataset = load_dataset(name, args.split, root, args.image_size, args.download, skip_bad=args.skip_bad,
                               quiet=args.quiet, source=source)
        write_cache(dataset, out, quiet=args.quiet)
        print(f"wrote a cache of {len(dataset)} {name} ({args.split}) images at {dataset.image_size} px to {out}; "
              "train on it with --data-source cache" + (f" --set data.cache_dir={args.target}" if args.target else ""))
        return 0
    if args.action == "prepare":
        root = prepare(args.name, args.root, download=args.download, quiet=args.quiet)
        if not args.quiet:
            print(f"{args.name} is ready in {root}")
        return 0
    dataset = load_dataset(args.name, args.split, args.root, args.image_size, args.download, quiet=args.quiet)
    print(json.dumps(describe(dataset), indent=2))
    if args.grid:
        from ..report import image_grid

        image_grid(dataset, args.grid)
        print(f"sample grid: {args.grid}")
    return 0


def export(args: argparse.Namespace) -> int:
    from ..engine.lock import writing_into
    from ..export import export_backbone

    with writing_into(args.out):
        card = export_backbone(args.checkpoint, args.out, library=args.format, onnx=args.onnx, network=args.network,
                               quiet=args.quiet)
    out = Path(args.out)
    check = card["recipe_check"]
    checked = (f"checked: the {args.format} model equals the encoder to {check['max_abs_diff']:.1e}"
               if "max_abs_diff" in check else f"recipe not run: {check['skipped']}")
    print(f"wrote {out} ({card['architecture']['library']} {card['architecture']['model']}, "
          f"{card['num_features']} features; {checked})\nwrote {out.with_suffix('.json')} (card: architecture, "
          "preprocessing, provenance, results, recipe)")
    if "onnx" in card:
        onnx = card["onnx"]
        onnx_file = out.parent / onnx["file"]  # the card names it relative to itself
        print(f"wrote {onnx_file} (opset {onnx['opset']}, dynamic batch; onnxruntime equals PyTorch to "
              f"{onnx['max_abs_diff']:.1e} at batch sizes {', '.join(map(str, onnx['checked_batch_sizes']))})")
    print(f"\nload it in plain {args.format} with (the card's \"recipe\"):\n")
    print(card["recipe"])
    return 0


def report(args: argparse.Namespace) -> int:
    from ..engine.lock import writing_into
    from ..explore import inspect_run
    from ..report import check_reportable, read_run, write_comparison, write_report

    runs = [read_run(path) for path in args.run_dirs]
    for run in runs:  # every folder checked before any work
        check_reportable(run)
    for run in runs:
        inspection, notes = None, []
        with writing_into(run.path):
            if args.inspect:
                inspection, notes = inspect_run(run.path, args.checkpoint, points=args.points, queries=args.queries,
                                                neighbours=args.neighbours, probe=args.probe, map_method=args.map,
                                                seed=args.seed, quiet=args.quiet)
            for note in notes:
                print(f"{run.path}: {note}", file=sys.stderr)
            summary = write_report(run, inspection, notes)
        print(f"wrote {summary.parent / 'report.html'} and {summary}")
    if len(runs) > 1:
        out = Path(args.out) if args.out else runs[0].path.parent / "comparison"
        print(f"wrote {write_comparison(runs, out)} and {out / 'comparison.md'}")
    return 0


def runs(args: argparse.Namespace) -> int:
    from ..report import find_runs, read_run, runs_table

    root = Path(args.dir)
    paths = find_runs(root)
    if not paths:
        print(f"no run directories under {root} (folders with metrics.jsonl or checkpoints/*.pt)")
        return 0
    records = [read_run(path, root) for path in paths]
    if args.status:
        records = [r for r in records if r.status == args.status]
    if args.json:
        print(json.dumps([{**r.row(), "path": str(r.path)} for r in records], indent=2))
    else:
        print(runs_table(records))
        counts = {status: sum(r.status == status for r in records) for status in ("finished", "resumable",
                                                                                 "interrupted")}
        print("\n" + ", ".join(f"{n} {status}" for status, n in counts.items() if n))
    return 0


def embed(args: argparse.Namespace) -> int:
    from ..engine.lock import writing_into
    from ..explore import default_index_dir, embed as embed_images

    out = Path(args.out) if args.out else default_index_dir(args.checkpoint, args.images)
    with writing_into(out):
        meta = embed_images(args.checkpoint, args.images, out, split=args.split, root=args.root,
                            batch_size=args.batch_size, strict=args.strict, device=args.device, quiet=args.quiet)
    print(f"wrote {out / 'embeddings.npy'} ({meta['count']} x {meta['dim']}) and {out / 'index.json'}")
    if meta["skipped"]:
        print(f"skipped {len(meta['skipped'])} file(s) that could not be decoded (listed in index.json):",
              file=sys.stderr)
        for item in meta["skipped"][:10]:
            print(f"  {item['path']}: {item['reason']}", file=sys.stderr)
    print(f"search it with: selfsup search {out} QUERY_IMAGE -k 10")
    return 0


def search(args: argparse.Namespace) -> int:
    from ..explore import search as search_index
    from ..figures import printable

    result = search_index(args.index, args.query, args.k, backend=args.backend, checkpoint_path=args.checkpoint,
                          sheet=args.sheet, device=args.device)
    for rank, (path, similarity) in enumerate(zip(result.paths, result.similarities), 1):
        print(f"{rank:3d}  {similarity:.4f}  {printable(path)}")
    if result.sheet is not None:
        print(f"contact sheet: {result.sheet}  (cosine similarity, exact search with {result.backend})")
    return 0


def add_parsers(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("data", help="list, prepare (find or download) or inspect datasets; shard an image "
                                         "folder into WebDataset tar files; cache a dataset decoded on disk",
                            description="cache NAME|FOLDER [CACHE_DIR] --image-size S decodes a split once into a "
                                        "memory-mapped file that data.source=cache reads (CACHE_DIR: where "
                                        "caches live, data.cache_dir; default $SELFSUP_CACHE or "
                                        "~/.cache/selfsup/caches)")
    p.add_argument("action", choices=["list", "prepare", "inspect", "shard", "cache"])
    p.add_argument("name", nargs="?", help="dataset name (see `selfsup data list`); for shard and cache, "
                                           "an image folder works too")
    p.add_argument("target", nargs="?", help="shard: the folder the shards go to; cache: where caches live (data.cache_dir)")
    p.add_argument("--root", help="folder holding the dataset (or to download into)")
    p.add_argument("--split", default="train")
    p.add_argument("--image-size", type=POSITIVE_INT, help="resize (imagefolder and webdataset default: 64)")
    p.add_argument("--download", action="store_true", help="fetch from the official URL when not found")
    p.add_argument("--grid", help="write a PNG grid of sample images per class (inspect)")
    p.add_argument("--shard-size", type=POSITIVE_INT, default=1000, help="shard: images per shard (default 1000)")
    p.add_argument("--skip-bad", action="store_true", help="cache: leave out images that do not decode (listed)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=data)

    p = commands.add_parser("export", help="write the encoder as weights for plain torchvision or timm (ResNet and "
                                            "ViT), a JSON card, and optionally ONNX checked by onnxruntime")
    p.add_argument("checkpoint", help="checkpoint file or run directory")
    p.add_argument("--out", default="backbone.safetensors",
                   help=".safetensors (default) or .pt: the target model's state dict; the card goes to OUT.json")
    p.add_argument("--format", default="torchvision", choices=("torchvision", "timm"),
                   help="the library whose model loads the weights (default torchvision; ViTs with registers or mean pooling: timm)")
    p.add_argument("--onnx", nargs="?", const="", default=None, metavar="PATH",
                   help="also write the encoder as ONNX (default path: OUT with .onnx), with a dynamic batch, and "
                        "check it with onnxruntime against PyTorch (needs pip install 'selfsup[export]')")
    p.add_argument("--network", choices=("student", "teacher"),
                   help="for methods with a momentum teacher: which network (default: the paper's, DINO's teacher)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=export)

    p = commands.add_parser("report", help="an HTML page (and markdown) of a run, or a comparison of several",
                            description="For each run directory: RUN/report/report.html (self-contained: open it "
                                        "from disk) and summary.md with the curves, results, a 2-D map of the "
                                        "test embeddings, nearest-neighbour retrievals, the linear probe's "
                                        "confusion matrix, the layer-wise chart, config and environment. With "
                                        "several run directories, also a comparison page (--out).")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="folder of the comparison page (default: <first run's parent>/comparison)")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"], help="which checkpoint to inspect")
    p.add_argument("--no-inspect", dest="inspect", action="store_false",
                   help="curves and recorded results only: no features, map, retrievals or probe (fast)")
    p.add_argument("--no-probe", dest="probe", action="store_false",
                   help="do not fit the linear probe for the confusion matrix when eval/results.json has none")
    p.add_argument("--map", default="auto", choices=["auto", "umap", "tsne"],
                   help="2-D map: UMAP when umap-learn is installed (auto), else t-SNE (scikit-learn)")
    p.add_argument("--points", type=POSITIVE_INT, default=1000, help="test images on the map (default 1000)")
    p.add_argument("--queries", type=POSITIVE_INT, default=10, help="retrieval queries, one class after another (default 10)")
    p.add_argument("--neighbours", type=POSITIVE_INT, default=8, help="neighbours shown per query (default 8)")
    p.add_argument("--seed", type=COUNT, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=report)

    p = commands.add_parser("runs", help="a table of the runs under a folder: method, data, epochs, kNN, linear, "
                                         "status (finished / resumable / interrupted)")
    p.add_argument("dir", nargs="?", default="runs", help="folder to scan, recursively (default: runs)")
    p.add_argument("--status", choices=["finished", "resumable", "interrupted"], help="only runs in this state")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=runs)

    p = commands.add_parser("embed", help="an encoder's embeddings of a folder of images (or a dataset split), "
                                          "as an index for selfsup search")
    p.add_argument("checkpoint", help="checkpoint file or run directory")
    p.add_argument("images", help="folder of images (searched recursively) or a dataset name (see selfsup data list)")
    p.add_argument("--out", help="index folder (default: RUN/embeddings/<images>)")
    p.add_argument("--split", default="test", help="split of a dataset name (default test)")
    p.add_argument("--root", help="folder holding the dataset")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=256)
    p.add_argument("--strict", action="store_true", help="stop at the first image that cannot be decoded "
                                                         "(default: skip it and list it)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=embed)

    p = commands.add_parser("search", help="nearest neighbours of an image in an index from selfsup embed")
    p.add_argument("index", help="index folder written by selfsup embed")
    p.add_argument("query", help="query image (any size: preprocessed like the index), or a .npy feature vector")
    p.add_argument("-k", type=POSITIVE_INT, default=10, help="neighbours (default 10)")
    p.add_argument("--backend", default="auto", choices=["auto", "faiss", "torch"],
                   help="exact cosine search: faiss when installed (auto), else torch")
    p.add_argument("--checkpoint", help="the index's checkpoint at another path (must hold the same weights)")
    p.add_argument("--sheet", help="contact sheet PNG (default: INDEX/search-<query>.png)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=search)
