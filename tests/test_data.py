import gzip
import hashlib
import pickle
import tarfile

import numpy as np
import pytest
import torch

from conftest import (synthetic_images, write_cifar, write_idx, write_image_folder, write_mnist_folder,
                      write_stl10)
from selfsup.data import BatchLoader, ImageDataset, describe, load_dataset
from selfsup.data import catalog
from selfsup.errors import SelfsupError


# ---------------------------------------------------------------- formats

@pytest.mark.parametrize("gz", [True, False])
def test_idx_raw_and_gz(tmp_path, gz):
    root = write_mnist_folder(tmp_path, train=12, test=8, size=10, gz=gz)
    train = load_dataset("fashion_mnist", "train", root)
    test = load_dataset("mnist", "test", root)
    images, labels = synthetic_images(12, 10, 1, 4, seed=0)
    assert train.images.shape == (12, 1, 10, 10) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[:, 0], torch.from_numpy(images))
    assert train.targets.tolist() == labels.tolist()
    assert len(test) == 8 and train.classes[0] == "T-shirt/top"


@pytest.mark.parametrize("variant, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_pickles(tmp_path, variant, classes):
    root = write_cifar(tmp_path, variant, train=20, test=10)
    train = load_dataset(variant, "train", root)
    assert train.images.shape == (20, 3, 32, 32)
    first_file = 20 // (5 if variant == "cifar10" else 1)  # the writer's images of its first file
    images, labels = synthetic_images(first_file, 32, 3, 10, seed=0)
    assert torch.equal(train.images[:first_file], torch.from_numpy(images).permute(0, 3, 1, 2))
    assert train.targets[:first_file].tolist() == labels.tolist()
    assert len(load_dataset(variant, "test", root)) == 10 and len(train.classes) == classes


def test_cifar_pickle_cannot_run_code(tmp_path):
    root = write_cifar(tmp_path)

    class Exploit:
        def __reduce__(self):
            return (print, ("owned",))

    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump({b"data": Exploit(), b"labels": []}, handle)
    with pytest.raises(SelfsupError, match="test_batch is not a CIFAR python pickle.*refusing to load builtins.print"):
        load_dataset("cifar10", "test", root)


def test_stl10_binaries_are_column_major_and_labels_shift(tmp_path):
    root = write_stl10(tmp_path, train=4, test=3, unlabeled=5)
    train = load_dataset("stl10", "train", root)
    images, labels = synthetic_images(4, 96, 3, 10, seed=len("train"))
    assert torch.equal(train.images, torch.from_numpy(images).permute(0, 3, 1, 2))
    assert train.targets.tolist() == labels.tolist()
    both = load_dataset("stl10", "train+unlabeled", root)
    assert len(both) == 9 and (both.targets == -1).sum() == 5
    with pytest.raises(SelfsupError, match="no split 'val'"):
        load_dataset("stl10", "val", root)


def test_image_folder_decodes_png_and_jpg_to_a_fixed_size(tmp_path):
    root = write_image_folder(tmp_path / "pets", per_class=3)
    data = load_dataset("imagefolder", "train", root, image_size=12, quiet=True)
    assert data.images.shape == (6, 3, 12, 12) and data.classes == ["cat", "dog"]
    assert data.targets.tolist() == [0, 0, 0, 1, 1, 1]


def test_image_folder_split_subfolders(tmp_path):
    write_image_folder(tmp_path / "root" / "train", per_class=2)
    write_image_folder(tmp_path / "root" / "test", per_class=1)
    assert len(load_dataset("imagefolder", "test", tmp_path / "root", image_size=8, quiet=True)) == 2


def test_tensor_files_accept_hwc_chw_and_hw(tmp_path):
    images, labels = synthetic_images(6, 8, 3, 2)
    np.savez(tmp_path / "hwc.npz", images=images, targets=labels)
    torch.save({"images": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()}, tmp_path / "chw.pt")
    hwc = load_dataset("tensors", "train", tmp_path / "hwc.npz")
    chw = load_dataset("tensors", "train", tmp_path / "chw.pt")
    assert torch.equal(hwc.images, chw.images) and hwc.images.shape == (6, 3, 8, 8)
    assert hwc.targets.tolist() == labels.tolist() and (chw.targets == -1).all() and not chw.labeled


def test_resize_on_load(tmp_path):
    root = write_mnist_folder(tmp_path, train=4, test=2, size=10)
    assert load_dataset("fashion_mnist", "train", root, image_size=20).images.shape == (4, 1, 20, 20)


# ---------------------------------------------------------------- bad data

def test_truncated_idx_names_the_file(tmp_path):
    root = write_mnist_folder(tmp_path, train=8, test=4, size=8, gz=False)
    path = root / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(SelfsupError, match=f"{path} is truncated or padded: the header declares shape \\(8, 8, 8\\)"):
        load_dataset("fashion_mnist", "train", root)


def test_corrupt_gzip_and_bad_magic_name_the_file(tmp_path):
    root = write_mnist_folder(tmp_path, train=8, test=4, size=8)
    gz_path = root / "train-images-idx3-ubyte.gz"
    gz_path.write_bytes(gz_path.read_bytes()[:30])
    with pytest.raises(SelfsupError, match=f"cannot read {gz_path}.*corrupt or truncated"):
        load_dataset("fashion_mnist", "train", root)
    labels = root / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(labels, "wb") as handle:
        handle.write(b"PNG\x00 this is not idx")
    with pytest.raises(SelfsupError, match=f"{labels} is not an idx file"):
        load_dataset("fashion_mnist", "test", root)


def test_label_count_mismatch_and_out_of_range(tmp_path):
    root = write_mnist_folder(tmp_path, train=8, test=4, size=8)
    write_idx(root / "train-labels-idx1-ubyte", np.zeros(7, dtype=np.uint8))
    with pytest.raises(SelfsupError, match="7 labels for 8 images"):
        load_dataset("fashion_mnist", "train", root)
    write_idx(root / "train-labels-idx1-ubyte", np.full(8, 12, dtype=np.uint8))
    with pytest.raises(SelfsupError, match="label 12 is out of range for 10 classes"):
        load_dataset("fashion_mnist", "train", root)


def test_corrupt_image_names_the_file_or_is_skipped_and_counted(tmp_path):
    root = write_image_folder(tmp_path / "pets", per_class=3)
    broken = root / "dog" / "1.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    with pytest.raises(SelfsupError, match=f"cannot decode image {broken}"):
        load_dataset("imagefolder", "train", root, image_size=8, quiet=True)
    data = load_dataset("imagefolder", "train", root, image_size=8, skip_bad=True, quiet=True)
    assert len(data) == 5 and data.skipped == [str(broken)]
    assert describe(data)["skipped"] == 1


def test_empty_class_folder_and_missing_folder(tmp_path):
    root = write_image_folder(tmp_path / "pets", per_class=1)
    (root / "empty").mkdir()
    with pytest.raises(SelfsupError, match=f"class folder {root / 'empty'} holds no images"):
        load_dataset("imagefolder", "train", root, quiet=True)
    with pytest.raises(SelfsupError, match="does not exist"):
        load_dataset("imagefolder", "train", tmp_path / "nothing", quiet=True)


def test_wrong_tensor_dtype_and_shape(tmp_path):
    np.savez(tmp_path / "float.npz", images=np.zeros((2, 8, 8), dtype=np.float32))
    with pytest.raises(SelfsupError, match="float.npz: images must be uint8"):
        load_dataset("tensors", "train", tmp_path / "float.npz")
    np.savez(tmp_path / "shape.npz", images=np.zeros((2, 8, 8, 5), dtype=np.uint8))
    with pytest.raises(SelfsupError, match="with C in \\(1, 3\\)"):
        load_dataset("tensors", "train", tmp_path / "shape.npz")


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path))
    monkeypatch.setattr(catalog, "candidate_dirs", lambda spec: [tmp_path / spec.name])
    with pytest.raises(SelfsupError) as err:
        load_dataset("fashion_mnist", "train")
    message = str(err.value)
    assert "fashion_mnist not found" in message and "apt-get install dataset-fashion-mnist" in message
    assert "selfsup data prepare fashion_mnist --download" in message
    with pytest.raises(SelfsupError, match="unknown dataset 'fashoin_mnist' \\(did you mean 'fashion_mnist'\\?\\)"):
        load_dataset("fashoin_mnist")


