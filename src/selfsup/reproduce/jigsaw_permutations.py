"""Jigsaw: more permutations, and permutations further apart, make features that transfer better.

Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by Solving Jigsaw
Puzzles" (arXiv:1603.09246), Table 3: with the permutation set grown from 100 to 1000, and with
its permutations chosen as far apart as possible (maximal minimal Hamming distance) rather than
as close, the pretext task is harder and the features transfer better.

Default (machine A, about 30 minutes): the Jigsaw preset (48 px, 3x3 tiles) on a ResNet-18 of
width 16 for 5 epochs of a class-balanced 10,000 Fashion-MNIST images, with 10, 100 and 1000
permutations as far apart as possible, and 100 as close as possible (every pair differs by 2
tiles); each encoder scored by the linear probe and weighted kNN on the Fashion-MNIST classes, a
task the pretext never saw (the full training and test sets). One seed. Held when 1000
permutations beat 10, and maximal distance beats minimal at 100, each by more than a point.
"""
from __future__ import annotations

from ..figures import grouped_bars
from .lab import Claim, Lab, Verdict, combine, judge

SETS = {"10, maximal": (10, "maximal"), "100, maximal": (100, "maximal"), "1000, maximal": (1000, "maximal"),
        "100, minimal": (100, "minimal")}


def experiment(lab: Lab) -> Verdict:
    shared = [f"train.epochs={lab.budget.epochs(5)}", "backbone.width=16", "train.knn_every=0",
              "train.online_probe=false"] + (["data.image_size=30"] if lab.budget.smoke else ["data.subset=10000"])
    scores = {}
    for name, (count, distance) in SETS.items():
        config = lab.config("jigsaw_fashion_mnist", shared + [f"views.num_permutations={count}",
                                                              f"views.permutation_distance={distance}"])
        run = lab.pretrained(f"jigsaw-{count}-{distance}", config)
        scores[name] = lab.scores(run)
    more = judge([scores["1000, maximal"]["linear"]], [scores["10, maximal"]["linear"]], margin=1.0)
    apart = judge([scores["100, maximal"]["linear"]], [scores["100, minimal"]["linear"]], margin=1.0)
    rows = [{"permutations, distance": name, "linear top-1": s["linear"], "kNN top-1": s["knn"]}
            for name, s in scores.items()]
    figure = grouped_bars(lab.folder / "jigsaw-permutations.png", list(scores), {
        "linear": [s["linear"] for s in scores.values()], "kNN": [s["knn"] for s in scores.values()]},
        "top-1 (%)", "Jigsaw's permutation set: how many, how far apart", zoom=True)
    return Verdict(
        combine([more.outcome, apart.outcome]),
        f"Linear probe, 1000 minus 10 permutations: {more.text()} ({more.outcome}); at 100, as far apart as possible "
        f"minus as close: {apart.text()} ({apart.outcome}).",
        rows, ["permutations, distance", "linear top-1", "kNN top-1"], [0],
        "each difference counts beyond a point (one seed); a longer pretraining (--scale) gives the harder "
        "tasks time to pay off, which at a few epochs they may not",
        figure, {"more": more.gap, "apart": apart.gap, "scores": scores})


CLAIM = Claim("jigsaw-permutations", "001", "More jigsaw permutations, and permutations further apart (larger "
              "minimal Hamming distance), give features that transfer better", "Noroozi & Favaro 2016, Table 3",
              "Jigsaw w16 48 px, 10k images x 5 epochs, with 10 / 100 / 1000 far-apart and 100 close permutations",
              experiment)
