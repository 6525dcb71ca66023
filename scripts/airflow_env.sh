# shellcheck shell=bash
# Project-local Airflow environment, sourced by scripts/run_nightly.sh and scripts/airflow_ui.sh.
# Use it by hand too:  source scripts/airflow_env.sh && airflow dags list
#
# AIRFLOW_HOME defaults to var/airflow (SQLite metadata DB, logs, generated airflow.cfg); the DAGs are
# read from this repository's dags/. Set MMP_AIRFLOW_HOME to use another folder.
MMP_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MMP_HOME="$MMP_REPO"
export AIRFLOW_HOME="${MMP_AIRFLOW_HOME:-$MMP_REPO/var/airflow}"
mkdir -p "$AIRFLOW_HOME"
if [ -d "$MMP_REPO/.venv/bin" ]; then
  case ":$PATH:" in *":$MMP_REPO/.venv/bin:"*) ;; *) export PATH="$MMP_REPO/.venv/bin:$PATH" ;; esac
fi
export AIRFLOW__CORE__DAGS_FOLDER="$MMP_REPO/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
export AIRFLOW__CORE__EXECUTOR="${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}"
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="${AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION:-True}"
export AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK=False
export AIRFLOW__API__EXPOSE_CONFIG=False
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$(command -v python)}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# Create or upgrade the metadata DB once per Airflow version (a stamp file avoids the ~10 s check).
mmp_airflow_db_ready() {
  local v stamp
  v="$(python -c 'from importlib.metadata import version; print(version("apache-airflow-core"))')"
  stamp="$AIRFLOW_HOME/.db-migrated-$v"
  if [ ! -f "$stamp" ] || [ ! -f "$AIRFLOW_HOME/airflow.db" ]; then
    echo "airflow: migrating the metadata DB at $AIRFLOW_HOME/airflow.db (Airflow $v)"
    airflow db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 || { tail -30 "$AIRFLOW_HOME/db-migrate.log"; return 1; }
    rm -f "$AIRFLOW_HOME"/.db-migrated-*
    touch "$stamp"
  fi
}
