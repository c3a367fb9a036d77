"""The bench a claim is reproduced on: its budget, runs reused by their settings, its verdict.

A claim trains what it needs through a :class:`Lab`. Every run lives in ``OUT/runs/<label>-<digest>``,
where the digest is taken over the settings that make the run (config, training, stage), so a
second claim, or a second reproduction, that needs the same run reads it back instead of
training it again, and a run with other settings never takes its place
(:func:`~selfsup.recipes.sweep.run_or_read`); a killed reproduction resumes inside the run it
was in. Scores are kept beside the run they score, keyed the same way.

A claim ends in a :class:`Verdict`: held, not held or inconclusive, the numbers it rests on, the
seeds, and what would change it. :func:`judge` is the one rule every claim compares with: a
difference counts when it exceeds both a stated margin and twice its standard error over seeds.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig, apply_overrides, find_config, read_yaml, resolve
from ..engine.runtime import describe_device, library_versions, pick_device
from ..files import write_json, write_text_atomic
from ..recipes.classifier import ClassifierTraining
from ..recipes.evaluate import checkpoint_evaluator
from ..recipes.finetune import finetune, supervised
from ..recipes.pretrain import pretrain
from ..recipes.run import plain
from ..recipes.sweep import run_or_read
from ..tables import markdown_table

OUTCOMES = ("held", "not held", "inconclusive")
SMOKE = ["backbone.name=toy", "backbone.width=8", "train.batch_size=16", "train.knn_every=0",
         "train.knn_bank_size=64", "train.knn_test_size=16", "eval.linear_max_iter=30",
         "eval.linear_weight_decays=[0.0, 0.001]", "train.channels_last=false"]
"""What a smoke run trains with: the toy backbone on small batches. It checks that a claim runs
end to end (the test suite runs every claim so), never the claim itself."""
WHERE = ("train.device",)
"""Settings that say where a run computes, not what: left out of a run's digest (every other setting,
the data's root included, is in it: the same data under another path trains again)."""


@dataclass(frozen=True)
class Budget:
    """How long a claim trains. ``scale`` multiplies every epoch and step count of the claim's
    default (2: twice as long; ``--scale`` of ``selfsup reproduce``); ``smoke`` trains a few steps of
    a toy network on whatever data ``data_root`` holds, to check the pipeline in a minute."""

    scale: float = 1.0
    smoke: bool = False
    device: str = "auto"
    data_root: str | None = None

    def epochs(self, default: int) -> int:
        return 1 if self.smoke else max(1, round(default * self.scale))

    def steps(self, default: int) -> int:
        return 4 if self.smoke else max(1, round(default * self.scale))

    def overrides(self) -> list[str]:
        """What every config of the claim gets: where it runs, the data, and a smoke run's network."""
        return ([f"train.device={self.device}"] + ([f"data.root={self.data_root}"] if self.data_root else [])
                + (SMOKE if self.smoke else []))

    def describe(self) -> str:
        return "smoke run (toy network, a few steps)" if self.smoke else f"scale {self.scale:g}"


@dataclass
class Verdict:
    """What a claim's experiment found."""

    outcome: str
    """held, not held or inconclusive."""
    finding: str
    """One or two sentences with the numbers the outcome rests on."""
    rows: list[dict[str, Any]]
    columns: list[str]
    seeds: list[int]
    would_change: str
    """What result, or what longer run, would change the outcome."""
    figure: Path | None = None
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    name: str
    note: str
    """Which source note states it (``seeds/<note>_*.txt``)."""
    statement: str
    source: str
    """The paper (and figure or table) the note takes it from."""
    default: str
    """What the default budget trains, in a line."""
    experiment: Callable[[Lab], Verdict]


@dataclass(frozen=True)
class Gap:
    """A difference of means that a claim says is positive, with its noise and what it takes to count."""

    gap: float
    error: float | None
    """Standard error of the difference over seeds (None: one seed each, no estimate)."""
    threshold: float
    outcome: str

    def text(self) -> str:
        noise = f" +- {self.error:.2f} (s.e.)" if self.error is not None else " (one seed)"
        return f"{self.gap:+.2f}{noise}, counted beyond {self.threshold:.2f}"

    def changes(self, seeds: int, margin: float) -> str:
        """What would change this outcome: the gap crossing its threshold, or, for a gap inside the noise,
        about how many seeds would make the noise small enough (the standard error falls as 1/sqrt(seeds))."""
        if self.outcome != "inconclusive":
            return (f"a gap inside +-{self.threshold:.2f} would make it inconclusive, beyond it the other way "
                    f"{'not held' if self.outcome == 'held' else 'held'}")
        if abs(self.gap) <= margin or self.error is None:
            return (f"the gap ({self.gap:+.2f}) is inside the {margin:g}-point margin: more seeds cannot make it "
                    "count, a longer budget (--scale) might widen it")
        needed = math.ceil(seeds * (2 * self.error / abs(self.gap)) ** 2) + 1
        return (f"at this spread, about {needed} seeds would bring twice the standard error under the gap "
                f"({self.gap:+.2f}); a longer budget (--scale) might widen it")


