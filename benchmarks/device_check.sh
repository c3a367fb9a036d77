#!/usr/bin/env bash
# Run on a lent GPU machine (see benchmarks/device_prepare.sh for what it needs carried): installs
# the carried wheels next to the machine's PyTorch, then benchmarks/gpu_check.py, whose RESULTS.md
# section and JSON come back under $OUT, then benchmarks/gpu_views.py (the views op by op, about a
# minute and a half; RESULTS 31).
set -uo pipefail
export PYTHONUNBUFFERED=1
if ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || echo "some carried wheels did not install" >&2
    export PYTHONPATH="/tmp/site:$PWD/src"
else
    export PYTHONPATH="$PWD/src"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
data=()
[ -d data/fashion-mnist ] && data=(--data-root data/fashion-mnist)
out="${OUT:-benchmarks/out}"
python3 benchmarks/gpu_check.py "${data[@]}" --out "$out/gpu_check.md" 2>&1 | tee "$out/gpu_check.log"
python3 benchmarks/gpu_views.py --out "$out/gpu_views.json" 2>&1 | grep -v '^USDT\|^ERROR.*gpuGetDeviceCount' | tee "$out/gpu_views.log"
