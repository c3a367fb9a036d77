"""Few-shot episodes (SPEC 7): how they are drawn, nearest-centroid classification, the command."""
import json
import math

import pytest
import torch

from selfsup.cli import main
from selfsup.errors import SelfsupError
from selfsup.eval import fewshot_accuracy, nearest_centroid, sample_episodes


def _labels(per_class=10, classes=6):
    return torch.arange(classes).repeat_interleave(per_class)


def test_episodes_never_mix_support_and_query_and_respect_their_classes():
    labels = _labels()
    episodes = sample_episodes(labels, ways=3, shots=2, queries=4, count=50, seed=1, classes=[1, 2, 4, 5])
    for episode in episodes:
        assert len(episode.support) == 6 and len(episode.query) == 12
        assert not set(episode.support.tolist()) & set(episode.query.tolist())
        assert set(episode.classes.tolist()) <= {1, 2, 4, 5} and len(set(episode.classes.tolist())) == 3
        # way-major: the images of way w carry the episode's w-th class
        assert torch.equal(labels[episode.support], episode.classes.repeat_interleave(2))
        assert torch.equal(labels[episode.query], episode.classes.repeat_interleave(4))
    again = sample_episodes(labels, ways=3, shots=2, queries=4, count=50, seed=1, classes=[1, 2, 4, 5])
    assert all(torch.equal(a.support, b.support) and torch.equal(a.query, b.query) for a, b in zip(episodes, again))
    other = sample_episodes(labels, ways=3, shots=2, queries=4, count=50, seed=2, classes=[1, 2, 4, 5])
    assert any(not torch.equal(a.support, b.support) for a, b in zip(episodes, other))


def test_episodes_refuse_what_cannot_be_drawn():
    labels = _labels(per_class=5)
    with pytest.raises(SelfsupError, match="need 6 images per class"):
        sample_episodes(labels, ways=2, shots=1, queries=5, count=1)
    with pytest.raises(SelfsupError, match="only 2 to draw from"):
        sample_episodes(labels, ways=3, shots=1, queries=1, count=1, classes=[0, 1])
    with pytest.raises(SelfsupError, match="no images"):
        sample_episodes(labels, ways=2, shots=1, queries=1, count=1, classes=[0, 9])


def test_nearest_centroid_by_hand():
    # Way 0's support at (0, 0) and (0, 2): centroid (0, 1). Way 1's at (4, 0) and (4, 2): centroid (4, 1).
    support = torch.tensor([[0.0, 0.0], [0.0, 2.0], [4.0, 0.0], [4.0, 2.0]])
    queries = torch.tensor([[1.9, 1.0], [2.1, 1.0], [0.0, 5.0], [5.0, -3.0]])
    assert nearest_centroid(support, 2, queries).tolist() == [0, 1, 0, 1]


def test_fewshot_accuracy_separable_and_random_features():
    labels = _labels(per_class=20, classes=5)
    separable = torch.nn.functional.one_hot(labels, 5).float() + 0.01 * torch.randn(100, 5)
    result = fewshot_accuracy(separable, labels, ways=5, shots=1, queries=5, episodes=30)
    assert result["top1"] == 100.0 and result["ci95"] == 0.0 and result["episodes"] == 30
    noise = fewshot_accuracy(torch.randn(100, 16), labels, ways=5, shots=1, queries=5, episodes=200)
    assert 10.0 < noise["top1"] < 30.0  # chance is 20%
    values_spread = noise["ci95"] * math.sqrt(200) / 1.96
    assert 5.0 < values_spread < 40.0  # a per-episode standard deviation in percent


def test_eval_fewshot_end_to_end(pretrained_run, tmp_path, capsys):
    out = tmp_path / "fs"
    assert main(["eval", "fewshot", str(pretrained_run), "--ways", "2", "--shots", "1", "3", "--queries", "2",
                 "--episodes", "20", "--classes", "0", "1", "2", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "2-way 1-shot:" in printed and "2-way 3-shot:" in printed and "(95%, 20 episodes)" in printed
    results = json.loads((out / "results.json").read_text())
    (entries,) = results.values()
    about = entries.pop("about")  # what was evaluated, beside the protocols
    assert set(entries) == {"2-way 1-shot", "2-way 3-shot"} and about["stem"] == "last"
    assert all(0 <= e["top1"] <= 100 and e["episodes"] == 20 for e in entries.values())
    assert "2-way 3-shot" in (out / "results.md").read_text()
    assert main(["eval", "fewshot", str(pretrained_run), "--ways", "9", "--out", str(out), "--quiet"]) == 2
