-- second database on the same Postgres server: the MLflow tracking/registry store
CREATE USER mlflow WITH PASSWORD 'mlflow';
CREATE DATABASE mlflow OWNER mlflow;
