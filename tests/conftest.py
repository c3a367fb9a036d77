"""Shared fixtures: tiny datasets written in each real on-disk format, tiny run settings."""
from __future__ import annotations

import atexit
import gzip
import os
import pickle
import shutil
import socket
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# Tests run on the CPU with the threads they are given; keep runs reproducible and quiet.
os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU even where a GPU is visible: the same numbers everywhere
# Dataset caches and the memory-layout memo of the suite's runs go to a folder of its own, not the user's ~/.cache.
os.environ["SELFSUP_CACHE"] = tempfile.mkdtemp(prefix="selfsup-test-cache-")
atexit.register(shutil.rmtree, os.environ["SELFSUP_CACHE"], True)


def synthetic_images(count: int, size: int = 16, channels: int = 1, classes: int = 4, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (count, size, size[, channels]) whose class is a bright band's position, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % classes
    images = rng.integers(0, 60, size=(count, size, size, channels), dtype=np.uint8)
    band = max(1, size // classes)
    for i, label in enumerate(labels):
        images[i, label * band:(label + 1) * band, :, :] = 200 + rng.integers(0, 55)
    images = images[..., 0] if channels == 1 else images
    return images, labels.astype(np.uint8)


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_mnist_folder(root: Path, train: int = 80, test: int = 32, size: int = 16, gz: bool = True,
                       classes: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for prefix, count, seed in (("train", train, 0), ("t10k", test, 1)):
        images, labels = synthetic_images(count, size, 1, classes, seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return root


def write_cifar(root: Path, variant: str = "cifar10", train: int = 20, test: int = 10) -> Path:
    folder = root / ("cifar-10-batches-py" if variant == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    key = b"labels" if variant == "cifar10" else b"fine_labels"

    def batch(count: int, seed: int) -> dict:
        images, labels = synthetic_images(count, 32, 3, 10, seed)
        data = images.transpose(0, 3, 1, 2).reshape(count, -1)  # the real layout: R plane, G plane, B plane
        return {b"batch_label": b"test batch", key: labels.tolist(), b"data": data,
                b"filenames": [f"img{i}.png".encode() for i in range(count)]}

    names = [f"data_batch_{i}" for i in range(1, 6)] if variant == "cifar10" else ["train"]
    for i, name in enumerate(names):
        with open(folder / name, "wb") as handle:
            pickle.dump(batch(train // len(names), i), handle, protocol=2)
    with open(folder / ("test_batch" if variant == "cifar10" else "test"), "wb") as handle:
        pickle.dump(batch(test, 99), handle, protocol=2)
    return root


def write_stl10(root: Path, train: int = 10, test: int = 6, unlabeled: int = 8) -> Path:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("test", test), ("unlabeled", unlabeled)):
        images, labels = synthetic_images(count, 96, 3, 10, len(split))
        # Column-major per image, as the real files: (N, 3, W, H).
        images.transpose(0, 3, 2, 1).astype(np.uint8).tofile(folder / f"{split}_X.bin")
        if split != "unlabeled":
            (labels + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    return root


def write_image_folder(root: Path, per_class: int = 3, classes: tuple[str, ...] = ("cat", "dog"),
                       size: int = 20) -> Path:
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        images, _ = synthetic_images(per_class, size, 3, len(classes), seed=c)
        for i, image in enumerate(images):
            suffix = ".png" if i % 2 == 0 else ".jpg"
            Image.fromarray(image).save(root / name / f"{i}{suffix}")
    return root


def write_photos(root: Path, count: int = 24, classes: tuple[str, ...] = ("a", "b")) -> Path:
    """``count`` JPEG and PNG images per class of mixed sizes (40-90 px, not square)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            width, height = 40 + (7 * i) % 50, 40 + (11 * i) % 40
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    """A Fashion-MNIST-format folder (idx .gz) with 80 train / 32 test 16 px images of 4 classes
    (64 to train on once the kNN monitor of :func:`tiny_overrides` holds 16 out)."""
    return write_mnist_folder(tmp_path / "fmnist")


@pytest.fixture
def pretrained_run(mnist_root: Path, tmp_path: Path) -> Path:
    """A finished one-epoch tiny SimCLR run (toy backbone, width 8), for the commands that start
    from a checkpoint (fine-tuning, ClusterFit)."""
    from selfsup.cli import main

    run = tmp_path / "simclr"
    sets = [arg for item in tiny_overrides(mnist_root, train__epochs=1) for arg in ("--set", item)]
    assert main(["pretrain", "--run-dir", str(run), "--quiet"] + sets) == 0
    return run


def tiny_overrides(root: Path, **extra: object) -> list[str]:
    """--set overrides for a run of a few seconds: toy backbone, 16 px, batch 16."""
    settings = {
        "data.name": "fashion_mnist", "data.root": str(root), "backbone.name": "toy", "backbone.width": 8,
        "method.proj_hidden_dim": 32, "method.proj_dim": 16, "train.batch_size": 16, "train.epochs": 2,
        "train.knn_every": 1, "train.knn_bank_size": 64, "train.knn_test_size": 16, "train.log_every": 1,
        "optim.warmup_epochs": 0.5, "eval.linear_max_iter": 30, "eval.linear_weight_decays": "[0.0, 0.001]",
        "views.augment.crop_scale": "[0.5, 1.0]",
        # A fixed layout: on fp32 CPUs the default times both layouts, and timings differ between runs.
        "train.channels_last": "false",
    }
    settings.update({k.replace("__", "."): v for k, v in extra.items()})
    if settings.get("method.name", "simclr") != "simclr":  # the projection sizes above are SimCLR's
        settings = {k: v for k, v in settings.items() if not k.startswith("method.proj_")}
    from selfsup.arguments import signature_defaults
    from selfsup.methods import get_method

    if "augment" not in signature_defaults(get_method(settings.get("method.name", "simclr")).views_class):
        settings.pop("views.augment.crop_scale")  # e.g. multi-task: views are configured per task
    return [f"{k}={v}" for k, v in settings.items()]


def crash_then_resume(config, run_dir: Path, monkeypatch, crash_step: int) -> int:  # noqa: ANN001
    """Train ``config`` into ``run_dir`` until a simulated crash at ``crash_step``, then resume it
    to the end. Returns the step of the checkpoint the resumed run started from."""
    from selfsup.engine import Engine, checkpoint
    from selfsup.recipes.pretrain import pretrain

    original = Engine.train_step

    def crash(self, images, targets, index):  # noqa: ANN001, ANN202
        if self.step == crash_step:
            raise RuntimeError("simulated crash")
        return original(self, images, targets, index)

    monkeypatch.setattr(Engine, "train_step", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(config, run_dir, quiet=True)
    resumed_from = checkpoint.load(run_dir)["step"]
    monkeypatch.setattr(Engine, "train_step", original)
    pretrain(config, run_dir, resume=True, quiet=True)
    return resumed_from


@pytest.fixture
def fixed_clock(monkeypatch):  # noqa: ANN001, ANN201
    """Time stands still and every training step 'takes' 0.25 s: runs sized to a time budget get
    the same number of steps on any machine, however fast."""
    import importlib

    from selfsup.engine import Engine

    for module in ("selfsup.recipes.pretrain", "selfsup.demo"):
        monkeypatch.setattr(importlib.import_module(module), "clock", lambda: 1000.0)
    monkeypatch.setattr(Engine, "time_steps", lambda self, count, warmup=1: 0.25)
    return 0.25


def tiny_config(root: Path, **extra: object):  # noqa: ANN201
    from selfsup.config import apply_overrides, resolve

    return resolve(apply_overrides({}, tiny_overrides(root, **extra)))


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


requires_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist; .ci/run does it)")


def free_port() -> int:
    """A TCP port nobody listens on, for a gloo rendezvous on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_cli_sets(root: Path) -> list[str]:
    """``--set`` arguments for a command that builds a network from scratch: toy backbone, the tiny data."""
    return [arg for item in ("data.name=fashion_mnist", f"data.root={root}", "backbone.name=toy", "backbone.width=8")
            for arg in ("--set", item)]


def killed_then_finished(command: list[str], monkeypatch, run_suffix: str, step: int) -> list[str]:  # noqa: ANN001
    """Run the CLI ``command`` until a Ctrl-C at ``step`` of the run directory ending in ``run_suffix``
    (exit status 130), then the same command to the end; returns the run directories that the
    second call trained in (one entry per step)."""
    from selfsup.cli import main
    from selfsup.engine import Engine

    original, trained = Engine.train_step, []

    def dies(self, images, targets, index):  # noqa: ANN001, ANN202
        if str(self.run_dir).endswith(run_suffix) and self.step == step:
            raise KeyboardInterrupt
        return original(self, images, targets, index)

    def records(self, images, targets, index):  # noqa: ANN001, ANN202
        trained.append(str(self.run_dir))
        return original(self, images, targets, index)

    monkeypatch.setattr(Engine, "train_step", dies)
    assert main(command) == 130
    monkeypatch.setattr(Engine, "train_step", records)
    assert main(command) == 0
    monkeypatch.setattr(Engine, "train_step", original)
    return trained


CHROMIUM = Path("/usr/bin/chromium")
requires_chromium = pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian's chromium is not installed "
                                                                      "(apt-get install chromium; .ci/run does)")


def open_in_browser(page_path: Path, screenshot: Path) -> dict:
    """Load ``page_path`` from disk in headless Chromium (Playwright): the images as the browser
    decoded them, console and page errors, every URL requested, the links' resolved targets, and a
    full-page screenshot."""
    from playwright.sync_api import sync_playwright

    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]
    errors, requests = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=flags)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, "
                                   "width: i.naturalWidth, height: i.naturalHeight}))")
            links = page.evaluate("Array.from(document.links).map(a => a.href)")
            title = page.title()
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"images": images, "errors": errors, "requests": requests, "title": title, "links": links}


def wait_until_ready(child, ready: Path) -> None:  # noqa: ANN001 - a subprocess.Popen
    """Wait for a child process to create ``ready`` (it says it has reached the point a test acts at), or
    to end. A bound on the number of polls, not a timing: the child normally gets there in seconds."""
    import subprocess

    for _ in range(6000):
        if ready.exists() or child.poll() is not None:
            return
        try:
            child.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            pass


def children_in_process(monkeypatch, benchmark) -> None:  # noqa: ANN001 - a benchmarks/ module
    """Run a benchmark's ``child`` commands (``selfsup COMMAND``, or another benchmark script's ``main``)
    inside the test's process: the same code without a Python and torch start per row. ``child`` itself
    (the process, its wall time and peak RSS) is tested on its own in test_ladder.py."""
    import importlib
    import resource
    import time

    from selfsup.cli import main as selfsup_main

    def in_process(command: list[str], program: tuple[str, ...] = ()) -> tuple[float, int]:
        started = time.perf_counter()
        entry = importlib.import_module(Path(program[1]).stem).main if len(program) == 2 else selfsup_main
        if entry(list(command)) not in (0, None):
            raise SystemExit(f"failed: {' '.join(command)}")
        return round((time.perf_counter() - started) / 60, 2), round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

    monkeypatch.setattr(benchmark, "child", in_process)
