"""The source notes' claims, one experiment each: ``selfsup reproduce NAME`` (issue 22).

Each module here is one claim, readable next to the note and the paper it comes from: what it
trains (through a :class:`~.lab.Lab`, which reuses finished runs with the same settings), what it
measures, and the rule that turns the numbers into a verdict (held / not held / inconclusive). The
default budget of every claim finishes in under an hour on a 2-core CPU; ``scale`` trains longer.
:data:`CLAIMS` lists them in the notes' order; :func:`last_verdicts` says what each gave last.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ..errors import SelfsupError, closest
from .lab import Budget, Claim, Lab, Verdict


def _claims() -> dict[str, Claim]:
    from . import (clusterfit_noise, distillation, jigsaw_permutations, lwf, pirl_jigsaw, selfie_labels, semisup,
                   simclr_v2)

    modules = (pirl_jigsaw, clusterfit_noise, selfie_labels, jigsaw_permutations, distillation, lwf, semisup,
               simclr_v2)
    return {module.CLAIM.name: module.CLAIM for module in modules}


CLAIMS: dict[str, Claim] = _claims()


def claim_named(name: str) -> Claim:
    if name not in CLAIMS:
        raise SelfsupError(f"no claim '{name}'{closest(name, list(CLAIMS))}; selfsup reproduce --list shows them")
    return CLAIMS[name]


def reproduce(name: str, out: str | Path, budget: Budget = Budget(), quiet: bool = False) -> Verdict:
    """Run claim ``name``'s experiment into ``out`` (its verdict in ``out/<name>``, its runs in
    ``out/runs``, shared with the other claims); a killed reproduction continues where it was."""
    claim = claim_named(name)
    lab = Lab(claim.name, out, budget, quiet)
    return lab.conclude(claim.experiment(lab), claim.statement, claim.source)


def last_verdicts(out: str | Path | None = None) -> dict[str, dict]:
    """Each claim's last verdict: the one measured in ``out`` when it holds one, else the one measured
    for this release (``measured.json``, beside this module), else none."""
    shipped = json.loads(resources.files(__package__).joinpath("measured.json").read_text())
    local_file = Path(out) / "verdicts.json" if out is not None else None
    local = json.loads(local_file.read_text()) if local_file is not None and local_file.is_file() else {}
    verdicts = {}
    for name in CLAIMS:
        if name in local:
            verdicts[name] = {**local[name], "where": str(out)}
        elif name in shipped:
            verdicts[name] = {**shipped[name], "where": "measured for this release"}
    return verdicts


__all__ = ["CLAIMS", "Budget", "Claim", "Lab", "Verdict", "claim_named", "last_verdicts", "reproduce"]
