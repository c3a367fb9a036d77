"""Bad inputs across every command (issue 21): each one is refused with exit 2 and one line on stderr
that names the key or the file, and leaves the run directory it points at as it was.

Categories, not a fixed list: add a row for every bad input a user reports. The rows run in one
process against one trained tiny run, so the table costs seconds.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_overrides, write_image_folder, write_mnist_folder
from selfsup.cli import main
from selfsup.methods import METHODS


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A trained tiny run, an index, image folders and a folder of bad files."""
    root = tmp_path_factory.mktemp("bad-inputs")
    fm = write_mnist_folder(root / "fm")
    run = root / "run"
    sets = [arg for item in tiny_overrides(fm, train__epochs=1, train__knn_every=0) for arg in ("--set", item)]
    assert main(["pretrain", "--run-dir", str(run), "--quiet"] + sets) == 0
    images = write_image_folder(root / "img", per_class=3)
    assert main(["embed", str(run), str(images), "--out", str(root / "index"), "--quiet"]) == 0

    files = root / "files"
    files.mkdir()
    last = (run / "checkpoints" / "last.pt").read_bytes()
    (files / "truncated.pt").write_bytes(last[: len(last) // 2])
    (files / "random.pt").write_bytes(np.random.default_rng(0).bytes(2000))
    with zipfile.ZipFile(files / "randzip.pt", "w") as archive:  # a zip of random bytes: no checkpoint, no pickle
        archive.writestr("archive/data.pkl", np.random.default_rng(1).bytes(300))
        archive.writestr("archive/version", "3\n")

    class RunsCode:
        def __reduce__(self):  # noqa: ANN204 - unpickling it would create the file
            return (open, (str(root / "PWNED"), "w"))

    torch.save({"model": RunsCode()}, files / "evil.pt")
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    name = next(key for key in state["model"] if key.endswith("weight"))
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    torch.save(state, files / "nonfinite.pt")
    (files / "list.yaml").write_text("- method\n- simclr\n")
    (files / "broken.yaml").write_text("train: {batch_size: 4\n")
    (files / "binary.yaml").write_bytes(b"train:\n  seed: \xff\xfe\n")
    torch.save({"images": torch.zeros(4, 8, 8, dtype=torch.uint8), "targets": torch.tensor([0, 1, 0, 10**9])},
               files / "huge_label.pt")
    torch.save({"images": torch.rand(4, 8, 8), "targets": torch.tensor([0, 1, 0, 1])}, files / "float_images.pt")
    torch.save({"pictures": torch.zeros(4, 8, 8, dtype=torch.uint8)}, files / "no_images.pt")
    np.save(files / "nan.npy", np.full(32, np.nan, np.float32))
    np.save(files / "matrix.npy", np.ones((2, 3), np.float32))
    np.savez(files / "vector.npz", x=np.ones(32, np.float32))
    (files / "a-file").write_text("a file where a folder should be")
    (files / "empty").mkdir()
    (files / "not-a-tar").mkdir()
    (files / "not-a-tar" / "train-000000.tar").write_bytes(b"no tar archive")
    (files / "notes.txt").write_text("not an image")
    (files / "badlist").mkdir()
    (files / "badlist" / "train.txt").write_text("missing.png,cat\n")
    (files / "badidx").mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        (files / "badidx" / name).write_bytes(b"not gzip")
    return {"root": root, "fm": fm, "run": run, "img": images, "index": root / "index", "files": files}


def pretrain(*sets: str) -> list[str]:
    """A new tiny pretraining run with ``sets`` over the tiny settings."""
    given = dict(item.split("=", 1) for item in sets if "=" in item)
    method = given.get("method.name", "simclr")  # the tiny settings without another method's projection sizes
    tiny = tiny_overrides(Path("{fm}"), method__name=method if method in METHODS else "simclr")
    return ["pretrain", "--run-dir", "{root}/new", "--quiet"] + [arg for item in [*tiny, *sets] for arg in ("--set", item)]


CONFIG_VALUES = [  # (--set values for pretrain, what the one line must say)
    (["train.batch_size=0"], "'train.batch_size': must be >= 1, got 0"),
    (["train.batch_size=-4"], "'train.batch_size': must be >= 1, got -4"),
    (["train.batch_size=abc"], "'train.batch_size': expected int"),
    (["train.batch_size=1.5"], "'train.batch_size': expected int"),
    (["train.epochs=0"], "'train.epochs': must be >= 1"),
    (["train.epochs=-1"], "'train.epochs': must be >= 1"),
    (["train.minutes=0"], "'train.minutes': must be > 0, got 0.0"),
    (["train.minutes=.inf"], "'train.minutes': must be a finite number > 0, got inf"),
    (["train.log_every=0"], "'train.log_every': must be >= 1"),
    (["train.knn_every=-1"], "'train.knn_every': must be >= 0"),
    (["train.knn_bank_size=0"], "'train.knn_bank_size': must be >= 1"),
    (["train.knn_test_size=0"], "'train.knn_test_size': must be >= 1"),
    (["train.probe_fraction=0"], "'train.probe_fraction': must be in (0, 1]"),
    (["train.probe_fraction=1.5"], "'train.probe_fraction': must be in (0, 1]"),
    (["train.checkpoint_every_steps=-1"], "'train.checkpoint_every_steps': must be >= 0"),
    (["train.checkpoint_every_minutes=-5"], "'train.checkpoint_every_minutes': must be >= 0"),
    (["train.max_steps=0"], "'train.max_steps': must be >= 1"),
    (["train.precision=fp64"], "'train.precision': expected 'auto' | 'bf16' | 'fp16' | 'fp32'"),
    (["train.seed=-1"], "'train.seed': must be >= 0"),
    (["train.monitor_split=val"], "'train.monitor_split'"),
    (["train.epochz=3"], "unknown config key 'train.epochz' (did you mean 'epochs'?)"),
    (["optim.lr=-0.1"], "'optim.lr': must be > 0, got -0.1"),
    (["optim.lr=0"], "'optim.lr': must be > 0"),
    (["optim.lr=fast"], "'optim.lr': expected float"),
    (["optim.lr=.nan"], "'optim.lr': must be a finite number > 0, got nan"),
    (["optim.min_lr=2"], "'optim.min_lr': must be in [0, 1]"),
    (["optim.warmup_epochs=-1"], "'optim.warmup_epochs': must be >= 0"),
    (["optim.momentum=1.0"], "'optim.momentum': must be in [0, 1)"),
    (["optim.weight_decay=-1e-4"], "'optim.weight_decay': must be >= 0"),
    (["optim.weight_decay_end=-1"], "'optim.weight_decay_end'"),
    (["optim.name=adam"], "'optim.name': expected 'sgd' | 'lars' | 'adamw'"),
    (["optim.clip_grad=0"], "'optim.clip_grad'"),
    (["optim.betas=[0.9]"], "'optim.betas': expected a list of 2 (float in [0, 1), float in [0, 1))"),
    (["optim.betas=[0.9, 1.5]"], "'optim.betas[1]': must be in [0, 1)"),
    (["optim.trust_coefficient=0"], "'optim.trust_coefficient': must be > 0"),
    (["optim.lr_scales={{backbone: -1}}"], "'optim.lr_scales.backbone': must be >= 0"),
    (["optim.freeze={{backbone: -2}}"], "'optim.freeze.backbone': must be >= 0"),
    (["data.image_size=0"], "'data.image_size': must be >= 1, got 0"),
    (["data.image_size=-32"], "'data.image_size'"),
    (["data.subset=0"], "'data.subset'"),
    (["data.label_noise=1.5"], "'data.label_noise': must be in [0, 1]"),
    (["data.classes=[0, 12]"], "data.classes: fashion_mnist has classes 0..9, got 12"),
    (["data.classes=['nine']"], "data.classes: fashion_mnist has no class 'nine'"),
    (["data.classes=[1, 1]"], "data.classes must name each class once"),
    (["data.workers=-2"], "'data.workers'"),
    (["data.source=disk"], "'data.source'"),
    (["data.name=imagenet42"], "unknown dataset 'imagenet42' (did you mean 'imagefolder'?)"),
    (["data.root={root}/missing"], "fashion_mnist not found in {root}/missing"),
    (["backbone.name=resnet19"], "unknown backbone 'resnet19' (did you mean"),
    (["backbone.width=0"], "'backbone.width': must be >= 1"),
    (["backbone.name=vit_tiny", "backbone.width=64", "backbone.drop_path=1.0"], "'backbone.drop_path': must be in [0, 1)"),
    (["backbone.registers=-1"], "'backbone.registers': must be >= 0"),
    (["backbone.norm=instance"], "backbone.norm must be one of"),
    (["backbone.pool=max"], "'backbone.pool'"),
    (["backbone.pool=mean"], "backbone.pool are ViT settings"),
    (["views.augment.crop_scale=[1.0, 0.2]"], "'views.augment.crop_scale': must be in ascending order"),
    (["views.augment.crop_scale=[0.2, 1.5]"], "'views.augment.crop_scale[1]': must be in [0, 1]"),
    (["views.augment.crop_ratio=[2.0, 0.5]"], "'views.augment.crop_ratio': must be in ascending order"),
    (["views.augment.flip_p=2"], "'views.augment.flip_p': must be in [0, 1]"),
    (["views.augment.jitter=[0.4, 0.4, 0.4, 0.9]"], "'views.augment.jitter[3]': must be in [0, 0.5]"),
    (["views.augment.jitter_p=-0.1"], "'views.augment.jitter_p': must be in [0, 1]"),
    (["views.augment.blur_sigma=[2.0, 0.1]"], "'views.augment.blur_sigma': must be in ascending order"),
    (["views.augment.rotation_degrees=-5"], "'views.augment.rotation_degrees': must be in [0, 180]"),
    (["views.augment.colour=1"], "unknown config key 'views.augment.colour'"),
    (["method.name=simclr2"], "unknown method 'simclr2' (did you mean 'simclr'?)"),
    (["method.temperature=0"], "'method.temperature': must be > 0"),
    (["method.temperature=-0.5"], "'method.temperature': must be > 0"),
    (["method.proj_dim=0"], "'method.proj_dim': must be >= 1"),
    (["method.proj_layers=0"], "'method.proj_layers': must be >= 1"),
    (["method.name=moco", "method.queue_size=0"], "'method.queue_size': must be >= 1"),
    (["method.name=moco", "method.momentum=1.5"], "'method.momentum': must be in [0, 1]"),
    (["method.name=moco", "method.temperature=0"], "'method.temperature': must be > 0"),
    (["method.name=dino", "views.num_local=-1"], "'views.num_local': must be >= 0"),
    (["method.name=dino", "method.teacher_temperature=0"], "'method.teacher_temperature': must be > 0"),
    (["method.name=dino", "method.out_dim=0"], "'method.out_dim': must be >= 1"),
    (["method.name=dino", "method.center_momentum=1.1"], "'method.center_momentum': must be in [0, 1]"),
    (["method.name=byol", "method.base_momentum=2"], "'method.base_momentum': must be in [0, 1]"),
    (["method.name=npid", "method.num_negatives=0"], "'method.num_negatives': must be >= 1"),
    (["method.name=npid", "method.bank_momentum=-0.5"], "'method.bank_momentum': must be in [0, 1]"),
    (["method.name=jigsaw", "views.num_permutations=0"], "'views.num_permutations': must be >= 1"),
    (["method.name=cpc", "backbone.norm=layer", "method.prediction_steps=0"],
     "'method.prediction_steps': must be >= 1"),
    (["method.name=barlow_twins", "method.off_diagonal_weight=-1"], "'method.off_diagonal_weight': must be >= 0"),
    (["method.name=maskfeat", "method.mask_ratio=1.0"], "'method.mask_ratio': must be in (0, 1)"),
    (["method.name=selfie", "method.dropout=1.0"], "'method.dropout': must be in [0, 1)"),
    (["eval.linear_weight_decays=[]"], "'eval.linear_weight_decays': must be a non-empty list"),
    (["eval.linear_weight_decays=[-0.1]"], "'eval.linear_weight_decays[0]': must be >= 0"),
    (["eval.knn_k=0"], "'eval.knn_k': must be >= 1"),
    (["eval.knn_temperature=0"], "'eval.knn_temperature': must be > 0"),
    (["eval.knn_grid_k=[]"], "'eval.knn_grid_k': must be a non-empty list"),
    (["eval.batch_size=0"], "'eval.batch_size': must be >= 1"),
    (["eval.fewshot_ways=1"], "'eval.fewshot_ways': must be >= 2"),
    (["eval.fewshot_shots=[0]"], "'eval.fewshot_shots[0]': must be >= 1"),
    (["eval.network=ema"], "'eval.network'"),
    (["bogus.key=1"], "unknown config key 'bogus'"),
    (["train.batch_size"], "override 'train.batch_size' must look like section.key=value"),
    (["optim.lr=[0.1"], "override 'optim.lr=[0.1': cannot parse the value"),
]

COMMANDS = [  # (argv with {placeholders}, what the one line must say)
    (["pretrain", "--run-dir", "{root}/new", "--epochs", "0"], "argument --epochs: must be >= 1, got 0"),
    (["pretrain", "--run-dir", "{root}/new", "--batch-size", "0"], "argument --batch-size: must be >= 1"),
    (["pretrain", "--run-dir", "{root}/new", "--minutes", "-1"], "argument --minutes: must be > 0"),
    (["pretrain", "--run-dir", "{root}/new", "--epochs", "many"], "argument --epochs: expected int, got 'many'"),
    (["pretrain", "-c", "no_such_preset", "--run-dir", "{root}/new"], "no_such_preset"),
    (["pretrain", "-c", "{files}/list.yaml", "--run-dir", "{root}/new"], "list.yaml must hold a mapping"),
    (["pretrain", "-c", "{files}/broken.yaml", "--run-dir", "{root}/new"],
     "broken.yaml is not valid YAML: expected ',' or '}}', but got '<stream end>' at line 2, column 1"),
    (["pretrain", "-c", "{files}/binary.yaml", "--run-dir", "{root}/new"], "binary.yaml is not UTF-8 text"),
    (["pretrain", "--run-dir", "{root}/new", "--allow-change", "train.epochs"], "--allow-change goes with --resume"),
    (["pretrain", "--run-dir", "{run}", "--set", "data.root={fm}"], "already holds a run"),
    (["pretrain", "--run-dir", "{run}", "--resume", "--set", "train.batch_size=8"],
     "train.batch_size: then 16, now 8"),
    (["pretrain", "--run-dir", "{run}", "--resume", "--allow-change", "train.epoch"], "no such setting"),
    (["pretrain", "--run-dir", "{files}/a-file", "--set", "data.root={fm}"],
     "cannot write to run directory {files}/a-file: Not a directory"),
    (["eval", "knn", "{run}", "-k", "0"], "argument -k/--k: must be >= 1, got 0"),
    (["eval", "knn", "{run}", "-k", "5,0"], "must be >= 1, got 0 (in '5,0')"),
    (["eval", "knn", "{run}", "-T", "0"], "argument -T/--temperature: must be > 0"),
    (["eval", "knn", "{run}", "--set", "eval.knn_k=0"], "'eval.knn_k': must be >= 1"),
    (["eval", "knn", "{files}/random.pt"], "random.pt is not a readable checkpoint"),
    (["eval", "knn", "{files}/randzip.pt"], "randzip.pt is not a readable checkpoint"),
    (["eval", "knn", "{files}/evil.pt"], "evil.pt is not a weights-only checkpoint"),
    (["eval", "knn", "{files}/truncated.pt"], "truncated.pt is not a readable checkpoint"),
    (["eval", "knn", "{files}/nonfinite.pt"], "nonfinite.pt holds non-finite values (first: stages.conv1.0.weight)"),
    (["eval", "knn", "{root}/missing.pt"], "checkpoint {root}/missing.pt does not exist"),
    (["eval", "knn", "{files}/empty"], "checkpoint {files}/empty/checkpoints/last.pt does not exist"),
    (["eval", "fewshot", "{run}", "--ways", "1"], "argument --ways: must be >= 2"),
    (["eval", "fewshot", "{run}", "--shots", "0"], "argument --shots: must be >= 1"),
    (["eval", "fewshot", "{run}", "--episodes", "0"], "argument --episodes: must be >= 1"),
    (["eval", "linear", "{run}", "--set", "eval.linear_weight_decays=[]"], "must be a non-empty list"),
    (["eval", "knn"], "give a checkpoint"),
    (["eval", "layers", "{run}", "--dim", "0"], "argument --dim: must be >= 1"),
    (["export", "{files}/random.pt", "--out", "{root}/x.safetensors", "--quiet"],
     "random.pt is not a readable checkpoint"),
    (["export", "{files}/nonfinite.pt", "--out", "{root}/x.safetensors", "--quiet"],
     "nonfinite.pt holds non-finite values (first: stages.conv1.0.weight)"),
    (["embed", "{run}", "{root}/no-such-folder"], "no-such-folder is neither a folder of images nor a dataset name"),
    (["embed", "{run}", "{img}", "--batch-size", "0"], "argument --batch-size: must be >= 1"),
    (["embed", "{files}/evil.pt", "{img}"], "evil.pt is not a weights-only checkpoint"),
    (["search", "{index}", "{files}/nan.npy"], "the query holds non-finite values"),
    (["search", "{index}", "{files}/vector.npz"], "vector.npz is a numpy archive"),
    (["search", "{index}", "{files}/matrix.npy"], "matrix.npy holds an array of shape (2, 3)"),
    (["search", "{files}/vector.npz", "{files}/nan.npy"], "vector.npz is not an index"),
    (["search", "{index}", "{img}/cat/0.png", "-k", "0"], "argument -k: must be >= 1"),
    (["search", "{index}", "{files}/notes.txt"], "cannot decode image {files}/notes.txt (cannot identify image file);"),
    (["search", "{index}", "{root}/missing.png"], "image {root}/missing.png does not exist"),
    (["data", "cache", "fashion_mnist", "--root", "{fm}", "--image-size", "0"], "argument --image-size: must be >= 1"),
    (["supervised", "--lr", "-1"], "argument --lr: must be > 0"),
    (["supervised", "--labels", "0"], "argument --labels: must be in (0, 1]"),
    (["supervised", "--labels", "1.5"], "argument --labels: must be in (0, 1]"),
    (["supervised", "--epochs", "0"], "argument --epochs: must be >= 1"),
    (["supervised", "--label-noise", "2"], "argument --label-noise: must be in [0, 1]"),
    (["distill", "{run}", "--temperature", "0"], "argument --temperature: must be > 0"),
    (["cluster", "{run}", "--clusters", "0"], "argument --clusters: must be >= 1"),
    (["continual", "{run}", "--classes-per-task", "0"], "argument --classes-per-task: must be >= 1"),
    (["semisup", "{run}", "--labels", "0"], "argument --labels: must be in (0, 1]"),
    (["semisup", "{run}", "--eval-ema", "2"], "argument --eval-ema: must be in [0, 1]"),
    (["runs", "--status", "lost"], "argument --status"),
]

DATA_FILES = [  # (--set values for pretrain on a file of the user's, what the one line must say)
    (["data.name=tensors", "data.root={files}/huge_label.pt"], "label 1000000000 would make 1,000,000,001 classes"),
    (["data.name=tensors", "data.root={files}/float_images.pt"], "images must be uint8"),
    (["data.name=tensors", "data.root={files}/no_images.pt"], "has no 'images' entry"),
    (["data.name=tensors", "data.root={files}/random.pt"], "random.pt is not a readable tensor file"),
    (["data.name=tensors", "data.root={files}/evil.pt"], "evil.pt is not a weights-only tensor file"),
    (["data.name=imagefolder", "data.root={files}/empty"], "{files}/empty holds no images and no class folders"),
    (["data.name=webdataset", "data.root={files}/not-a-tar"],
     "cannot read shard {files}/not-a-tar/train-000000.tar (truncated header); it is damaged or not a tar file"),
    (["data.name=filelist", "data.root={files}/badlist"],
     "{files}/badlist/train.txt lists {files}/badlist/missing.png, which does not exist"),
    (["data.name=fashion_mnist", "data.root={files}/badidx"],
     "cannot read {files}/badidx/train-images-idx3-ubyte.gz: the file is corrupt or truncated"),
]

ROWS = ([pytest.param(pretrain(*sets), said, id="set:" + " ".join(sets)) for sets, said in CONFIG_VALUES]
        + [pytest.param(argv, said, id=" ".join(argv)) for argv, said in COMMANDS]
        + [pytest.param(pretrain(*sets), said, id="data:" + " ".join(sets)) for sets, said in DATA_FILES])


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file's size and time, but the lock's (taken and given back by a refused writer: not the run's content)."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != ".selfsup.lock"}


@pytest.mark.parametrize("argv, said", ROWS)
def test_a_bad_input_is_one_line_exit_2_and_changes_nothing(world, argv, said, capsys):
    places = {key: str(value) for key, value in world.items()}
    argv = [arg.format(**places) for arg in argv]
    said = said.format(**places)
    before = snapshot(world["run"])
    status = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert len(lines) == 1, err
    assert said in lines[0], err
    assert "Traceback" not in err and "weights_only=False" not in err
    assert not (world["root"] / "PWNED").exists()  # nothing pickled ran
    assert snapshot(world["run"]) == before  # the run directory it named is as it was
    assert not (world["root"] / "new" / "checkpoints" / "last.pt").exists()
