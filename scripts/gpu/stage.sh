#!/usr/bin/env bash
# Stage the large assets on the GPU machine over consecutive device calls (each call carries <= 64 MiB).
# Run scripts/gpu/prepare.sh here first; then carry one of .gpu/p1 .. .gpu/p6 per call, with
# .gpu/SHA256SUMS and .gpu/pieces, and `source scripts/gpu/stage.sh` at the start of every call. Parts collect
# in /tmp/bd, which survives between calls while the machine stays warm. Each asset is checked against its
# checksum and unpacked as soon as its own parts are there: p1 the training images and the last part the test
# images (with both a teacher can train), p2 the wheels
# (installed into /tmp/site where the machine lacks the package), p3.. the Inception (FID).
# It exports the variables the project reads and prints what is ready. Source it as a command of its own
# (`source scripts/gpu/stage.sh;`), never in a pipeline: a pipeline runs it in a subshell and the exports are lost.
S=${BDENSE_STAGE_DIR:-/tmp/bd}  # where the parts collect and unpack (a test points it elsewhere)
mkdir -p $S/parts $S/cache $S/data $S/assets
for f in .gpu/p*/*; do
  case $(basename "$f") in data.tar|test.tar|whl.tar) [ -f "$S/$(basename "$f" .tar).done" ] && continue;;
    inception.pt.*) [ -f $S/assets/inception.pt ] && continue;; esac
  [ -f "$f" ] && [ ! -e "$S/parts/$(basename "$f")" ] && cp "$f" $S/parts/
done
for f in SHA256SUMS pieces; do [ -f .gpu/$f ] && cp .gpu/$f $S/$f; done
# A run folder's pack (.gpu/runs/runs.tgz.part.*, .sha256, .npieces) may come over several calls when it and the
# working tree pass the size limit together: its pieces collect in $S/parts/runs until study.sh restores it.
if [ ! -d $S/runs ] && ls .gpu/runs/runs.tgz.part.* >/dev/null 2>&1; then
  mkdir -p $S/parts/runs && cp .gpu/runs/runs.tgz.* $S/parts/runs/
fi
# torch.compile's portable cache (bdense_core.fast.portable_compile_cache): what an earlier machine's processes saved
# into $S/compile/new, brought back as compile.tgz (`tar -czf /tmp/bd/compile.tgz -C /tmp/bd/compile/new .` and
# `bg.sh pull` it; here, the pieces joined into .gpu/compile/compile.tgz, carried in a call of its own: the working
# tree leaves too little room beside a p-part), is unpacked into $S/compile, whose *.bin every process loads before
# its first compile; processes save theirs into $S/compile/new.
mkdir -p $S/compile
for f in .gpu/compile/*.tgz; do
  [ -f "$f" ] && [ ! -f "$S/compile/$(basename "$f").done" ] && tar -C $S/compile -xzf "$f" && touch "$S/compile/$(basename "$f").done"
done
for f in .gpu/compile/*.bin; do [ -f "$f" ] && [ ! -e "$S/compile/$(basename "$f")" ] && cp "$f" $S/compile/; done
_stage_sum() { grep " $1\$" $S/SHA256SUMS 2>/dev/null | cut -d' ' -f1; }
for t in data test whl; do
  if [ -f $S/parts/$t.tar ] && [ ! -f $S/$t.done ]; then
    if [ "$(sha256sum $S/parts/$t.tar | cut -d' ' -f1)" = "$(_stage_sum $t.tar)" ]; then
      tar -C $S -xf $S/parts/$t.tar && rm -f $S/parts/$t.tar && touch $S/$t.done
    else echo "stage: $t.tar checksum mismatch; dropped, stage it again"; rm -f $S/parts/$t.tar; fi
  fi
done
PIECES=$(cat $S/pieces 2>/dev/null || echo 3)
if [ ! -f $S/assets/inception.pt ] && [ "$(ls $S/parts/ | grep -c '^inception.pt.')" -eq "$PIECES" ]; then
  cat $S/parts/inception.pt.* > $S/inception.tmp
  if [ "$(sha256sum $S/inception.tmp | cut -d' ' -f1)" = "$(_stage_sum inception.pt)" ]; then
    mv $S/inception.tmp $S/assets/inception.pt && rm -f $S/parts/inception.pt.*
  else echo "stage: Inception checksum mismatch; pieces dropped, stage them again"; rm -f $S/parts/inception.pt.* $S/inception.tmp; fi
fi
if [ -f $S/whl.done ] && [ ! -f $S/wheels.done ]; then
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
# A teacher's training checkpoint brought back by `bg.sh pull` (.gpu/teacher-KEY/: checkpoint.pt.part.*, checkpoint.pt.npieces,
# checkpoint.pt.sha256, config.json; carry its pieces over as many calls as the size limit needs): once all pieces are
# here and the checksum holds, it becomes KEY's checkpoint in the cache, where train_teacher resumes it.
for d in .gpu/teacher-*/; do
  [ -d "$d" ] || continue
  key=$(basename "$d"); key=${key#teacher-}; dest=$S/cache/teachers/$key; P=$S/parts/teacher-$key
  [ -f $dest/teacher.pt ] || [ -f $dest/checkpoint.pt ] && continue
  mkdir -p $P
  cp "$d"/checkpoint.pt.part.* "$d"/checkpoint.pt.npieces "$d"/checkpoint.pt.sha256 "$d"/config.json $P/ 2>/dev/null
  have=$(ls $P/ | grep -c '^checkpoint\.pt\.part\.[a-z]*$'); want=$(cat $P/checkpoint.pt.npieces 2>/dev/null || echo 0)
  if [ "$have" -eq "$want" ]; then
    cat $P/checkpoint.pt.part.* > $S/ckpt.tmp
    if [ "$(sha256sum $S/ckpt.tmp | cut -d' ' -f1)" = "$(cut -d' ' -f1 $P/checkpoint.pt.sha256)" ]; then
      mkdir -p $dest && cp $P/config.json $dest/ && mv $S/ckpt.tmp $dest/checkpoint.pt \
        && rm -rf $P && echo "stage: teacher $key's checkpoint is in the cache (training resumes there)"
    else echo "stage: teacher $key's checkpoint fails its checksum; pieces dropped"; rm -rf $P $S/ckpt.tmp; fi
  else echo "stage: teacher $key's checkpoint: $have of $want pieces"; fi
done
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export BDENSE_CACHE_DIR=$S/cache BDENSE_DATA_DIR=$S/data BDENSE_FASHION_MNIST_DIR=$S/assets/fmnist
# where the Inception is or will be: a job started before its last piece came (a teacher in training) finds it
# when it scores, and one that needs it earlier stops with a line naming this file
export BDENSE_INCEPTION=$S/assets/inception.pt
export BDENSE_COMPILE_CACHE=$S/compile
# what is ready, as one line (also deadline.sh's need_assets, in a chain that sourced this file)
stage_status() {
  echo "stage: data=$([ -f $S/data.done ] && [ -f $S/test.done ] && echo yes || echo no) wheels=$([ -f $S/wheels.done ] && echo yes || echo no)" \
    "inception=$([ -f $S/assets/inception.pt ] && echo yes || echo "$(ls $S/parts/ | grep -c '^inception.pt.')/$PIECES pieces")" \
    "compile-cache=$(ls $S/compile/*.bin 2>/dev/null | wc -l) file(s)"
}
stage_status
