#!/usr/bin/env bash
# The README's run command (`make run DATASET=homedepot|fashion|sample`): the whole nightly chain
# through Airflow on one dataset, locally, then a summary.
#
#   scripts/run_nightly.sh [homedepot|fashion|sample]        (default: homedepot)
#
# 1. a project-local Airflow (AIRFLOW_HOME=var/airflow, SQLite; `airflow db migrate` on first use) and
#    a local-mode Spark connection `mmp_spark` (local[2]);
# 2. `airflow dags test` of mm_catalog_daily -> mm_ranker_weekly -> mm_scoring_nightly (the real DAGs,
#    every task really runs; no scheduler needed) with the dataset's config as the run's `config` param;
# 3. `mmpipeline summary` (tables and row counts, the champion's metrics, top results for a few queries)
#    and the wall time of every stage.
# Without ../shared/datasets (or MMP_DATASETS) the generated sample catalog is used.
#
# Knobs (environment):
#   MMP_RUN_DATE=YYYY-MM-DD  logical date of the three runs (default: today, UTC)
#   MMP_FULL=1               no demo subsampling: the whole dataset (default: a subsample sized for ~10 min)
#   MMP_OVERRIDES="k=v ..."  extra config overrides for every stage (as `--set k=v`)
#   MMP_FULL_REFRESH=1       recompute everything (embed re-encodes all; the ranker and scoring DAGs run
#                            even when their inputs did not change)
#   MMP_FORCE=1              the ranker and scoring DAGs run even when their inputs did not change since
#                            their last successful run (default: such a re-run skips them, see check_inputs)
#   MMP_VERBOSE=1            stream Airflow's whole output (default: progress lines; full logs under
#                            var/airflow/runs/<date>/)
#   MMP_TASK_RETRIES=N       task retries (default 0 here, to fail fast; the DAGs' own default is 2)
#   MMP_SPARK_MASTER=URL     Spark master of the mmp_spark connection (default local[2])
#   MMP_VOICE_CLIPS=N        voice clips transcribed in the demo run (default 200 of the 500; MMP_FULL=1: all)
#   MMP_TUNE_PAIRS=N         pairs the text tower is fine-tuned on in the demo run (default 1,000;
#                            MMP_FULL=1: text_tune.max_pairs, 6,000)
set -euo pipefail

DATASET="${1:-${DATASET:-homedepot}}"
source "$(dirname "$0")/airflow_env.sh"
cd "$MMP_REPO"

case "$DATASET" in homedepot|fashion|sample) ;; *)
  echo "usage: $0 [homedepot|fashion|sample]" >&2; exit 2 ;;
esac

DATASETS_DIR="${MMP_DATASETS:-$MMP_REPO/../shared/datasets}"
need_file=""
[ "$DATASET" = homedepot ] && need_file="$DATASETS_DIR/homedepot/relevance.csv"
[ "$DATASET" = fashion ] && need_file="$DATASETS_DIR/fashion/products.csv"
if [ -n "$need_file" ] && [ ! -f "$need_file" ]; then
  echo "run: $need_file not found (set MMP_DATASETS to the shared datasets folder); using the generated sample catalog"
  DATASET=sample
fi
if [ "$DATASET" = sample ]; then
  export MMP_SAMPLE_DATA="${MMP_SAMPLE_DATA:-$MMP_REPO/var/sample-data}"
  if [ ! -f "$MMP_SAMPLE_DATA/products.csv" ]; then
    echo "run: generating the sample catalog in $MMP_SAMPLE_DATA"
    mmpipeline sample-data "$MMP_SAMPLE_DATA" >/dev/null
  fi
fi
CONFIG="$MMP_REPO/configs/$DATASET.yaml"

# Demo size: a deterministic subsample so the default run takes about 10 minutes on 2 cores.
OVERRIDES=()
if [ "${MMP_FULL:-0}" != 1 ]; then
  case "$DATASET" in
    homedepot)  # sample by query so products, queries and judgments stay consistent
      for s in products queries judgments; do
        OVERRIDES+=("sources.$s.params.sample_size=${MMP_SAMPLE_QUERIES:-1200}" "sources.$s.params.sample_by=search_term")
      done
      # voice: the config keeps the spoken queries in the sample (sample_keep); transcribe a subset of clips
      OVERRIDES+=("voice.max_clips=${MMP_VOICE_CLIPS:-200}") ;;
    fashion)
      OVERRIDES+=("sources.products.params.sample_size=${MMP_SAMPLE_PRODUCTS:-3000}") ;;
  esac
  # the text tower's fine-tune on the demo's budget (the config default, 6,000 pairs, is for whole catalogs)
  OVERRIDES+=("text_tune.max_pairs=${MMP_TUNE_PAIRS:-1000}")
