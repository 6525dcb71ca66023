#!/usr/bin/env bash
# Second database on the same Postgres server: the MLflow tracking/registry store.
# Runs once, on the first start of an empty data volume (docker-entrypoint-initdb.d). The password
# comes from MLFLOW_DB_PASSWORD (required by docker-compose.yml); nothing here is a fixed secret.
set -euo pipefail
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD (see docker/.env.example)}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v pw="$MLFLOW_DB_PASSWORD" <<'SQL'
CREATE USER mlflow WITH PASSWORD :'pw';
CREATE DATABASE mlflow OWNER mlflow;
SQL