def mean(values: list[float]) -> float:
    return statistics.fmean(values)


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def over_seeds(values: list[float]) -> dict[str, Any]:
    """A table's cells for one value per seed: mean, standard deviation and the runs themselves."""
    return {"mean top-1": round(mean(values), 2), "std": round(spread(values), 2),
            "runs": ", ".join(f"{value:.2f}" for value in values)}


def judge(higher: list[float], lower: list[float], margin: float) -> Gap:
    """Whether ``higher`` (one value per seed) beats ``lower``: held when the difference of means
    exceeds both ``margin`` and twice its standard error, not held when it is as far the other way,
    inconclusive in between. With one seed on a side, ``margin`` alone decides."""
    gap = mean(higher) - mean(lower)
    error = (math.sqrt(spread(higher) ** 2 / len(higher) + spread(lower) ** 2 / len(lower))
             if len(higher) > 1 and len(lower) > 1 else None)
    threshold = max(margin, 2 * error) if error is not None else margin
    outcome = "held" if gap > threshold else "not held" if gap < -threshold else "inconclusive"
    return Gap(round(gap, 2), None if error is None else round(error, 2), round(threshold, 2), outcome)


def combine(outcomes: list[str]) -> str:
    """All parts of a claim held: held; any part went the other way: not held; else inconclusive."""
    if all(outcome == "held" for outcome in outcomes):
        return "held"
    return "not held" if "not held" in outcomes else "inconclusive"


def digest(settings: Any) -> str:
    return hashlib.sha1(json.dumps(plain(settings), sort_keys=True, default=str).encode()).hexdigest()[:10]


