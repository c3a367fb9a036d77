"""Streaming image files (data.source=stream): workers crop each view from the full-resolution image,
deterministically; ranks and workers read disjoint parts; a killed run resumes where it stopped;
bad files stop the run (with what it trained saved) or are skipped and listed. And the memory-mapped
cache (data.source=cache, selfsup data cache)."""
import io
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from conftest import tiny_config, tiny_overrides, wait_until_ready, write_image_folder, write_photos
from selfsup.cli import main
from selfsup.data import CropSpec, FileStore, StreamLoader, load_dataset, read_cache, write_cache
from selfsup.data.shards import write_shards
from selfsup.data.stream import CroppingReader, crop_box
from selfsup.engine import BadData, Precropped, checkpoint
from selfsup.errors import SelfsupError
from selfsup.recipes.pretrain import pretrain
from selfsup.views import AugmentSpec, ImageInfo, MultiCropViews, OneView, TwoViews, TwoViewsAndTransform


def test_crop_boxes_follow_random_resized_crop():
    generator = torch.Generator().manual_seed(0)
    spec = CropSpec(16, (0.2, 0.6), (3 / 4, 4 / 3))
    for _ in range(200):
        left, top, w, h = crop_box(300, 200, spec, generator)
        assert 0 <= left and left + w <= 300 and 0 <= top and top + h <= 200
        assert 0.2 - 0.02 <= w * h / (300 * 200) <= 0.6 + 0.02  # rounding to whole pixels
        assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
    # No box of the asked area fits a strip: the largest centred box of an allowed aspect instead.
    assert crop_box(400, 10, CropSpec(8, (0.9, 1.0)), generator) == (193, 0, 13, 10)


