"""``selfsup embed`` and ``selfsup search``: the index is the encoder's features of the files,
faiss and torch agree, the query is preprocessed like the index, and bad input is named."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.cli import main
from selfsup.data import load_dataset
from selfsup.explore import Index
from selfsup.recipes.loading import load_encoder
from selfsup.views import EvalView


@pytest.fixture
def image_folder(mnist_root, tmp_path):
    """The 32 tiny test images as PNG files in nested folders, with one corrupt file and a text file."""
    dataset = load_dataset("fashion_mnist", "test", root=mnist_root, quiet=True)
    folder = tmp_path / "photos"
    for row, image in enumerate(dataset.images):
        target = folder / f"class{int(dataset.targets[row])}" / f"img{row:02d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(target)
    (folder / "class0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (folder / "notes.txt").write_text("not an image, not listed")
    return folder, dataset


def _features(run, images):
    encoder, _, meta = load_encoder(run)
    with torch.no_grad():
        return encoder.eval()(EvalView.of(meta.data)(images))


def test_embed_a_folder_skips_the_corrupt_file_and_stores_the_encoders_features(pretrained_run, image_folder,
                                                                                 tmp_path, capsys, monkeypatch):
    folder, dataset = image_folder
    index = tmp_path / "index"
    monkeypatch.chdir(tmp_path)  # a relative folder: the index still holds paths that work from anywhere
    assert main(["embed", str(pretrained_run), "photos", "--out", str(index), "--batch-size", "5",
                 "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "(32 x " in captured.out
    meta = json.loads((index / "index.json").read_text())
    assert meta["count"] == 32 and [s["path"] for s in meta["skipped"]] == [str(folder / "class0" / "broken.png")]
    assert all(p.endswith(".png") for p in meta["paths"])
    rows = [int(p[-6:-4]) for p in meta["paths"]]  # img07.png -> the 8th test image
    expected = _features(pretrained_run, dataset.images[rows])
    assert np.allclose(np.load(index / "embeddings.npy"), expected.numpy(), atol=1e-5)

    assert main(["embed", str(pretrained_run), str(folder), "--out", str(tmp_path / "strict"), "--strict",
                 "--quiet"]) == 2
    assert "broken.png" in capsys.readouterr().err


def test_search_finds_the_query_image_itself_at_any_size_and_writes_a_contact_sheet(pretrained_run, image_folder,
                                                                                     tmp_path, capsys):
    folder, _ = image_folder
    index = tmp_path / "index"
    assert main(["embed", str(pretrained_run), str(folder), "--out", str(index), "--quiet"]) == 0
    capsys.readouterr()
    original = folder / "class2" / sorted(p.name for p in (folder / "class2").iterdir())[0]
    bigger = tmp_path / "query.png"
    Image.open(original).resize((32, 32), Image.Resampling.NEAREST).save(bigger)  # twice the index's size
    for query in (original, bigger):
        sheet = tmp_path / f"sheet-{query.stem}.png"
        assert main(["search", str(index), str(query), "-k", "4", "--sheet", str(sheet)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split()[0] == "1" and lines[0].split()[2] == str(original)
        assert float(lines[0].split()[1]) > 0.99 and len([line for line in lines if line.strip()[0].isdigit()]) == 4
        assert Image.open(sheet).size[0] > 300
    assert (index / f"search-{original.stem}.png").exists() is False  # --sheet chose the place


def test_faiss_and_exact_torch_search_agree(tmp_path):
    pytest.importorskip("faiss")
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(200, 16, generator=generator).numpy()
    index = Index(tmp_path, {"dim": 16, "checkpoint": "x"}, embeddings)
    queries = torch.randn(7, 16, generator=generator).numpy()
    faiss_sims, faiss_rows, used = index.search(queries, 10, "faiss")
    torch_sims, torch_rows, exact = index.search(queries, 10, "torch")
    assert (used, exact) == ("faiss", "torch")
    assert (faiss_rows == torch_rows).all()
    assert np.allclose(faiss_sims, torch_sims, atol=1e-5)
    assert index.search(queries, 500, "torch")[1].shape == (7, 200)  # k beyond the index: all of it


def test_both_backends_break_ties_alike(tmp_path):
    pytest.importorskip("faiss")
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.randn(40, 8, generator=generator)
    embeddings[[3, 9, 17, 22, 30, 35]] = embeddings[0].clone()  # seven copies of one image
    index = Index(tmp_path, {"dim": 8, "checkpoint": "x"}, embeddings.numpy())
    for k in (3, 7, 9):
        by_faiss, by_torch = index.search(embeddings[:1].numpy(), k, "faiss"), index.search(
            embeddings[:1].numpy(), k, "torch")
        assert by_faiss[1].tolist() == by_torch[1].tolist()
        assert by_torch[1][0, :min(k, 7)].tolist() == [0, 3, 9, 17, 22, 30, 35][:k]  # ties in row order


def test_embed_a_dataset_split_and_search_it(pretrained_run, mnist_root, image_folder, tmp_path, capsys):
    folder, dataset = image_folder
    index = pretrained_run / "embeddings" / "fashion_mnist"  # the default place: inside the run
    assert main(["embed", str(pretrained_run / "checkpoints" / "last.pt"), "fashion_mnist", "--root", str(mnist_root),
                 "--split", "test", "--quiet"]) == 0
    meta = json.loads((index / "index.json").read_text())
    assert meta["count"] == 32 and meta["paths"][3] == "fashion_mnist:test:3"
    assert np.allclose(np.load(index / "embeddings.npy"), _features(pretrained_run, dataset.images).numpy(),
                       atol=1e-5)
    capsys.readouterr()
    query = folder / f"class{int(dataset.targets[5])}" / "img05.png"
    assert main(["search", str(index), str(query), "-k", "3", "--backend", "torch"]) == 0
    out = capsys.readouterr().out
    assert "fashion_mnist:test:5" in out.splitlines()[-4] and (index / "search-img05.png").is_file()


def test_search_refuses_an_index_of_another_checkpoint_a_wrong_vector_and_a_damaged_index(
        pretrained_run, image_folder, tmp_path, capsys):
    folder, _ = image_folder
    index = tmp_path / "index"
    assert main(["embed", str(pretrained_run), str(folder), "--out", str(index), "--quiet"]) == 0
    query = str(next(folder.glob("class0/img*.png")))
    state = torch.load(pretrained_run / "checkpoints" / "last.pt", weights_only=True)
    key = next(k for k in state["model"] if k.startswith("backbone.") and k.endswith("weight"))
    state["model"][key] = state["model"][key] + 0.01  # another training step's weights
    torch.save(state, tmp_path / "other.pt")
    capsys.readouterr()
    assert main(["search", str(index), query, "--checkpoint", str(tmp_path / "other.pt")]) == 2
    err = capsys.readouterr().err
    assert "built from another encoder" in err and "selfsup embed" in err

    dim = json.loads((index / "index.json").read_text())["dim"]
    np.save(tmp_path / "vector.npy", np.ones(dim + 3, dtype=np.float32))
    assert main(["search", str(index), str(tmp_path / "vector.npy")]) == 2
    assert f"the query has {dim + 3} dimensions" in capsys.readouterr().err
    np.save(tmp_path / "right.npy", np.ones(dim, dtype=np.float32))
    assert main(["search", str(index), str(tmp_path / "right.npy"), "-k", "2"]) == 0  # a vector needs no encoder

    np.save(tmp_path / "matrix.npy", np.ones((2, dim), dtype=np.float32))
    assert main(["search", str(index), str(tmp_path / "matrix.npy")]) == 2
    assert "a query is one feature vector" in capsys.readouterr().err
    (tmp_path / "garbage.npy").write_bytes(b"not numpy")
    assert main(["search", str(index), str(tmp_path / "garbage.npy")]) == 2
    assert "not a readable .npy array" in capsys.readouterr().err

    assert main(["search", str(index), str(folder / "class0" / "broken.png")]) == 2
    assert "cannot decode image" in capsys.readouterr().err
    assert main(["search", str(index), str(folder)]) == 2
    assert "is a folder" in capsys.readouterr().err
    meta = json.loads((index / "index.json").read_text())
    (index / "index.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "fingerprint"}))
    assert main(["search", str(index), query]) == 2
    assert "missing or malformed: fingerprint" in capsys.readouterr().err
    (index / "index.json").write_text(json.dumps(meta))
    np.save(index / "embeddings.npy", np.zeros((3, dim), dtype=np.float32))
    assert main(["search", str(index), query]) == 2
    assert "inconsistent" in capsys.readouterr().err
    assert main(["search", str(tmp_path), query]) == 2
    assert "is not an index" in capsys.readouterr().err


def test_embed_refuses_what_is_neither_a_folder_nor_a_dataset(pretrained_run, tmp_path, capsys):
    assert main(["embed", str(pretrained_run), str(tmp_path / "nowhere")]) == 2
    assert "neither a folder of images nor a dataset name" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["embed", str(pretrained_run), str(tmp_path / "empty")]) == 2
    assert "holds no images" in capsys.readouterr().err
