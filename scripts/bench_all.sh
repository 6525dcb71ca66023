#!/usr/bin/env bash
# `make bench`: every `mmpipeline bench` benchmark, each JSON result in var/bench/<name>.json (the
# benchmark's log next to it in var/bench/<name>.log), then a one-line status per benchmark.
#
#   clean            rows/s of the Spark clean stage vs plain pandas (~1M rows scaled from Home Depot)
#   embed            embed-job text/image throughput vs bare loops; incremental re-run cost
#   quality-<ds>     NDCG@10 / MRR / Recall@100 of BM25, text-only, image-only and every fusion variant
#                    (needs the dataset's lake: run `make run DATASET=<ds>` first)
#   score            pairs scored per second and stage wall time on each dataset with a champion
#   scale            every stage at 10k / 100k / 1M products scaled from the samples: seconds, rows/s,
#                    driver and process-tree peak RSS, Delta commits, scaling exponent b per stage
#
# Knobs: BENCHES="clean embed quality score voice scale" (subset to run; scale builds 10k/100k/1M-product catalogs and runs every stage on them: ~50 min), BENCH_DATASETS="homedepot fashion",
# BENCH_PARAMS_<name>="key=value ..." (extra --param for one benchmark, e.g. BENCH_PARAMS_clean="rows=200000").
set -uo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
[ -d .venv/bin ] && export PATH="$REPO/.venv/bin:$PATH"
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$(command -v python)}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT="$REPO/var/bench"
mkdir -p "$OUT"
BENCHES="${BENCHES:-clean embed quality score voice scale}"
DATASETS="${BENCH_DATASETS:-homedepot fashion}"
SHARED="${MMP_DATASETS:-$REPO/../shared/datasets}"
STATUS=()

# run NAME BENCH [mmpipeline args...]: stdout -> last JSON document -> var/bench/NAME.json
run() {
  local name="$1" bench="$2"; shift 2
  local var="BENCH_PARAMS_${bench}" extra=() t0 rc
  for p in ${!var:-}; do extra+=(--param "$p"); done
  echo "bench: $name ($(date -u +%H:%M:%S) UTC) ..."
  t0=$(date +%s)
  mmpipeline bench "$bench" "$@" "${extra[@]}" >"$OUT/$name.stdout" 2>"$OUT/$name.log"
  rc=$?
  if [ $rc = 0 ] && python - "$OUT/$name.stdout" "$OUT/$name.json" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
starts = [i for i, ch in enumerate(text) if ch == "{" and (i == 0 or text[i - 1] == "\n")]
for i in reversed(starts):
    try:
        doc = json.loads(text[i:])
    except ValueError:
        continue
    json.dump(doc, open(sys.argv[2], "w"), indent=2, default=str)
    sys.exit(0)
sys.exit(1)
PY
  then
    STATUS+=("ok      $name: $OUT/$name.json ($(( $(date +%s) - t0 ))s)")
  else
    STATUS+=("FAILED  $name (exit $rc after $(( $(date +%s) - t0 ))s): see $OUT/$name.log")
    tail -5 "$OUT/$name.log" | sed 's/^/    /'
  fi
  cat "$OUT/$name.stdout" >>"$OUT/$name.log" && rm -f "$OUT/$name.stdout"
}

lake_ready() {  # the dataset's lake has silver products and embeddings
  python - "$REPO/configs/$1.yaml" <<'PY'
import sys
from mmpipeline.config import load_config
from mmpipeline.lake import Lake
cfg = load_config(sys.argv[1])
lake = Lake(cfg.lake.root, engine="delta-rs")
sys.exit(0 if lake.exists("silver.products") and lake.exists("gold.product_embeddings") else 1)
PY
}

for b in $BENCHES; do
  case "$b" in
    clean)
      if [ -f "$SHARED/homedepot/relevance.csv" ]; then run clean clean --config configs/homedepot.yaml
      else STATUS+=("skipped clean: $SHARED/homedepot/relevance.csv not found"); fi ;;
    embed)
      if [ -f "$SHARED/fashion/products.csv" ]; then run embed embed
      else run embed embed --config configs/sample.yaml; fi ;;
    quality)
      for ds in $DATASETS; do
        if lake_ready "$ds" 2>/dev/null; then run "quality-$ds" quality --config "configs/$ds.yaml"
        else STATUS+=("skipped quality-$ds: no lake yet (run: make run DATASET=$ds)"); fi
      done ;;
    score)
      run score score ;;
    scale)
      if [ -f "$SHARED/homedepot/relevance.csv" ]; then
        # 10,000 texts really encoded (the rest reuse vectors by content hash: encoding every unique text
        # at 1M takes hours on 2 cores); the extra measurements (pandas, images, GE) at 1M only
        run scale scale --config configs/homedepot.yaml --param datasets="$SHARED" --param encode_budget=10000 --param extras_at=largest
      else STATUS+=("skipped scale: $SHARED/homedepot/relevance.csv not found"); fi ;;
    voice)
      if [ -f "$SHARED/voice/voice_queries.csv" ] && lake_ready homedepot 2>/dev/null; then
        run voice voice --config configs/homedepot.yaml
      else STATUS+=("skipped voice: needs $SHARED/voice and a homedepot lake (make run)"); fi ;;
    *) STATUS+=("unknown benchmark $b") ;;
  esac
done

echo
printf '%s\n' "${STATUS[@]}"
! printf '%s\n' "${STATUS[@]}" | grep -q '^FAILED'
