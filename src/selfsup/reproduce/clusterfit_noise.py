"""ClusterFit: clustering a network's features and training a fresh one on the clusters transfers
better than the network itself, or a student distilled from it, the more so as its labels are noisier.

Yan, Misra, Gupta, Ghadiyaram, Mahajan 2020, "ClusterFit: Improving Generalization of Visual
Representations" (arXiv:1912.03330), Sec. 3.1 and Fig. 2: N_pre trained on ImageNet-1K with a
fraction of its labels moved to other classes, then evaluated by its features' **transfer** to
ImageNet-9K classes it never saw: N_pre falls as the noise grows, distillation is generally better,
ClusterFit (k-means into K clusters, N_cf trained from scratch on them) better than either.

Default (machine A, about 40 minutes): N_pre, a ResNet-18 of width 16 trained for 3 epochs on
15,000 images of the first five Fashion-MNIST classes (T-shirt, trouser, pullover, dress, coat)
with 0%, 50% and 75% of their labels moved to another of those classes; from it, on 15,000
images of the same classes, a student distilled from its predictions and N_cf trained on K = 50 clusters of its
features (each 2 epochs, from scratch, every parameter at the head's rate); every network then
scored on the other five classes (sandal, shirt, sneaker, bag, ankle boot), which none of them
saw: the linear probe and weighted kNN on their 30,000 training and 5,000 test images. One seed.
"""
from __future__ import annotations

from ..figures import curves
from ..recipes.cluster import ClusterFitSettings, clusterfit
from ..recipes.distill import distill
from .lab import Claim, Lab, Verdict, combine, judge

SEEN, UNSEEN = "[0, 1, 2, 3, 4]", "[5, 6, 7, 8, 9]"
NOISE, IMAGES, CLUSTERS = (0.0, 0.5, 0.75), 15000, 50
NETWORKS = ("N_pre", "distilled", "ClusterFit")


def experiment(lab: Lab) -> Verdict:
    pool = [] if lab.budget.smoke else [f"data.subset={IMAGES}"]  # the images N_pre, the student and N_cf see
    seen, unseen = ("[0, 1]", "[2, 3]") if lab.budget.smoke else (SEEN, UNSEEN)
    transfer = [f"data.classes={unseen}", "data.label_noise=0.0"]
    rows, scores = [], {}
    for noise in NOISE:
        config = lab.config("simclr_fashion_mnist", ["backbone.width=16", f"data.classes={seen}",
                                                     f"data.label_noise={noise}"])
        fraction = 1.0 if lab.budget.smoke else IMAGES / 30000  # a class-balanced part of the five classes
        n_pre, summary = lab.supervised(f"n-pre-noise{100 * noise:g}", config,
                                        lab.training(epochs=3, batch_size=128, backbone_lr_scale=1.0), fraction)
        student_training = lab.training(epochs=2, batch_size=128, backbone_lr_scale=1.0)
        stamp = {"stage": "distill", "teacher": n_pre.name, "training": student_training, "pool": pool}
        distilled, _ = lab.run(f"distilled-noise{100 * noise:g}", stamp, lambda run_dir, resume: distill(
            n_pre, run_dir, student_training, overrides=pool, resume=resume, quiet=lab.quiet),
            finished="test_top1")
        settings = ClusterFitSettings(clusters=4 if lab.budget.smoke else CLUSTERS, training=student_training)
        stamp = {"stage": "clusterfit", "n_pre": n_pre.name, "settings": settings, "pool": pool,
                 "evaluation": transfer}
        _, report = lab.run(f"clusterfit-noise{100 * noise:g}", stamp, lambda run_dir, resume: clusterfit(
            n_pre, run_dir, settings, overrides=pool + lab.budget.overrides(),
            evaluation=transfer + lab.budget.overrides(), quiet=lab.quiet))
        scores[noise] = {"N_pre": report["results"]["N_pre"], "distilled": lab.scores(distilled, transfer),
                         "ClusterFit": report["results"]["N_cf"]}
        rows.append({"labels moved": f"{100 * noise:g}%", **{f"{n} linear": scores[noise][n]["linear"]
                                                              for n in NETWORKS},
                     **{f"{n} kNN": scores[noise][n]["knn"] for n in NETWORKS},
                     "N_pre on its own classes": summary["test_top1"]})
    parts = [judge([scores[p]["ClusterFit"]["linear"]], [max(scores[p]["N_pre"]["linear"],
                                                             scores[p]["distilled"]["linear"])], margin=0.5)
             for p in NOISE]
    figure = curves(lab.folder / "clusterfit-label-noise.png", [
        ([100 * p for p in NOISE], [scores[p][n]["linear"] for p in NOISE], n) for n in NETWORKS],
        "labels of N_pre moved to another class (%)", "linear probe top-1 on unseen classes (%)",
        "ClusterFit: transfer to five classes N_pre never saw")
    return Verdict(
        combine([part.outcome for part in parts]),
        "ClusterFit minus the better of N_pre and the distilled student, linear probe on the unseen classes: "
        + "; ".join(f"{100 * p:g}% noise {part.text()}" for p, part in zip(NOISE, parts)) + ".",
        rows, ["labels moved"] + [f"{n} linear" for n in NETWORKS] + [f"{n} kNN" for n in NETWORKS]
        + ["N_pre on its own classes"], [0],
        "each noise level counts beyond half a point (one seed); held needs every level. K and the students' "
        "schedule (here 50 clusters, 2 epochs) are the paper's main knobs",
        figure, {f"{100 * p:g}%": part.gap for p, part in zip(NOISE, parts)} | {"scores": {
            f"{100 * p:g}%": s for p, s in scores.items()}})


CLAIM = Claim("clusterfit-label-noise", "000", "Under label noise, ClusterFit's N_cf transfers better than N_pre and "
              "than a student distilled from it", "Yan et al. 2020, Sec. 3.1 and Fig. 2",
              "N_pre w16 on 5 classes (15k images, 3 epochs) at 0/50/75% noise; distilled and N_cf (K=50); "
              "scored on the 5 other classes", experiment)
