"""The notes' claims at their default budget, one after another, and their verdicts recorded for the release.

Runs ``selfsup reproduce NAME`` for every claim (or ``--claims``) that ``OUT/verdicts.json`` does not
yet hold at this budget, each in its own process (a killed claim resumes inside the run it was in),
then copies every verdict measured at scale 1 into ``src/selfsup/reproduce/measured.json`` (what
``selfsup reproduce --list`` shows before a user has run anything) and prints the table for
RESULTS.md and the README.

    python benchmarks/claims.py                          # every claim not measured yet (hours on 2 cores)
    python benchmarks/claims.py --claims lwf-vs-finetune simclr-v2-head
    python benchmarks/claims.py --record-only            # only copy and print what OUT holds
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from selfsup.files import write_json
from selfsup.reproduce import CLAIMS
from selfsup.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "src" / "selfsup" / "reproduce" / "measured.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claims", nargs="+", default=list(CLAIMS), choices=list(CLAIMS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "reproduce"))
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--again", action="store_true", help="reproduce claims that already have a verdict")
    parser.add_argument("--record-only", action="store_true", help="run nothing: record and print what OUT holds")
    args = parser.parse_args()
    out = Path(args.out)
    index_file = out / "verdicts.json"
    budget = f"scale {args.scale:g}"

    def measured() -> dict:
        return json.loads(index_file.read_text()) if index_file.is_file() else {}

    for name in [] if args.record_only else args.claims:
        if not args.again and measured().get(name, {}).get("budget") == budget:
            continue
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "selfsup", "reproduce", name, "--out", str(out), "--scale",
                               str(args.scale), "--device", args.device, "--quiet"])
        print(f"{name}: exit {done.returncode} after {(time.perf_counter() - started) / 60:.1f} min", flush=True)

    verdicts = measured()
    release = {**json.loads(MEASURED.read_text()),  # verdicts recorded from other folders stay
               **{name: entry for name, entry in verdicts.items() if entry.get("budget") == "scale 1"}}
    write_json(MEASURED, {name: release[name] for name in CLAIMS if name in release})
    rows = [{"claim": f"`{name}`", "note": claim.note, "verdict": f"**{verdicts[name]['outcome']}**",
             "minutes": verdicts[name].get("minutes"), "finding": verdicts[name].get("finding", "")}
            for name, claim in CLAIMS.items() if name in verdicts]
    print(markdown_table(rows, ["claim", "note", "verdict", "minutes", "finding"]))
    print(f"\nrecorded {len(release)} verdicts at scale 1 in {MEASURED.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
