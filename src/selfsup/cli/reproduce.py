"""``selfsup reproduce``: the source notes' claims, one experiment each, with a verdict."""
from __future__ import annotations

import argparse
import textwrap

from ..errors import SelfsupError
from .common import POSITIVE

EPILOG = """\
examples:
  selfsup reproduce --list                          # every claim and its last verdict
  selfsup reproduce lwf-vs-finetune                 # the default budget: under an hour on 2 CPU cores
  selfsup reproduce simclr-v2-head --scale 4        # four times the epochs and steps
  selfsup reproduce pirl-vs-jigsaw --smoke          # a minute: checks the pipeline, never the claim
Runs go to OUT/runs (shared by the claims: a run with the same settings is read back, not trained
again; a killed reproduction resumes), the verdict to OUT/NAME/verdict.md (appended to verdicts.md)
with its figure.
"""


def reproduce(args: argparse.Namespace) -> int:
    from ..reproduce import CLAIMS, Budget, last_verdicts, reproduce as run_claim

    if args.list:
        verdicts = last_verdicts(args.out)
        for claim in CLAIMS.values():
            last = verdicts.get(claim.name)
            said = (f"{last['outcome']} ({last['budget']}, {last['date'][:10]}, {last['where']})" if last
                    else "not measured yet")
            print(f"{claim.name:26s} {said}")
            print(textwrap.fill(f"{claim.statement} [{claim.source}; note {claim.note}]", 100,
                                initial_indent="    ", subsequent_indent="    "))
            print(f"    default: {claim.default}")
        return 0
    if args.name is None:
        raise SelfsupError("name a claim (selfsup reproduce --list shows them)")
    budget = Budget(scale=args.scale, smoke=args.smoke, device=args.device, data_root=args.data_root)
    verdict = run_claim(args.name, args.out, budget, quiet=args.quiet)
    print(f"{args.name}: {verdict.outcome}. {verdict.finding}")
    print(f"verdict and figure in {args.out}/{args.name}/")
    return 0


def add_parsers(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("reproduce", help="run one of the source notes' claims as an experiment and say whether "
                                              "it held", epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", help="the claim (see --list)")
    p.add_argument("--list", action="store_true", help="every claim, with its last verdict")
    p.add_argument("--out", default="runs/reproduce", help="where runs and verdicts go (default runs/reproduce)")
    p.add_argument("--scale", type=POSITIVE, default=1.0, help="multiply every epoch and step count of the default "
                                                               "budget (e.g. 4, or more on a GPU)")
    p.add_argument("--smoke", action="store_true", help="a toy network for a few steps: checks that the experiment "
                                                        "runs, gives no verdict")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", help="the Fashion-MNIST folder (default: where selfsup looks)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=reproduce)