# ---------------------------------------------------------------- downloads (file:// URLs)

def _spec_with_urls(monkeypatch, name, downloads):
    spec = catalog.DATASETS[name]
    patched = catalog.DatasetSpec(spec.name, spec.description, spec.read, spec.markers, spec.splits, spec.classes,
                                  tuple(downloads), (), (), spec.install_hint)
    monkeypatch.setitem(catalog.DATASETS, name, patched)


def test_download_checks_md5_and_loads(tmp_path, monkeypatch):
    source = write_mnist_folder(tmp_path / "server", train=8, test=4, size=8)
    downloads = []
    for path in sorted(source.iterdir()):
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        downloads.append(catalog.Download(path.as_uri(), path.name, md5))
    _spec_with_urls(monkeypatch, "mnist", downloads)
    target = tmp_path / "mnist"
    data = load_dataset("mnist", "train", target, download=True, quiet=True)
    assert len(data) == 8 and (target / "train-images-idx3-ubyte.gz").is_file()


def test_download_with_wrong_checksum_is_deleted(tmp_path, monkeypatch):
    source = write_mnist_folder(tmp_path / "server", train=8, test=4, size=8)
    path = source / "train-images-idx3-ubyte.gz"
    _spec_with_urls(monkeypatch, "mnist", [catalog.Download(path.as_uri(), path.name, "0" * 32)])
    with pytest.raises(SelfsupError, match="wrong checksum"):
        load_dataset("mnist", "train", tmp_path / "mnist", download=True, quiet=True)
    assert not (tmp_path / "mnist" / path.name).exists()


