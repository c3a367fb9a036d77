"""Layer by layer, Jigsaw's features fall off at the last stage while PIRL's keep improving.

Misra & van der Maaten 2020, "Self-Supervised Learning of Pretext-Invariant Representations"
(arXiv:1912.01991), Fig. 5: linear classifiers on each stage of a ResNet-50 (conv1, res2..res5);
Jigsaw's accuracy drops at res5, whose features are specific to the pretext task, while PIRL's,
trained to be invariant to the jigsaw transform rather than to predict it, rise to the end.

Default (machine A, about 40 minutes): each method's preset recipe (48 px images, 3x3 tiles) on a
ResNet-18 of width 32 for 5 epochs of a class-balanced 10,000 Fashion-MNIST images; then a linear
probe on every stage's features, average-pooled to about 2,048 (BatchNorm statistics re-estimated
on whole images first, as for every tile-trained trunk), trained on 5,000 training images and
tested on all 10,000. One seed, so the rule has a band: Jigsaw's last stage must be more than a
point below its best earlier stage (at or above it: not held), and PIRL's last stage must be its
best (more than a point below its best: not held); in between, inconclusive.
"""
from __future__ import annotations

import json
import shutil

from ..recipes.evaluate import layers_for_checkpoints
from .lab import Claim, Lab, Verdict, combine, digest

MARGIN = 1.0


def experiment(lab: Lab) -> Verdict:
    shared = ["data.subset=10000", f"train.epochs={lab.budget.epochs(5)}", "backbone.width=32", "train.knn_every=0",
              "train.online_probe=false"]
    if lab.budget.smoke:  # the whole tiny set, at the smallest size 3x3 tiles of a few pixels allow
        shared = [item for item in shared if not item.startswith("data.subset")] + ["data.image_size=30"]
    runs = {method: lab.pretrained(f"{method}-layers", lab.config(f"{method}_fashion_mnist", shared))
            for method in ("jigsaw", "pirl")}
    probe_images = 40 if lab.budget.smoke else 5000
    folder = lab.folder / f"layers-{digest([r.name for r in runs.values()] + [probe_images])}"
    layers = json.loads((folder / "layers.json").read_text()) if (folder / "layers.json").is_file() else {}
    if len(layers) != len(runs):  # probed before for these very runs: read back; half done: again, whole
        shutil.rmtree(folder, ignore_errors=True)
        layers, folder = layers_for_checkpoints([str(run) for run in runs.values()], lab.budget.overrides(),
                                                out_dir=folder, dims=(2048,), train_size=probe_images, quiet=lab.quiet)
    by_method = {method: next(entry["stages"] for name, entry in layers.items() if name.startswith(method))
                 for method in runs}
    stages = list(by_method["jigsaw"])
    top1 = {method: [by_method[method][stage]["top1"] for stage in stages] for method in runs}
    jigsaw_drop = max(top1["jigsaw"][:-1]) - top1["jigsaw"][-1]
    pirl_shortfall = max(top1["pirl"][:-1]) - top1["pirl"][-1]
    jigsaw_part = "held" if jigsaw_drop > MARGIN else "not held" if jigsaw_drop <= 0 else "inconclusive"
    pirl_part = "held" if pirl_shortfall <= 0 else "not held" if pirl_shortfall > MARGIN else "inconclusive"
    figure = lab.folder / "pirl-vs-jigsaw.png"
    shutil.copy(folder / "layers.png", figure)
    rows = [{"encoder": method, **{stage: value for stage, value in zip(stages, top1[method])}} for method in runs]
    return Verdict(
        combine([jigsaw_part, pirl_part]),
        f"Jigsaw's last stage ({stages[-1]}) is {jigsaw_drop:+.2f} points below its best earlier stage "
        f"({jigsaw_part}); "
        f"PIRL's is {pirl_shortfall:+.2f} below its best earlier stage ({pirl_part}: it should be at or above it).",
        rows, ["encoder", *stages], [0],
        f"Jigsaw's drop counts beyond {MARGIN:g} point and PIRL's last stage must be its best; a longer pretraining "
        "(--scale 4) makes the pretext task's hold on the last stage, and PIRL's invariance, stronger, and the "
        "paper's ResNet-50 has more depth to specialise",
        figure, {"jigsaw_drop": round(jigsaw_drop, 2), "pirl_shortfall": round(pirl_shortfall, 2),
                 "stages": stages, "top1": top1})


CLAIM = Claim("pirl-vs-jigsaw", "000", "Linear probes on conv1..res5: Jigsaw's accuracy drops at res5 while PIRL's "
              "keeps rising", "Misra & van der Maaten 2020, Fig. 5",
              "Jigsaw and PIRL, w32, 48 px, 10k images x 5 epochs; layer-wise probes on 5k images", experiment)
