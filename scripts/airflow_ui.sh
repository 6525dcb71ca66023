#!/usr/bin/env bash
# `make airflow-ui`: Airflow locally on http://127.0.0.1:8080 (api-server + scheduler + dag-processor,
# LocalExecutor, SQLite metadata DB under var/airflow), serving this repository's dags/.
# Ctrl-C stops all three.
#
# Knobs: MMP_AIRFLOW_PORT (8080), MMP_AIRFLOW_PASSWORD (login password of user "admin"; default: a
# random one generated once and kept in var/airflow/simple_auth_manager_passwords.json.generated),
# MMP_SPARK_MASTER (master of the mmp_spark connection created on first start; default local[2]).
set -euo pipefail
source "$(dirname "$0")/airflow_env.sh"
cd "$MMP_REPO"

PORT="${MMP_AIRFLOW_PORT:-8080}"
HOST=127.0.0.1
BASE="http://$HOST:$PORT"
PWFILE="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
SECRETS="$AIRFLOW_HOME/.local-secrets"

if (echo >"/dev/tcp/$HOST/$PORT") 2>/dev/null; then
  echo "airflow-ui: port $PORT on $HOST is already in use (another Airflow?); set MMP_AIRFLOW_PORT" >&2
  exit 1
fi

# Local secrets, generated once: the API's session key and the JWT secret shared by the api-server and
# the scheduler (task workers authenticate to the execution API with it).
if [ ! -f "$SECRETS" ]; then
  python - "$SECRETS" <<'PY'
import secrets, sys
with open(sys.argv[1], "w") as f:
    f.write(f"export AIRFLOW__API__SECRET_KEY={secrets.token_hex(16)}\n")
    f.write(f"export AIRFLOW__API_AUTH__JWT_SECRET={secrets.token_hex(32)}\n")
PY
  chmod 600 "$SECRETS"
fi
# shellcheck disable=SC1090
source "$SECRETS"

export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$PWFILE"
export AIRFLOW__API__HOST="$HOST" AIRFLOW__API__PORT="$PORT" AIRFLOW__API__WORKERS=1
export AIRFLOW__API__BASE_URL="$BASE"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="$BASE/execution/"
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-2}"

if [ -n "${MMP_AIRFLOW_PASSWORD:-}" ] || [ ! -f "$PWFILE" ]; then
  python - "$PWFILE" "${MMP_AIRFLOW_PASSWORD:-}" <<'PY'
import json, secrets, sys
path, pw = sys.argv[1], sys.argv[2] or secrets.token_urlsafe(9)
with open(path, "w") as f:
    json.dump({"admin": pw}, f)
PY
  chmod 600 "$PWFILE"
fi
PASSWORD="$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin"])' "$PWFILE")"

mmp_airflow_db_ready
# The Spark connection the DAGs use, in the metadata DB so it can be edited in Admin -> Connections
# (point it at spark://host:7077, yarn or k8s://... to run the Spark stages on a cluster).
airflow connections add mmp_spark --conn-type spark --conn-host "${MMP_SPARK_MASTER:-local[2]}" \
  --conn-description "mmpipeline Spark stages (local mode by default)" >"$AIRFLOW_HOME/connections.log" 2>&1 \
  || grep -q "already exists" "$AIRFLOW_HOME/connections.log" \
  || { cat "$AIRFLOW_HOME/connections.log"; exit 1; }

mkdir -p "$AIRFLOW_HOME/logs"
PIDS=()
stop() {
  trap - INT TERM EXIT
  echo; echo "airflow-ui: stopping"
  for pid in "${PIDS[@]}"; do kill -TERM "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  sleep 2
  for pid in "${PIDS[@]}"; do kill -KILL "-$pid" 2>/dev/null || true; done
}
trap stop INT TERM EXIT
for component in api-server scheduler dag-processor; do
  args=("$component")
  [ "$component" = api-server ] && args+=(--host "$HOST" --port "$PORT")
  setsid airflow "${args[@]}" >"$AIRFLOW_HOME/logs/$component.log" 2>&1 &
  PIDS+=($!)
done

echo "airflow-ui: starting api-server, scheduler and dag-processor (logs: $AIRFLOW_HOME/logs/*.log)"
for _ in $(seq 1 180); do
  if curl -fs "$BASE/api/v2/monitor/health" >/dev/null 2>&1; then break; fi
  for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "airflow-ui: a component exited; see $AIRFLOW_HOME/logs/"; exit 1; }
  done
  sleep 2
done

cat <<EOF

  Airflow is up:  $BASE        user: admin   password: $PASSWORD
  DAGs (from $AIRFLOW__CORE__DAGS_FOLDER): mm_catalog_daily, mm_ranker_weekly, mm_scoring_nightly
  They start paused: switch a DAG on, then "Trigger" -> the form takes config, run_date, full_refresh,
  model_alias and overrides (e.g. config = configs/sample.yaml), plus allow_empty_source (catalog) and
  force (ranker, scoring: run even when the inputs did not change since the last successful run).

  REST API v2 (JWT first):
    TOKEN=\$(curl -s -X POST $BASE/auth/token -H 'Content-Type: application/json' \\
      -d '{"username": "admin", "password": "$PASSWORD"}' | python -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
    curl -s -X PATCH $BASE/api/v2/dags/mm_catalog_daily -H "Authorization: Bearer \$TOKEN" \\
      -H 'Content-Type: application/json' -d '{"is_paused": false}'
    curl -s -X POST $BASE/api/v2/dags/mm_catalog_daily/dagRuns -H "Authorization: Bearer \$TOKEN" \\
      -H 'Content-Type: application/json' \\
      -d '{"logical_date": null, "conf": {"config": "configs/sample.yaml", "run_date": "$(date -u +%F)", "full_refresh": false}}'

  Ctrl-C stops Airflow.
EOF
wait
