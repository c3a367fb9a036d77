"""Runs that are read back: one rule for every sweep and stage that reuses a finished run.

A sweep (label fractions x seeds, every sharing of a multi-task comparison, ClusterFit's N_cf)
is re-run after a kill or to print its table again; a finished run is then read back and an
interrupted one resumed. :func:`run_or_read` stores a stamp of the settings that produce each
run (``stamp.json`` beside its ``summary.json``) and refuses, in one line naming the settings that
differ, to read back or resume a run made with other ones: a sweep re-run with another learning
rate never reports the old numbers under the new settings.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..engine import dist
from ..errors import SelfsupError
from ..files import write_json
from ..tables import markdown_table
from .run import differences, plain

STAMP = "stamp.json"


def run_or_read(run_dir: str | Path, stamp: dict[str, Any], run: Callable[[bool], dict[str, Any]], *,
                finished: str | None = None) -> dict[str, Any]:
    """The summary of the run in ``run_dir`` made with the settings ``stamp``: read back when it
    finished (its ``summary.json``, holding ``finished`` when given), else ``run(resume)`` (resume:
    the directory holds a checkpoint). A run directory stamped with other settings (where it runs
    and how often it reports aside), or holding a run without a stamp, is refused, not reused."""
    run_dir = Path(run_dir)
    stamp = plain(stamp)
    stamp_file, summary_file = run_dir / STAMP, run_dir / "summary.json"
    started = (run_dir / "checkpoints" / "last.pt").is_file() or summary_file.is_file()
    if stamp_file.is_file():
        changed = differences(json.loads(stamp_file.read_text()), stamp)
        if changed:
            raise SelfsupError(f"{run_dir} was made with other settings ({'; '.join(changed)}); give the sweep "
                               "another output folder, or delete that run to redo it")
    elif started:
        raise SelfsupError(f"{run_dir} holds a run without a record of its settings (made before selfsup stamped "
                           "them), so it cannot be reused; give the sweep another output folder, or delete that run")
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        if finished is None or finished in summary:
            return summary
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(stamp_file, stamp)
    return run((run_dir / "checkpoints" / "last.pt").is_file())


def label_sweep(run: Callable[[float, int, Path, bool], dict[str, Any]], out_dir: str | Path,
                fractions: list[float], seeds: list[int], facts: dict[str, Any]) -> dict[str, Any]:
    """``run(fraction, seed, run_dir, resume)`` for every fraction and seed in ``out_dir/<pct>pct-seed<s>``
    (:func:`run_or_read`: finished runs read back, interrupted ones resumed, each stamped with
    ``facts``, its fraction and seed), summarised in ``finetune.json`` / ``.md``. ``facts["settings"]``
    is the :class:`~selfsup.recipes.ClassifierTraining` every run trains with (its seed replaced)."""
    out_dir = Path(out_dir)
    if not fractions or not seeds:
        raise SelfsupError("give at least one label fraction and one seed")
    settings = dataclasses.asdict(facts["settings"])
    runs: dict[str, dict[str, float]] = {}
    for fraction in fractions:
        label = f"{100 * fraction:g}%"
        runs[label] = {}
        for seed in seeds:
            run_dir = out_dir / f"{100 * fraction:g}pct-seed{seed}"
            stamp = {**facts, "settings": {**settings, "seed": seed}, "labels": fraction}
            summary = run_or_read(run_dir, stamp, lambda resume: run(fraction, seed, run_dir, resume),
                                  finished="test_top1")
            runs[label][str(seed)] = summary["test_top1"]
    rows = []
    for label, by_seed in runs.items():
        values = list(by_seed.values())
        rows.append({"labels": label, "seeds": len(values), "mean top-1 (%)": round(statistics.mean(values), 2),
                     "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
                     "runs": ", ".join(f"{v:.2f}" for v in values)})
    report = {**facts, "settings": settings, "seeds": seeds, "runs": runs, "summary": rows}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "finetune.json", report)
    (out_dir / "finetune.md").write_text(markdown_table(rows, ["labels", "seeds", "mean top-1 (%)", "std", "runs"])
                                         + "\n")
    return report
