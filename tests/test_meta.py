"""The checkpoint record: what recipes write and every reader gets back, typed."""
from pathlib import Path

import torch

from selfsup.data import DataFacts
from selfsup.engine import checkpoint
from selfsup.recipes.meta import EncoderRef, RunMeta

FACTS = DataFacts("fashion_mnist", 1, 28, (0.286,), (0.353,), ("a", "b"), images=60, skipped=("x.png",), held_out=4)
CONFIG = {"method": {"name": "simclr"}, "backbone": {"name": "toy"}}


def test_a_record_reads_back_as_it_was_written(tmp_path):
    record = RunMeta.record(CONFIG, FACTS, EncoderRef("encoder", "supervised", head_layers=1),
                            classifier={"classes": 2, "stage": "fine-tuned"})
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"format": checkpoint.FORMAT, "version": checkpoint.VERSION, **record,
                            "model": {"encoder.w": torch.ones(2)}, "step": 7, "epoch": 1}, path)
    meta = RunMeta.read(path)
    assert meta.data == FACTS and meta.encoder == EncoderRef("encoder", "supervised", 1)
    assert (meta.step, meta.epoch, meta.classifier["stage"], meta.imported) == (7, 1, "fine-tuned", None)
    assert meta.method == "supervised" and not meta.is_pretraining and meta.source == str(path.resolve())
    assert torch.equal(meta.weights["encoder.w"], torch.ones(2))
    # Literals only: a checkpoint loads with weights_only, so no dataclass is stored.
    assert record["data"]["mean"] == [0.286] and record["encoder"] == {"prefix": "encoder", "method": "supervised",
                                                                      "head_layers": 1}


def test_an_older_checkpoint_without_the_newer_facts_reads_with_their_defaults():
    state = {"path": "run/checkpoints/last.pt", "config": CONFIG, "model": {},
             "data": {"dataset": "cifar10", "channels": 3, "image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3,
                      "images": 50000, "classes": list("abcdefghij"), "retired_key": 1}}
    meta = RunMeta.of(state)
    assert meta.data.held_out == 0 and meta.data.skipped == () and len(meta.data.classes) == 10
    assert meta.encoder == EncoderRef() and meta.method == "simclr" and meta.is_pretraining
    assert meta.path == Path("run/checkpoints/last.pt") and meta.step is None
    # An encoder entry written by a later version, with a fact this one does not know, still reads.
    later = RunMeta.of({**state, "encoder": {"prefix": "encoder", "method": "x", "origin": "a later fact"}})
    assert later.encoder == EncoderRef("encoder", "x") and RunMeta.of({**state, "encoder": None}).encoder == EncoderRef()
    assert DataFacts.of(meta.data.to_dict()) == meta.data
