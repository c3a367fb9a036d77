"""Semi-supervised methods beat the labels alone when labels are few (1%).

The note's family (pseudo-labels with a confidence threshold, Lee 2013; Mean Teacher, Tarvainen &
Valpola 2017; FixMatch, Sohn et al. 2020, arXiv:2001.07685) all add a loss on the unlabelled
images to the labelled one; FixMatch's Table 2 shows it far above the labels alone at 40 labels on
CIFAR-10.

Default (machine A, about 35 minutes): a ResNet-18 of width 16 from random initialisation, 1% of
the Fashion-MNIST labels (600, class-balanced, drawn by the seed, which also draws the
initialisation every method of that seed starts from), 300 steps of 128 images, SGD
0.03 with cosine decay (``selfsup semisup``'s defaults), 3 seeds. Every method sees 16 labelled
and 112 unlabelled images a step (mu = 7); the labels-only baseline trains on the same batches,
its unlabelled images counting for nothing, so that the comparison isolates what the unlabelled
images add (an equal labelled batch). Ramps last 30% of the run (the papers' 16k-40k steps would
leave every unlabelled weight near 0 in 300) and each method is scored by the network it trained,
not a moving average of its weights (FixMatch's 0.999 average would still hold the initial weights
after 300 steps): deviations for a short schedule, stated in the verdict. Test top-1 on all 10,000
test images. Held when every method beats the labels alone beyond the noise of 3 seeds.
"""
from __future__ import annotations

from ..figures import grouped_bars
from ..recipes.classifier import ClassifierTraining
from ..recipes.loading import StartingPoint
from ..recipes.semisup import SemiSupervisedSettings, semisup
from .lab import Claim, Lab, Verdict, combine, over_seeds, judge, mean, spread

METHODS = ("pseudo-label", "mean-teacher", "fixmatch")
LABELS, RATIO, STEPS = 0.01, 7.0, 300


def experiment(lab: Lab) -> Verdict:
    config = lab.config("simclr_fashion_mnist", ["backbone.width=16"])
    steps = lab.budget.steps(STEPS)
    starts: dict[int, StartingPoint] = {}  # a seed's random initialisation, shared by the methods (paired)
    top1: dict[str, list[float]] = {}
    seeds = lab.seeds(3)
    for method in ("labels-only",) + METHODS:
        settings = SemiSupervisedSettings(method=method, ratio=RATIO, rampup_steps=max(1, round(0.3 * steps)),
                                          eval_ema=0.0)
        top1[method] = []
        for seed in seeds:
            training = ClassifierTraining.for_strategy("semisup", steps=steps, backbone_lr_scale=1.0, seed=seed,
                                                       device=lab.budget.device, test_every=1000,
                                                       **({"batch_size": 16} if lab.budget.smoke else {}))
            stamp = {"stage": "semisup", "config": config.to_dict(), "training": training, "settings": settings,
                     "labels": LABELS, "initialisation_seed": seed}

            def learn(run_dir, resume, settings=settings, training=training, seed=seed):  # noqa: ANN001, ANN202
                if seed not in starts:
                    starts[seed] = StartingPoint.load(None, config, seed=seed, quiet=lab.quiet)
                return semisup(starts[seed], run_dir, training, settings, labels=LABELS, resume=resume,
                               quiet=lab.quiet)

            _, summary = lab.run(f"semisup-{method}-1pct-seed{seed}", stamp, learn, finished="test_top1")
            top1[method].append(summary["test_top1"])
    gaps = {method: judge(top1[method], top1["labels-only"], margin=0.5) for method in METHODS}
    outcome = combine([gap.outcome for gap in gaps.values()])
    rows = [{"method": method + (" (same batches, unlabelled images unused)" if method == "labels-only" else ""),
             **over_seeds(v), "vs labels only": gaps[method].text() if method in gaps else None,
             "verdict": gaps[method].outcome if method in gaps else None} for method, v in top1.items()]
    figure = grouped_bars(lab.folder / "semisup-1-percent.png", list(top1), {
        "test top-1": [mean(v) for v in top1.values()]}, "test top-1 (%)",
        f"1% of the labels, {steps} steps, ResNet-18 w16 from random init", zoom=True, errors={
            "test top-1": [spread(v) for v in top1.values()]})
    beat = [method for method, gap in gaps.items() if gap.outcome == "held"]
    return Verdict(
        outcome, f"Of {', '.join(METHODS)}, {len(beat)} beat the labels alone beyond the noise "
        f"({', '.join(beat) or 'none'}); labels alone {mean(top1['labels-only']):.2f}. Ramps over 30% of the run and "
        "the trained network scored (no weight average): the short schedule's deviations.",
        rows, ["method", "mean top-1", "std", "vs labels only", "verdict", "runs"], seeds,
        "each method's gap is counted beyond max(0.5, 2 standard errors); a longer schedule (--scale 4 or more) "
        "lets the unlabelled losses act for longer, which is where the papers measure them",
        figure, {method: {"gap": gap.gap, "error": gap.error} for method, gap in gaps.items()})


CLAIM = Claim("semisup-1-percent", "001", "Semi-supervised methods (pseudo-labels, Mean Teacher, FixMatch) beat the "
              "labels alone at 1% of the labels, at an equal labelled batch", "Sohn et al. 2020, Table 2",
              "w16 from random init, 1% labels, 300 steps of 16 + 112 images x 4 methods x 3 seeds", experiment)
