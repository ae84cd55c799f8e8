#!/usr/bin/env bash
# Stage the large assets on the GPU machine over consecutive device calls (each call carries <= 64 MiB).
# Run scripts/gpu/prepare.sh here first; then carry .gpu/p1 .. .gpu/pN (and .gpu/assets.sha256, .gpu/nparts),
# one part per call, and `source scripts/gpu/stage.sh` at the start of every call. Parts collect in /tmp/bd, which
# survives between calls while the machine stays warm; when all N are there the tar is checked and
# unpacked, and the wheels whose packages the machine lacks are installed into /tmp/site.
# It exports the variables the project reads and prints what is ready.
S=/tmp/bd
mkdir -p $S/parts $S/cache $S/data
for f in .gpu/p*/part.*; do [ -f "$f" ] && cp -n "$f" $S/parts/; done
[ -f .gpu/assets.sha256 ] && cp .gpu/assets.sha256 $S/assets.sha256
[ -f .gpu/nparts ] && cp .gpu/nparts $S/nparts
NPARTS=$(cat $S/nparts 2>/dev/null || echo 3)
if [ ! -d $S/assets ] && [ "$(ls $S/parts | wc -l)" -eq "$NPARTS" ]; then
  if [ "$(cat $S/parts/part.* | sha256sum | cut -d' ' -f1)" = "$(cat $S/assets.sha256 2>/dev/null)" ]; then
    cat $S/parts/part.* | tar -C $S -xf - && rm -f $S/parts/part.*
  else
    echo "stage: assets checksum mismatch; parts dropped, stage them again"; rm -f $S/parts/part.*
  fi
fi
if [ -d $S/assets/whl ] && [ ! -f $S/wheels.done ]; then
  missing=()
  for w in $S/assets/whl/*.whl; do
    dist=$(basename "$w" | cut -d- -f1)
    python3 -c "import importlib.metadata as m, sys; m.version(sys.argv[1].replace('_', '-'))" "$dist" 2>/dev/null \
      || missing+=("$w")
  done
  if [ ${#missing[@]} -eq 0 ]; then touch $S/wheels.done
  else python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "${missing[@]}" \
    && touch $S/wheels.done; fi
  echo "stage: installed ${#missing[@]} wheels into /tmp/site"
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export BDENSE_CACHE_DIR=$S/cache BDENSE_DATA_DIR=$S/data BDENSE_FASHION_MNIST_DIR=$S/assets/fmnist
[ -f $S/assets/inception.pt ] && export BDENSE_INCEPTION=$S/assets/inception.pt
echo "stage: assets=$([ -d $S/assets ] && echo ready || echo "$(ls $S/parts | wc -l)/$NPARTS parts") wheels=$([ -f $S/wheels.done ] && echo yes || echo no)"
