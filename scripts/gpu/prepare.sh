#!/usr/bin/env bash
# Run here (not on the GPU machine): fill .gpu/ with what scripts/gpu/stage.sh stages there.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/.gpu/" >> .git/info/exclude; }
mkdir -p .gpu/inc1 .gpu/inc2 .gpu/inc3 .gpu/fmnist .gpu/whl
inc=$(.venv/bin/python -c "from bdense_core.fid import fid_helper_file; print(fid_helper_file())")
sha256sum "$inc" > .gpu/inception.sha256
split -b 29m "$inc" /tmp/incpart.
mv /tmp/incpart.aa .gpu/inc1/; mv /tmp/incpart.ab .gpu/inc2/; mv /tmp/incpart.ac .gpu/inc3/
cp /usr/share/datasets/fashion-mnist/*.gz .gpu/fmnist/
(cd .gpu/whl && python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  clean-fid==0.1.35 optuna==5.0.0 alembic mako colorlog sqlalchemy greenlet)
du -sh .gpu/*
