#!/usr/bin/env bash
# The ladder's DINO-ViT row (RESULTS 29) again, on a lent GPU machine: 10 epochs of DINO on ViT-tiny, 2 global
# + 6 local crops. The row in benchmarks/ladder/ was trained on a 2-core CPU (146 minutes on machine C, RESULTS
# 29); this run says how long it takes on a GPU (not yet timed) and whether its scores reproduce there. Needs only
# the Fashion-MNIST files carried (benchmarks/device_prepare.sh writes them):
#   run(command="bash benchmarks/device_ladder.sh", carry=["data/fashion-mnist"], timeout_s=590)
# The ladder's report is copied under $OUT and grown there: the floor and supervised rows it has are
# skipped and the DINO-ViT row trained again (--again), so only that row trains. What comes back (ladder.json, .md, .png, and the run's csv
# and json, not its checkpoints) is set beside the CPU row in RESULTS 29, by hand; it does not replace it.
# Arguments are passed on to ladder.py after these defaults (a later option wins), e.g. a CPU smoke run:
#   OUT=/tmp/ladder-smoke bash benchmarks/device_ladder.sh --device cpu --epochs 1 --subset 512
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
out="${OUT:-benchmarks/out/device-ladder}"
runs="${RUNS:-/tmp/ladder-runs}"  # the checkpoints stay on the machine: only the report comes back
mkdir -p "$out/ladder" "$runs"
cp "${LADDER:-benchmarks/ladder}/ladder.json" "$out/ladder/"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
data=()
[ -d data/fashion-mnist ] && data=(--data-root data/fashion-mnist)
# 540 s, within the device's 10-minute call: a stop (SIGTERM) saves the run's checkpoint under $RUNS and the
# logs below still come back; the same call on the still-warm machine then resumes the run
timeout -s TERM 540 python3 benchmarks/ladder.py --device cuda --epochs 10 --methods --vit-methods dino \
    --again "dino (vit_tiny)" "${data[@]}" --out "$runs" --report "$out/ladder" "$@" 2>&1 | tee "$out/ladder.log"
status=$?  # the ladder's (pipefail): 124 when the cap stopped it
for run in "$runs"/*/; do
    mkdir -p "$out/runs/$(basename "$run")"
    cp "$run"/*.csv "$run"/*.json "$out/runs/$(basename "$run")/" 2>/dev/null || true
done
exit $status
