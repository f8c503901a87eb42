#!/bin/bash
# pack speed, the round's start (20e4dd7) against HEAD, alternated, whole commands, fresh out dirs.
# Base tree: rm -rf /tmp/base && mkdir /tmp/base && git archive 20e4dd7 | tar -x -C /tmp/base
# Usage: bench/pack_vs_base.sh bench/work/x10.jsonl   (inputs: bench/common.py make_inputs)
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
for round in 1 2 3; do
  for side in base head; do
    out=/tmp/pb/$side-$round; rm -rf $out
    if [ $side = base ]; then
      cmd="env PYTHONPATH=/tmp/base /work/main/.venv/bin/python -m stages.cli pack /work/main/$1 --tokenizer /work/main/models/smollm2-135m-instruct --max-length 1024 --out-dir $out"
    else
      cmd=".venv/bin/python -m sftpack pack $1 --tokenizer models/smollm2-135m-instruct --max-length 1024 --out-dir $out"
    fi
    ( [ $side = base ] && cd /tmp/base; /usr/bin/time -f "$side $round %e s wall %U s user %M KB" $cmd > /tmp/pb/$side-$round.log 2>/tmp/pb/$side-$round.err ); tail -1 /tmp/pb/$side-$round.err
    sha256sum $out/*/data-*.arrow | cut -c1-16
  done
done
