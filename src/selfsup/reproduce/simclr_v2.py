"""SimCLR v2: with few labels, fine-tune from the middle of the projection head, not the backbone.

Chen, Kornblith, Swersky, Norouzi, Hinton 2020, "Big Self-Supervised Models are Strong
Semi-Supervised Learners" (arXiv:2006.10029), Sec. 2 and Fig. 5: a deeper (3-layer) projection
head, and fine-tuning from its first layer rather than from the backbone's output, gains most
when labels are fewest (1% of ImageNet).

Default (machine A, about 20 minutes): SimCLR with the 3-layer head on a ResNet-18 of width 16 for
3 epochs of Fashion-MNIST, then fine-tuned on 1% and on 10% of the labels (class-balanced; 20 and
4 epochs) from head layer 0 (the backbone) and head layer 1 (the head's middle), 3 seeds each,
the trunk at 1/10 of the head's rate as SimCLR fine-tunes. Test top-1 on all 10,000 test images.
The verdict is taken at 1% of the labels (head layer 1 > head layer 0); 10% is shown beside it.
"""
from __future__ import annotations

from ..figures import grouped_bars
from .lab import Claim, Lab, Verdict, over_seeds, judge, mean, spread

FRACTIONS = {0.01: 20, 0.1: 4}  # label fraction: fine-tuning epochs (a similar number of steps)


def experiment(lab: Lab) -> Verdict:
    config = lab.config("simclr_fashion_mnist", [
        "method.proj_layers=3", "backbone.width=16", f"train.epochs={lab.budget.epochs(3)}", "train.knn_every=0",
        "train.online_probe=false"])
    pretrained = lab.pretrained("simclr-3layer-head", config)
    seeds = lab.seeds(3)
    top1: dict[tuple[float, int], list[float]] = {}
    for fraction, epochs in FRACTIONS.items():
        for head_layers in (0, 1):
            top1[fraction, head_layers] = [
                lab.finetuned(f"simclr-ft-{100 * fraction:g}pct-h{head_layers}-seed{seed}", pretrained,
                              lab.training(epochs=epochs, seed=seed, batch_size=128, backbone_lr_scale=0.1),
                              fraction, head_layers)[1]["test_top1"] for seed in seeds]
    gap = judge(top1[0.01, 1], top1[0.01, 0], margin=0.5)
    rows = [{"labels": f"{100 * fraction:g}%", "fine-tuned from": "head layer 1 (middle)" if h else
             "head layer 0 (backbone)", **over_seeds(values)} for (fraction, h), values in top1.items()]
    names = [f"{100 * fraction:g}% labels" for fraction in FRACTIONS]
    figure = grouped_bars(lab.folder / "simclr-v2-head.png", names, {
        f"head layer {h}": [mean(top1[f, h]) for f in FRACTIONS] for h in (0, 1)}, "test top-1 (%)",
        "SimCLR v2: from the head's middle layer or the backbone", zoom=True, errors={
        f"head layer {h}": [spread(top1[f, h]) for f in FRACTIONS] for h in (0, 1)})
    at_ten = mean(top1[0.1, 1]) - mean(top1[0.1, 0])
    return Verdict(
        gap.outcome, f"At 1% of the labels, fine-tuning from the head's middle layer minus from the backbone: "
        f"{gap.text()} points (means {mean(top1[0.01, 1]):.2f} vs {mean(top1[0.01, 0]):.2f}); at 10%: {at_ten:+.2f}.",
        rows, ["labels", "fine-tuned from", "mean top-1", "std", "runs"], seeds,
        f"at 1% of the labels, {gap.changes(len(seeds), 0.5)}",
        figure, {"gap_1pct": gap.gap, "error_1pct": gap.error, "gap_10pct": round(at_ten, 2)})


CLAIM = Claim("simclr-v2-head", "001", "With few labels, fine-tuning from the middle layer of SimCLR v2's 3-layer "
              "projection head beats fine-tuning from the backbone's output",
              "Chen et al. 2020b, Sec. 2 and Fig. 5", "SimCLR w16 3 epochs; 1% and 10% labels x head layer 0/1 x 3 "
              "seeds", experiment)