def test_download_extracts_archives(tmp_path, monkeypatch):
    source = write_cifar(tmp_path / "build")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    _spec_with_urls(monkeypatch, "cifar10", [catalog.Download(archive.as_uri(), archive.name, md5, extract=True)])
    assert len(load_dataset("cifar10", "test", tmp_path / "cifar", download=True, quiet=True)) == 10


def test_unreachable_download_explains_offline_fix(tmp_path, monkeypatch):
    _spec_with_urls(monkeypatch, "mnist", [catalog.Download((tmp_path / "absent.gz").as_uri(), "absent.gz", "0")])
    with pytest.raises(SelfsupError, match="could not download absent.gz.*copy the files into"):
        load_dataset("mnist", "train", tmp_path / "mnist", download=True, quiet=True)


# ---------------------------------------------------------------- dataset and loader

def _dataset(count=40, classes=4):
    images, labels = synthetic_images(count, 8, 1, classes)
    return ImageDataset(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long(),
                        [str(c) for c in range(classes)])


def test_stats_match_numpy():
    data = _dataset()
    mean, std = data.stats()
    pixels = data.images.numpy().astype(np.float64) / 255
    assert mean[0] == pytest.approx(pixels.mean(), abs=1e-4) and std[0] == pytest.approx(pixels.std(), abs=1e-4)


def test_balanced_subset_is_balanced_and_seeded():
    data = _dataset(40, 4)
    subset = data.balanced_subset(12, seed=3)
    assert torch.bincount(subset.targets).tolist() == [3, 3, 3, 3]
    assert torch.equal(subset.images, data.balanced_subset(12, seed=3).images)
    assert not torch.equal(subset.images, data.balanced_subset(12, seed=4).images)


def test_loader_batches_carry_images_targets_and_indices():
    data = _dataset(40)
    loader = BatchLoader(data, 8, device=torch.device("cpu"), on_device=True, seed=0)
    batches = list(loader)
    assert len(batches) == len(loader) == 5
    seen = torch.cat([index for _, _, index in batches])
    assert sorted(seen.tolist()) == list(range(40))
    for images, targets, index in batches:
        assert images.dtype == torch.uint8 and torch.equal(images, data.images[index])
        assert torch.equal(targets, data.targets[index])


def test_loader_order_depends_on_epoch_and_resumes_mid_epoch():
    loader = BatchLoader(_dataset(40), 8, device=torch.device("cpu"), on_device=True, seed=0)
    loader.set_epoch(0)
    first = [i.tolist() for *_, i in loader]
    loader.set_epoch(1)
    assert [i.tolist() for *_, i in loader] != first
    loader.set_epoch(0)
    assert [i.tolist() for *_, i in loader.iterate(start=3)] == first[3:]


def test_loader_shards_disjointly_over_ranks():
    data = _dataset(40)
    shards = [BatchLoader(data, 4, device=torch.device("cpu"), on_device=True, rank=r, world_size=2) for r in (0, 1)]
    indices = [torch.cat([i for *_, i in shard]) for shard in shards]
    assert len(set(indices[0].tolist()) & set(indices[1].tolist())) == 0
    assert len(indices[0]) == len(indices[1]) == 20


def test_dataset_validation():
    with pytest.raises(SelfsupError, match="uint8"):
        ImageDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long), ["a"])
    with pytest.raises(SelfsupError, match="holds no images"):
        ImageDataset(torch.zeros(0, 1, 4, 4, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), ["a"])
