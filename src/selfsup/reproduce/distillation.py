"""Knowledge distillation: a teacher's soft labels at a temperature train a small student better
than the hard labels alone.

Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network" (arXiv:1503.02531),
Sec. 2-3: the student's loss is T^2 * lambda * CE(softmax(t/T), softmax(s/T)) + (1 - lambda) * CE(y, s),
and a high temperature passes on how the teacher ranks the wrong classes.

Default (machine A, about 20 minutes): a teacher, ResNet-18 of width 16 trained on all 60,000
labels for 3 epochs; a student of width 4 trained on a class-balanced 10,000 of the training
images with their labels for 5 epochs, three ways that differ only in the loss: the labels alone
(lambda = 0), and lambda = 0.5 with the teacher at T = 1 and at T = 4. The same images, steps and
seeds (3) for each, so the student is trained as long as the labels-only baseline. Test top-1 on
all 10,000 test images. The verdict: T = 4 beats the labels alone.
"""
from __future__ import annotations

from ..figures import grouped_bars
from ..recipes.distill import distill
from .lab import Claim, Lab, Verdict, over_seeds, judge, mean, spread

STUDENT_WIDTH, IMAGES = 4, 10000
ARMS = {"labels only": (1.0, 0.0), "teacher at T=1, lambda 0.5": (1.0, 0.5), "teacher at T=4, lambda 0.5": (4.0, 0.5)}


def experiment(lab: Lab) -> Verdict:
    config = lab.config("simclr_fashion_mnist", ["backbone.width=16"])
    teacher, summary = lab.supervised("teacher-w16", config, lab.training(epochs=3, batch_size=256,
                                                                          backbone_lr_scale=1.0))
    images = 40 if lab.budget.smoke else IMAGES
    seeds = lab.seeds(3)
    top1: dict[str, list[float]] = {}
    for arm, (temperature, weight) in ARMS.items():
        top1[arm] = []
        for seed in seeds:
            training = lab.training(epochs=5, seed=seed, batch_size=128, backbone_lr_scale=1.0)
            stamp = {"stage": "distill", "teacher": teacher.name, "training": training, "temperature": temperature,
                     "teacher_weight": weight, "student_width": STUDENT_WIDTH, "images": images}
            _, student = lab.run(f"student-w{STUDENT_WIDTH}-T{temperature:g}-lambda{weight:g}-seed{seed}", stamp,
                                 lambda run_dir, resume: distill(
                                     teacher, run_dir, training, student=[f"backbone.width={STUDENT_WIDTH}"],
                                     temperature=temperature, teacher_weight=weight, labels=1.0,
                                     overrides=[f"data.subset={images}"], resume=resume, quiet=lab.quiet),
                                 finished="test_top1")
            top1[arm].append(student["test_top1"])
    hot, labels_only = top1["teacher at T=4, lambda 0.5"], top1["labels only"]
    gap = judge(hot, labels_only, margin=0.3)
    rows = [{"student (ResNet-18 w4)": arm, **over_seeds(v)} for arm, v in top1.items()]
    rows.append({"student (ResNet-18 w4)": "(the teacher, w16, all labels)", "mean top-1": summary["test_top1"]})
    figure = grouped_bars(lab.folder / "distillation-temperature.png", list(ARMS), {
        "student top-1": [mean(v) for v in top1.values()]}, "test top-1 (%)",
        f"A w{STUDENT_WIDTH} student on {images} labelled images", zoom=True, errors={
            "student top-1": [spread(v) for v in top1.values()]})
    cold = mean(top1["teacher at T=1, lambda 0.5"]) - mean(labels_only)
    return Verdict(
        gap.outcome, f"The teacher at T = 4 minus the labels alone: {gap.text()} points "
        f"({mean(hot):.2f} vs {mean(labels_only):.2f}); at T = 1: {cold:+.2f}. Teacher: {summary['test_top1']:.2f}.",
        rows, ["student (ResNet-18 w4)", "mean top-1", "std", "runs"], seeds,
        gap.changes(len(seeds), 0.3),
        figure, {"gap_T4": gap.gap, "error_T4": gap.error, "gap_T1": round(cold, 2),
                 "teacher_top1": summary["test_top1"]})


CLAIM = Claim("distillation-temperature", "002", "Soft labels from a teacher at a temperature train a small "
              "student better than the hard labels alone, for the same training", "Hinton et al. 2015, Sec. 2-3",
              "teacher w16 3 epochs; student w4 on 10k labelled images x (labels / T=1 / T=4) x 3 seeds", experiment)