class Lab:
    """Where one claim runs: ``out/<claim>`` for its verdicts and figure, ``out/runs`` for the runs
    every claim shares."""

    def __init__(self, claim: str, out: str | Path, budget: Budget, quiet: bool = False) -> None:
        self.claim, self.budget, self.quiet = claim, budget, quiet
        self.out = Path(out)
        self.folder = self.out / claim
        self.runs = self.out / "runs"
        self.started, self.trained = time.perf_counter(), 0  # wall clock; runs trained (not read back)

    # ------------------------------------------------------------------ configs and runs

    def config(self, preset: str, overrides: list[str] = ()) -> RunConfig:
        """A preset (``configs/<preset>.yaml``) with the claim's ``overrides``, then the budget's."""
        return resolve(apply_overrides(read_yaml(find_config(preset)), list(overrides) + self.budget.overrides()))

    def run(self, label: str, stamp: dict[str, Any], train: Callable[[Path, bool], dict[str, Any]],
            finished: str | None = None) -> tuple[Path, dict[str, Any]]:
        """``train(run_dir, resume)`` in the folder of ``stamp`` (read back when finished); returns
        (the run's folder, its summary)."""
        stamp = plain(stamp)
        run_dir = self.runs / f"{label}-{digest(without_where(stamp))}"

        def train_and_record(resume: bool) -> dict[str, Any]:
            self.trained += 1
            summary = train(run_dir, resume)
            if not (run_dir / "summary.json").is_file():  # a stage that writes no summary of its own
                write_json(run_dir / "summary.json", summary)
            return summary

        return run_dir, run_or_read(run_dir, stamp, train_and_record, finished=finished)

    def pretrained(self, label: str, config: RunConfig) -> Path:
        """The run of ``pretrain(config)``, trained or read back."""
        run_dir, _ = self.run(label, {"stage": "pretrain", "config": config.to_dict()},
                              lambda run_dir, resume: pretrain(config, run_dir, resume=resume, quiet=self.quiet))
        return run_dir

    def seeds(self, count: int) -> list[int]:
        """The seeds a comparison repeats over (two in a smoke run, so that spreads are computed)."""
        return [0, 1] if self.budget.smoke else list(range(count))

    def supervised(self, label: str, config: RunConfig, training: ClassifierTraining,
                   labels: float = 1.0) -> tuple[Path, dict[str, Any]]:
        """``config``'s backbone from random initialisation on a fraction ``labels`` of the labels."""
        stamp = {"stage": "supervised", "config": config.to_dict(), "training": training, "labels": labels}
        return self.run(label, stamp, lambda run_dir, resume: supervised(
            config, run_dir, training, labels=labels, resume=resume, quiet=self.quiet), finished="test_top1")

    def finetuned(self, label: str, source: Path, training: ClassifierTraining, labels: float,
                  head_layers: int = 0) -> tuple[Path, dict[str, Any]]:
        """The encoder of the run ``source`` fine-tuned on a fraction ``labels`` of the labels."""
        stamp = {"stage": "finetune", "source": source.name, "training": training, "labels": labels,
                 "head_layers": head_layers}
        return self.run(label, stamp, lambda run_dir, resume: finetune(
            source, run_dir, training, head_layers=head_layers, labels=labels, resume=resume, quiet=self.quiet),
            finished="test_top1")

    def training(self, *, epochs: int | None = None, steps: int | None = None, seed: int = 0,
                 **changes: Any) -> ClassifierTraining:
        """A :class:`ClassifierTraining` with the budget's epochs or steps, device and seed."""
        length = ({"steps": self.budget.steps(steps), "epochs": 1} if steps is not None
                  else {"epochs": self.budget.epochs(epochs or 1)})
        batch = {"batch_size": 8} if self.budget.smoke else {}  # 1% of a tiny set: one image a class
        return ClassifierTraining(**{"test_every": 1000, **changes, **length, **batch, "seed": seed,
                                     "device": self.budget.device})

    def scores(self, run_dir: Path, overrides: list[str] = (), protocols: tuple[str, ...] = ("knn", "linear"),
               ) -> dict[str, float]:
        """Top-1 of each evaluation protocol for the encoder of ``run_dir`` (with ``overrides`` of its
        config, e.g. other classes), kept in the run's folder and read back."""
        overrides = list(overrides) + self.budget.overrides()
        key = digest({"overrides": without_where_list(overrides), "protocols": list(protocols)})
        record = run_dir / f"scores-{key}.json"
        if record.is_file():
            return json.loads(record.read_text())["top1"]
        evaluator, config = checkpoint_evaluator(run_dir, overrides, run_dir / f"eval-{key}", quiet=self.quiet)
        results = evaluator.run(list(protocols), config.eval, config.train.seed)[evaluator.name]
        top1 = {protocol: round(results[protocol]["top1"], 2) for protocol in protocols}
        write_json(record, {"overrides": overrides, "top1": top1})
        return top1

    # ------------------------------------------------------------------ the verdict

    def conclude(self, verdict: Verdict, claim_text: str, source: str) -> Verdict:
        """Write the verdict (``verdict.md`` / ``.json``, appended to ``verdicts.md``) and record it in
        ``OUT/verdicts.json``, which ``selfsup reproduce --list`` reads. A smoke run is never a verdict."""
        if self.budget.smoke:
            verdict = dataclasses.replace(verdict, outcome="inconclusive", would_change=(
                "this was a smoke run (toy network, a few steps): it checks that the experiment runs, not the claim; "
                "run it without --smoke"))
        now = datetime.datetime.now().isoformat(timespec="seconds")
        minutes = round((time.perf_counter() - self.started) / 60, 1)
        machine = describe_device(pick_device(self.budget.device))
        table = markdown_table([{key: value for key, value in row.items() if value is not None}
                                for row in verdict.rows], verdict.columns)
        text = "\n".join([
            f"## {self.claim}: {verdict.outcome.upper()}", "",
            f"> {claim_text} ({source})", "",
            verdict.finding, "", table, "",
            f"Seeds: {', '.join(map(str, verdict.seeds))}. Budget: {self.budget.describe()}. {now}, {machine}, "
            f"torch {torch.__version__}; {minutes:g} minutes, {self.trained} runs trained (the others read back).", "",
            f"What would change the verdict: {verdict.would_change}", ""]
            + ([f"![{self.claim}]({verdict.figure.name})", ""] if verdict.figure else []))
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.folder / "verdict.md", text)
        with open(self.folder / "verdicts.md", "a", encoding="utf-8") as history:
            history.write(text + "\n")
        record = {"claim": self.claim, "outcome": verdict.outcome, "finding": verdict.finding, "date": now,
                  "minutes": minutes, "runs_trained": self.trained,
                  "machine": machine, "budget": self.budget.describe(), "seeds": verdict.seeds,
                  "numbers": verdict.numbers, "versions": library_versions()}
        write_json(self.folder / "verdict.json", record)
        index_file = self.out / "verdicts.json"
        index = json.loads(index_file.read_text()) if index_file.is_file() else {}
        before = index.get(self.claim, {})
        if not self.trained and before.get("budget") == record["budget"] and "minutes" in before:
            minutes = before["minutes"]  # everything read back: the time it took stays the time it took to train
        index[self.claim] = {**{key: record[key] for key in ("outcome", "finding", "date", "machine", "budget")},
                             "minutes": minutes}
        write_json(index_file, index)
        return verdict


def without_where(stamp: Any) -> Any:
    """``stamp`` without the settings that only say where a run computes: every ``device``, at any
    depth (``config.train.device``, ``training.device``, a ClusterFit setting's training's)."""
    if isinstance(stamp, dict):
        return {key: without_where(value) for key, value in stamp.items() if key != "device"}
    if isinstance(stamp, list):
        return [without_where(value) for value in stamp]
    return stamp


def without_where_list(overrides: list[str]) -> list[str]:
    return [item for item in overrides if item.split("=", 1)[0] not in WHERE]