fi
# Images: mm_catalog_daily's train_image_tower task trains and registers the image tower before embed
# (fashion, sample; a no-op on a re-run with the same inputs) and embed only loads it. Home Depot has
# titles only (no product images): images off, so train_image_tower does nothing and embed is text-only.
[ "$DATASET" = homedepot ] && OVERRIDES+=("embed.embed_images=false")
# shellcheck disable=SC2206
[ -n "${MMP_OVERRIDES:-}" ] && OVERRIDES+=(${MMP_OVERRIDES})

RUN_DATE="${MMP_RUN_DATE:-$(date -u +%F)}"
export MMP_TASK_RETRIES="${MMP_TASK_RETRIES:-0}"
if [ -z "${AIRFLOW_CONN_MMP_SPARK:-}" ]; then
  export AIRFLOW_CONN_MMP_SPARK="{\"conn_type\": \"spark\", \"host\": \"${MMP_SPARK_MASTER:-local[2]}\"}"
fi
LOG_DIR="$AIRFLOW_HOME/runs/$RUN_DATE"
mkdir -p "$LOG_DIR"

CONF="$(python - "$CONFIG" "${MMP_FULL_REFRESH:-0}" "${MMP_FORCE:-0}" "${OVERRIDES[@]}" <<'PY'
import json, sys
config, full, force, *overrides = sys.argv[1:]
print(json.dumps({"config": config, "full_refresh": full == "1", "force": force == "1", "overrides": overrides}))
PY
)"

echo "run: dataset $DATASET, config $CONFIG, run date $RUN_DATE"
echo "run: AIRFLOW_HOME=$AIRFLOW_HOME, spark connection mmp_spark=$AIRFLOW_CONN_MMP_SPARK"
[ ${#OVERRIDES[@]} -gt 0 ] && echo "run: config overrides: ${OVERRIDES[*]}"
mmp_airflow_db_ready

T_START=$(date +%s)
declare -A DAG_SECONDS=()
run_dag() {
  local dag="$1" log="$LOG_DIR/$1.log" t0 rc=0
  t0=$(date +%s)
  echo
  echo "=== $dag ($(date -u +%H:%M:%S) UTC) -- full log: $log"
  if [ "${MMP_VERBOSE:-0}" = 1 ]; then
    airflow dags test "$dag" "$RUN_DATE" -c "$CONF" 2>&1 | tee "$log" || rc=$?
  else
    airflow dags test "$dag" "$RUN_DATE" -c "$CONF" >"$log" 2>&1 &
    local pid=$!
    # progress: task starts/ends, the stages' own start/done lines, and why a task was skipped
    # (check_inputs: the inputs did not change since the DAG's last successful run)
    tail -n +1 --pid="$pid" -f "$log" 2>/dev/null | grep -a --line-buffered -E \
      '\[DAG TEST\] (starting task_id|end task)|INFO mmpipeline: stage |mmpipeline: task .* failed|Task failed|Skipping task|DagRun Finished' \
      | sed -u -E 's/^[0-9T:.-]+Z \[[a-z ]+\] //; s/^Skipping task\. +\[task\] loc=[^ ]+ reason=/    skipped: /; s/ \[airflow[^]]*\] loc=.*$//; s/^\[DAG TEST\] /  /; s/ map_index=-1//; s/^[0-9:]+ INFO mmpipeline: /    /' || true
    wait "$pid" || rc=$?
  fi
  DAG_SECONDS[$dag]=$(( $(date +%s) - t0 ))
  if [ "$rc" != 0 ]; then
    echo
    echo "run: $dag FAILED after ${DAG_SECONDS[$dag]}s; last lines of $log:"
    tail -40 "$log" | cut -c1-600
    python -m mmpipeline.orchestration.timings timings --db "$AIRFLOW_HOME/airflow.db" --logical-date "$RUN_DATE" \
      mm_catalog_daily mm_ranker_weekly mm_scoring_nightly || true
    exit "$rc"
  fi
  echo "=== $dag: success in ${DAG_SECONDS[$dag]}s"
}

run_dag mm_catalog_daily
run_dag mm_ranker_weekly
run_dag mm_scoring_nightly
T_DAGS=$(( $(date +%s) - T_START ))

echo
SET_ARGS=()
for o in "${OVERRIDES[@]}"; do SET_ARGS+=(--set "$o"); done
mmpipeline --log-level WARNING summary --config "$CONFIG" --run-date "$RUN_DATE" "${SET_ARGS[@]}" \
  || echo "run: summary failed (see above)"
echo
python -m mmpipeline.orchestration.timings timings --db "$AIRFLOW_HOME/airflow.db" --logical-date "$RUN_DATE" \
  --dag-seconds "mm_catalog_daily=${DAG_SECONDS[mm_catalog_daily]}" \
  --dag-seconds "mm_ranker_weekly=${DAG_SECONDS[mm_ranker_weekly]}" \
  --dag-seconds "mm_scoring_nightly=${DAG_SECONDS[mm_scoring_nightly]}" \
  mm_catalog_daily mm_ranker_weekly mm_scoring_nightly
echo "run: the three DAGs took ${T_DAGS}s in all ($(( $(date +%s) - T_START ))s with the summary); logs in $LOG_DIR"
