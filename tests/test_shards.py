"""WebDataset shards: written from an image folder, read back as that folder reads, trained on."""
import io
import json
import tarfile

import pytest
import torch

from conftest import write_image_folder
from selfsup.cli import main
from selfsup.data import load_dataset
from selfsup.data.shards import samples, write_shards
from selfsup.errors import SelfsupError


def test_shards_hold_the_original_bytes_and_read_back_like_the_folder(tmp_path, capsys):
    folder = write_image_folder(tmp_path / "photos", per_class=5, size=40)
    assert main(["data", "shard", str(folder), str(tmp_path / "shards"), "--shard-size", "4", "--quiet"]) == 0
    assert "wrote 10 train images" in capsys.readouterr().out
    shards = sorted((tmp_path / "shards").glob("train-*.tar"))
    assert [p.name for p in shards] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert json.loads((tmp_path / "shards" / "classes.json").read_text()) == ["cat", "dog"]
    first = list(samples(shards[0]))
    assert [(key, label) for key, _, _, label in first] == [(f"{i:09d}", 0) for i in range(4)]
    assert first[0][1] == (folder / "cat" / "0.png").read_bytes()  # not re-encoded: the full image
    from_shards = load_dataset("webdataset", "train", tmp_path / "shards", image_size=24, quiet=True)
    from_folder = load_dataset("imagefolder", "train", folder, image_size=24, quiet=True)
    assert torch.equal(from_shards.images, from_folder.images) and torch.equal(from_shards.targets, from_folder.targets)
    assert from_shards.classes == ["cat", "dog"]
    with pytest.raises(SelfsupError, match="already holds shards"):
        write_shards(folder, tmp_path / "shards")
    with pytest.raises(SelfsupError, match=r"no shards of split 'test' .*it has splits train"):
        load_dataset("webdataset", "test", tmp_path / "shards", quiet=True)


def test_a_sample_that_does_not_decode_is_named_or_skipped(tmp_path):
    shard = tmp_path / "train-000000.tar"
    with tarfile.open(shard, "w") as archive:
        for name, data in (("a.png", (write_image_folder(tmp_path / "f", 1) / "cat" / "0.png").read_bytes()),
                           ("a.cls", b"0"), ("b.jpg", b"not an image"), ("b.cls", b"1")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with pytest.raises(SelfsupError, match="cannot decode sample 'b' of .*train-000000.tar.*data.skip_bad=true"):
        load_dataset("webdataset", "train", tmp_path, quiet=True)
    kept = load_dataset("webdataset", "train", tmp_path, skip_bad=True, quiet=True)
    assert len(kept) == 1 and kept.skipped == ["train-000000.tar:b"] and kept.classes == ["0"]
    (tmp_path / "classes.json").write_text('["cat"]')
    (tmp_path / "f" / "cat" / "0.png").rename(tmp_path / "f" / "cat" / "1.png")
    with tarfile.open(tmp_path / "train-000001.tar", "w") as archive:
        for name, data in (("c.png", (tmp_path / "f" / "cat" / "1.png").read_bytes()), ("c.cls", b"7")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with pytest.raises(SelfsupError, match="label [17] is out of range for 1 classes"):
        load_dataset("webdataset", "train", tmp_path, skip_bad=True, quiet=True)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train-000000.tar").write_bytes(b"x" * 100)
    with pytest.raises(SelfsupError, match="cannot read shard .* damaged or not a tar file"):
        load_dataset("webdataset", "train", tmp_path / "bad", quiet=True)


def test_pretraining_on_shards_end_to_end(tmp_path):
    folder = write_image_folder(tmp_path / "photos", per_class=16, size=24)
    assert main(["data", "shard", str(folder), str(tmp_path / "shards"), "--quiet"]) == 0
    run = tmp_path / "run"
    sets = ["backbone.name=toy", "backbone.width=8", "data.image_size=16", "train.batch_size=8", "train.epochs=1",
            "train.knn_every=0", "train.online_probe=false"]
    assert main(["pretrain", "--data", "webdataset", "--data-root", str(tmp_path / "shards"), "--run-dir", str(run),
                 "--quiet"] + [arg for item in sets for arg in ("--set", item)]) == 0
    assert json.loads((run / "meta.json").read_text())["data"]["dataset"] == "webdataset"


def test_a_set_too_large_to_decode_into_memory_is_refused_before_decoding(tmp_path, monkeypatch):
    from selfsup.data import formats

    folder = write_image_folder(tmp_path / "photos", per_class=4, size=20)
    assert main(["data", "shard", str(folder), str(tmp_path / "shards"), "--quiet"]) == 0
    monkeypatch.setattr(formats, "available_memory", lambda: 2 * 8 * 3 * 64 * 64 - 1)  # just short of it
    decoded = []
    monkeypatch.setattr(formats, "decode_image", lambda *a, **k: decoded.append(1))
    for name, root in (("imagefolder", folder), ("webdataset", tmp_path / "shards")):
        with pytest.raises(SelfsupError, match=r"8 images decoded at 64 px take 96.0 KiB, twice that.*192.0 KiB.*data.source=stream.*data.source=cache.*lower data.image_size"):
            load_dataset(name, "train", root, image_size=64, quiet=True)
    assert not decoded