def test_crops_are_taken_from_the_full_resolution_image(tmp_path):
    """A 2 px checkerboard of 480 px: a small crop of the original keeps the pattern, which the 16 px
    image a memory run crops from has averaged away."""
    from PIL import Image

    board = ((np.indices((480, 480)) // 2).sum(0) % 2 * 255).astype(np.uint8)
    (tmp_path / "one").mkdir()
    Image.fromarray(board).convert("RGB").save(tmp_path / "one" / "board.png")
    dataset = load_dataset("imagefolder", "train", tmp_path, image_size=16, source="stream", quiet=True)
    reader = CroppingReader(dataset, [CropSpec(16, (0.001, 0.001), (1.0, 1.0))], seed=0)
    base, crops, boxes, *_ = reader[0]
    assert base.shape == (3, 16, 16) and base.float().std() < 10  # the whole image, averaged to grey
    assert crops[0].shape == (3, 16, 16) and crops[0].float().std() > 60  # about 15 px of the original
    x0, y0, x1, y1 = boxes[0].tolist()
    assert math.isclose((x1 - x0) * 480, 15, abs_tol=1) and math.isclose((y1 - y0) * 480, 15, abs_tol=1)


def _batches(loader, epoch=0, start=0):
    loader.set_epoch(epoch)
    return list(loader.iterate(start))


def test_crops_do_not_depend_on_workers_and_a_resume_continues_the_epoch(tmp_path):
    dataset = load_dataset("imagefolder", "train", write_photos(tmp_path / "p"), image_size=16, source="stream", quiet=True)
    crops = [CropSpec(12), CropSpec(8, (0.05, 0.4))]
    device = torch.device("cpu")
    alone = _batches(StreamLoader(dataset, 8, device, crops, workers=0, seed=3), epoch=1)
    shared = _batches(StreamLoader(dataset, 8, device, crops, workers=2, seed=3), epoch=1)
    resumed = _batches(StreamLoader(dataset, 8, device, crops, workers=2, seed=3), epoch=1, start=4)
    assert len(alone) == 6 and len(resumed) == 2
    for a, b in zip(alone, shared):
        assert isinstance(a[0], Precropped) and [c.shape[-1] for c in a[0].crops] == [12, 8]
        assert torch.equal(a[2], b[2]) and torch.equal(a[1], b[1])
        assert all(torch.equal(x, y) for x, y in zip(a[0].crops + a[0].boxes, b[0].crops + b[0].boxes))
        assert torch.equal(a[0].base, b[0].base)
    for a, b in zip(alone[4:], resumed):
        assert torch.equal(a[2], b[2]) and torch.equal(a[0].crops[1], b[0].crops[1])
    without_base = _batches(StreamLoader(dataset, 8, device, crops, workers=0, seed=3, base=False), epoch=1)
    assert without_base[0][0].base is None and torch.equal(without_base[0][0].crops[0], alone[0][0].crops[0])
    other_epoch = _batches(StreamLoader(dataset, 8, device, crops, workers=0, seed=3), epoch=2)
    assert not torch.equal(alone[0][2], other_epoch[0][2])  # reshuffled
    # The base image is the memory path's image.
    memory = load_dataset("imagefolder", "train", tmp_path / "p", image_size=16, quiet=True)
    index = alone[0][2]
    assert torch.equal(alone[0][0].base, memory.images[index])


def test_ranks_and_workers_read_disjoint_parts_that_cover_the_epoch(tmp_path):
    dataset = load_dataset("imagefolder", "train", write_photos(tmp_path / "p", count=25), image_size=8, source="stream",
                           quiet=True)  # 50 images: 2 ranks x 3 batches of 8, 2 left over
    seen = []
    for rank in (0, 1):
        loader = StreamLoader(dataset, 8, torch.device("cpu"), [], workers=2, seed=0, rank=rank, world_size=2)
        seen.append(torch.cat([index for _, _, index in _batches(loader)]).tolist())
    assert len(seen[0]) == len(seen[1]) == 24 and not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == 48


def test_view_generators_finish_the_crops_workers_took(tmp_path):
    info = ImageInfo(16, 3, (0.5,) * 3, (0.25,) * 3)
    two, multi = TwoViews(info), MultiCropViews(info, num_local=2)
    assert [c.size for c in two.crops()] == [16, 16] and [c.size for c in multi.crops()] == [16, 16, 7, 7]
    assert multi.crops()[2].scale == (0.05, 0.4)
    batch = Precropped(torch.zeros(4, 3, 16, 16, dtype=torch.uint8),
                       [torch.randint(0, 255, (4, 3, s, s), dtype=torch.uint8) for s in (16, 16, 7, 7)],
                       [torch.tensor([[0.0, 0.0, 0.5, 0.5]]).repeat(4, 1)] * 4)
    views = multi(batch)
    assert [v.shape[-1] for v in views] == [16, 16, 7, 7]
    # Nothing random left but the crop, which the workers took: the view is the crop, normalised.
    plain = AugmentSpec(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    one = OneView(info, augment=plain)(Precropped(None, batch.crops[2:3], batch.boxes[2:3]))[0]
    assert torch.allclose(one, (batch.crops[2].float() / 255 - 0.5) / 0.25, atol=1e-5)
    transform = TwoViewsAndTransform(info, augment=TwoViews(info).first.spec)
    boxes = [torch.tensor([[0.0, 0.0, 0.5, 0.5]]).repeat(4, 1), torch.tensor([[0.5, 0.5, 1.0, 1.0]]).repeat(4, 1)]
    out = transform(Precropped(batch.base, batch.crops[:2], boxes))
    assert torch.allclose(out[2][:, :2], torch.tensor([0.5, 0.5]))  # the shift between the workers' boxes
    with pytest.raises(ValueError, match="2 crops were taken for 4 views"):
        multi(Precropped(batch.base, batch.crops[:2], boxes))


def _write_bad(folder: Path, name: str = "a/zz-broken.jpg") -> None:
    (folder / name).write_bytes(b"this is not an image")


def test_a_bad_file_stops_the_run_after_saving_it_or_is_skipped_and_listed(tmp_path):
    folder = write_photos(tmp_path / "p", count=16)
    _write_bad(folder)
    # The broken file sorts last of class a: position 16 of 33. A seed whose first epoch meets it after its
    # first batch, so that there is something to save.
    seed = next(s for s in range(100) if 16 in list(DistributedSampler(range(33), 1, 0, seed=s, drop_last=True))[8:32])
    common = {"data.name": "imagefolder", "data.root": str(folder), "data.image_size": 16, "data.source": "stream",
              "data.workers": 1, "train.epochs": 2, "train.knn_every": 0, "train.online_probe": "false",
              "train.batch_size": 8, "train.seed": seed}
    with pytest.raises(BadData, match=r"cannot decode image .*zz-broken.jpg.*data.skip_bad=true.*"
                                      r"steps trained so far are in .*last.pt"):
        pretrain(tiny_config(Path("/unused"), **common), tmp_path / "stops", quiet=True)
    saved = checkpoint.load(tmp_path / "stops")
    assert 0 < saved["step"] < 8  # what it trained before the bad batch
    summary = pretrain(tiny_config(Path("/unused"), **common, **{"data.skip_bad": "true"}), tmp_path / "skips",
                       quiet=True)
    assert summary["steps"] == 8  # 33 images, 4 batches of 8 an epoch: the bad one replaced, not dropped
    listed = (tmp_path / "skips" / "skipped.txt").read_text().splitlines()
    assert listed and all(line.endswith("zz-broken.jpg") for line in listed)  # once an epoch it is drawn


RECORDS_BATCHES = """
import json, os, sys, time
from pathlib import Path
from selfsup.cli import main
from selfsup.engine import Engine

original = Engine.train_step

def train_step(self, images, targets, index):
    with open(os.environ["SELFSUP_SEEN"], "a") as seen:
        seen.write(json.dumps([self.step, index.tolist()]) + "\\n")
    if self.step == int(os.environ.get("SELFSUP_HANG_AT", "-1")):
        Path(os.environ["SELFSUP_READY"]).touch()  # the test kills this process once it sees this
        time.sleep(600)
    return original(self, images, targets, index)

Engine.train_step = train_step
sys.exit(main(sys.argv[1:]))
"""


def _run(arguments, seen, hang_at=None, ready=None):
    env = {**os.environ, "SELFSUP_SEEN": str(seen)}
    if hang_at is not None:
        env.update(SELFSUP_HANG_AT=str(hang_at), SELFSUP_READY=str(ready))
    return subprocess.Popen([sys.executable, "-c", RECORDS_BATCHES] + arguments, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_killed_stream_run_resumes_mid_epoch_with_the_images_it_had_not_seen(tmp_path):
    folder = write_photos(tmp_path / "p", count=20)  # 40 images, 16 held out of none: 5 batches of 8 an epoch
    sets = {"data.name": "imagefolder", "data.root": str(folder), "data.image_size": 16, "data.source": "stream",
            "data.workers": 2, "train.batch_size": 8, "train.epochs": 2, "train.knn_every": 0,
            "train.online_probe": "false", "train.checkpoint_every_steps": 2}
    arguments = [arg for item in tiny_overrides(Path("/unused"), **sets) for arg in ("--set", item)]
    straight = _run(["pretrain", "--quiet", "--run-dir", str(tmp_path / "straight")] + arguments, tmp_path / "a.jsonl")
    assert straight.wait(timeout=300) == 0
    killed = ["pretrain", "--quiet", "--run-dir", str(tmp_path / "killed")] + arguments
    child = _run(killed, tmp_path / "b.jsonl", hang_at=7, ready=tmp_path / "ready")
    try:
        wait_until_ready(child, tmp_path / "ready")
        child.send_signal(signal.SIGKILL)  # no handler runs: the last step checkpoint is all there is
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        child.kill()
    assert checkpoint.load(tmp_path / "killed")["step"] == 6  # mid-epoch 2 (5 steps an epoch)
    assert _run(killed + ["--resume"], tmp_path / "b.jsonl").wait(timeout=300) == 0

    def steps(path):
        return {step: index for step, index in (json.loads(line) for line in path.read_text().splitlines())}

    assert steps(tmp_path / "a.jsonl") == steps(tmp_path / "b.jsonl")  # steps 6..9 seen again as they were
    straight_weights = checkpoint.load(tmp_path / "straight")["model"]
    resumed_weights = checkpoint.load(tmp_path / "killed")["model"]
    assert all(torch.equal(straight_weights[k], resumed_weights[k]) for k in straight_weights)


def test_shards_stream_by_offset_like_the_sequential_reader(tmp_path):
    folder = write_image_folder(tmp_path / "photos", per_class=5, size=40)
    write_shards(folder, tmp_path / "shards", shard_size=3, quiet=True)
    streamed = load_dataset("webdataset", "train", tmp_path / "shards", image_size=24, source="stream", quiet=True)
    memory = load_dataset("webdataset", "train", tmp_path / "shards", image_size=24, quiet=True)
    assert isinstance(streamed.store, FileStore) and len(streamed) == 10 and streamed.classes == ["cat", "dog"]
    assert torch.equal(streamed.images, memory.images) and torch.equal(streamed.targets, memory.targets)
    assert streamed.store.name_of(4).endswith("train-000001.tar:000000004")
    summary = pretrain(tiny_config(Path("/unused"), **{"data.name": "webdataset", "data.root": str(tmp_path / "shards"),
                                                      "data.image_size": 16, "data.source": "stream",
                                                      "data.workers": 1, "train.batch_size": 4, "train.epochs": 1,
                                                      "train.knn_every": 0, "train.online_probe": "false"}),
                       tmp_path / "run", quiet=True)
    assert summary["steps"] == 2


def test_file_lists_and_unlabelled_folders(tmp_path):
    folder = write_image_folder(tmp_path / "photos", per_class=2, size=20)
    listing = tmp_path / "lists" / "train.txt"
    listing.parent.mkdir()
    listing.write_text(f"# images\n../photos/cat/0.png,cat\n{folder / 'dog' / '1.jpg'}\tdog\n\n../photos/cat/1.jpg,cat\n")
    data = load_dataset("filelist", "train", tmp_path / "lists", image_size=8, quiet=True)
    assert len(data) == 3 and data.classes == ["cat", "dog"] and data.targets.tolist() == [0, 1, 0]
    assert data.in_memory and data.images.shape == (3, 3, 8, 8)
    streamed = load_dataset("filelist", "train", listing, image_size=8, source="stream", quiet=True)
    assert torch.equal(streamed.images, data.images)
    listing.write_text("../photos/cat/0.png,cat\n../photos/dog/0.png\n")
    with pytest.raises(SelfsupError, match="some lines have a class and some do not"):
        load_dataset("filelist", "train", listing, quiet=True)
    listing.write_text("../photos/cat/0.png\n../photos/cat/9.png\n")
    with pytest.raises(SelfsupError, match=r"lists .*cat/9.png, which does not exist"):
        load_dataset("filelist", "train", listing, quiet=True)
    with pytest.raises(SelfsupError, match="has no test.txt or test.csv"):
        load_dataset("filelist", "test", tmp_path / "lists", quiet=True)
    flat = tmp_path / "flat"
    (flat / "deeper").mkdir(parents=True)
    for path in [*(folder / "cat").iterdir()][:1]:
        (flat / path.name).write_bytes(path.read_bytes())
        (flat / "deeper" / path.name).write_bytes(path.read_bytes())
    unlabelled = load_dataset("imagefolder", "train", flat, image_size=8, source="stream", quiet=True)
    assert len(unlabelled) == 2 and unlabelled.classes == [] and unlabelled.targets.tolist() == [-1, -1]


def test_auto_streams_what_would_not_fit_and_says_why(tmp_path, monkeypatch, capsys):
    folder = write_image_folder(tmp_path / "photos", per_class=2, size=20)
    assert load_dataset("imagefolder", "train", folder, image_size=8, source="auto").in_memory
    monkeypatch.setattr("selfsup.data.catalog.available_memory", lambda: 1000)  # 4 images at 8 px: 768 bytes
    assert not load_dataset("imagefolder", "train", folder, image_size=8, source="auto").in_memory
    assert "data: streaming imagefolder (train): 4 images at 8 px take 768 B" in capsys.readouterr().out
    with pytest.raises(SelfsupError, match="data.source=stream reads image files"):
        load_dataset("tensors", "train", tmp_path / "x.npz", source="stream", quiet=True)
    with pytest.raises(SelfsupError, match="data.source must be one of"):
        load_dataset("imagefolder", "train", folder, source="streaming", quiet=True)


def test_a_cache_is_mapped_not_loaded_and_subsets_copy_nothing(tmp_path, capsys):
    folder = write_image_folder(tmp_path / "photos", per_class=6, size=30)
    memory = load_dataset("imagefolder", "train", folder, image_size=12, quiet=True)
    assert main(["data", "cache", str(folder), str(tmp_path / "caches"), "--image-size", "12", "--quiet"]) == 0
    assert "wrote a cache of 12 imagefolder (train) images at 12 px" in capsys.readouterr().out
    cached = load_dataset("imagefolder", "train", folder, image_size=12, source="cache",
                          cache_root=tmp_path / "caches", quiet=True)
    assert cached.mapped and torch.equal(cached.images, memory.images) and torch.equal(cached.targets, memory.targets)
    part = cached.select(torch.tensor([5, 2]))
    assert part.store is cached.store and torch.equal(part.images, memory.images[[5, 2]])
    assert not part.in_ram().mapped and part.in_ram().rows is None
    folder_of_cache = next((tmp_path / "caches").iterdir())
    with pytest.raises(SelfsupError, match="already holds a cache"):
        write_cache(memory, folder_of_cache)
    np.save(folder_of_cache / "targets.npy", np.zeros(3, dtype=np.int64))
    with pytest.raises(SelfsupError, match="inconsistent .* delete it to build it again"):
        read_cache(folder_of_cache)
    # A run with data.source=cache builds the cache it does not find, then trains from the mapping.
    summary = pretrain(tiny_config(Path("/unused"), **{"data.name": "imagefolder", "data.root": str(folder),
                                                      "data.image_size": 12, "data.source": "cache",
                                                      "data.cache_dir": str(tmp_path / "built"), "train.batch_size": 4,
                                                      "train.epochs": 1, "train.knn_every": 0,
                                                      "train.online_probe": "false"}), tmp_path / "run", quiet=True)
    assert summary["steps"] == 3 and len(list((tmp_path / "built").iterdir())) == 1


def test_a_standard_dataset_caches_too(mnist_root, tmp_path, capsys):
    assert main(["data", "cache", "fashion_mnist", str(tmp_path / "caches"), "--root", str(mnist_root),
                 "--split", "test", "--quiet"]) == 0
    assert f"--data-source cache --set data.cache_dir={tmp_path / 'caches'}" in capsys.readouterr().out
    cached = load_dataset("fashion_mnist", "test", mnist_root, source="cache", cache_root=tmp_path / "caches",
                          quiet=True)
    memory = load_dataset("fashion_mnist", "test", mnist_root, quiet=True)
    assert cached.mapped and torch.equal(cached.images, memory.images) and cached.classes == memory.classes
    with pytest.raises(SelfsupError, match="data.source=stream reads image files"):
        load_dataset("fashion_mnist", "test", mnist_root, source="stream", quiet=True)


@pytest.mark.parametrize("method", ["dino", "rotation"])
def test_streamed_runs_with_the_monitors_on(method, tmp_path):
    """The probe and the kNN monitor read the base images (decoded in memory for the bank and queries);
    a method whose views take no crops is given the base images."""
    folder = write_photos(tmp_path / "p", count=20)
    config = tiny_config(Path("/unused"), **{"data.name": "imagefolder", "data.root": str(folder),
                                            "data.image_size": 16, "data.source": "stream", "data.workers": 1,
                                            "train.batch_size": 8, "train.epochs": 1, "train.knn_test_size": 8,
                                            "train.knn_bank_size": 16, "method.name": method})
    summary = pretrain(config, tmp_path / "run", quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epoch = [row for row in rows if row["stream"] == "epoch"][-1]
    assert summary["steps"] == 4 and "knn_top1" in epoch and "probe_top1" in epoch


def test_crop_seeds_differ_for_every_image_epoch_and_any_seed():
    from selfsup.data.stream import crop_seed

    seeds = {crop_seed(seed, epoch, index) for seed in (0, 20240101, 2**31 - 1) for epoch in (0, 1)
             for index in (0, 1, 1_000_003)}
    assert len(seeds) == 18 and all(0 <= s < 2**63 for s in seeds)
    torch.Generator().manual_seed(crop_seed(2**31 - 1, 5, 10**7))  # no overflow


def test_a_test_split_missing_a_class_is_numbered_like_training(tmp_path):
    from selfsup.data import DataConfig, load_splits

    folder = write_image_folder(tmp_path / "photos", per_class=2, size=20)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text(f"{folder}/cat/0.png,10\n{folder}/dog/0.png,2\n{folder}/dog/1.jpg,2\n")
    (lists / "test.txt").write_text(f"{folder}/cat/1.jpg,10\n")
    splits = load_splits(DataConfig(name="filelist", root=str(lists), image_size=8), quiet=True)
    assert splits.train.classes == ["2", "10"] and splits.train.targets.tolist() == [1, 0, 0]
    assert splits.test.classes == ["2", "10"] and splits.test.targets.tolist() == [1]


def test_images_decode_alike_whichever_decoder_reads_them(tmp_path):
    """JPEG and PNG go through torchvision.io, other formats through Pillow; 16-bit PNGs are scaled to
    8 bits, not clipped white."""
    from PIL import Image

    from selfsup.data.formats import open_image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels).save(tmp_path / "a.bmp")
    assert np.array_equal(np.asarray(open_image(tmp_path / "a.png")), pixels)
    assert np.array_equal(np.asarray(open_image(tmp_path / "a.bmp")), pixels)
    deep = (rng.integers(0, 65536, (20, 30))).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    gray = np.asarray(open_image(tmp_path / "deep.png", channels=1)).astype(int)
    assert np.abs(gray - (deep >> 8)).max() <= 1 and 100 < gray.mean() < 155
    Image.fromarray(deep).save(tmp_path / "deep.tif")  # Pillow's path: 16-bit TIFF, scaled too
    tiff = np.asarray(open_image(tmp_path / "deep.tif", channels=1)).astype(int)
    assert np.abs(tiff - (deep >> 8)).max() <= 1
    Image.fromarray(deep.astype(np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(SelfsupError, match="floating-point image"):
        open_image(tmp_path / "float.tif")
    with pytest.raises(OSError):  # torchvision refuses it, then Pillow says why
        open_image(io.BytesIO(b"\x89PNG\r\n\x1a\n broken"))
