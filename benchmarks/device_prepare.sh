#!/usr/bin/env bash
# Prepare, on the development machine, what benchmarks/gpu_check.py needs on a lent GPU machine,
# which has PyTorch, numpy, Pillow, PyYAML, tqdm, matplotlib and scikit-learn but not kornia or
# lightly, and reaches no network. Writes (ignored by git, so `carry` must name them):
#   .whl/   kornia, kornia_rs and lightly as Python 3.12 wheels (lightly's modules, losses and
#           transforms import without hydra; lightning-utilities is on the machine already)
#   data/fashion-mnist/   the four idx files (from the Debian package dataset-fashion-mnist)
# Then, with the device tool (one call, within its 10-minute limit):
#   run(command="bash benchmarks/device_check.sh", carry=[".whl", "data/fashion-mnist"], timeout_s=590)
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl data/fashion-mnist
platforms=()
for n in 17 27 28 31 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 -d .whl \
    kornia==0.9.0 kornia_rs==0.2.0 lightly==1.6.0 || {
    echo "pip could not download every wheel; gpu_check runs without what is missing (lightly: part c skipped)" >&2; }
src=/usr/share/datasets/fashion-mnist
if [ -d "$src" ]; then
    cp "$src"/*-ubyte.gz data/fashion-mnist/
else
    echo "no $src: apt-get install -y dataset-fashion-mnist, or part (e) of the check is skipped" >&2
fi
du -sh .whl data/fashion-mnist
