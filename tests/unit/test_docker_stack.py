"""docker/: no engine here, so the image and the compose stack are kept correct by parsing them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def _pinned(image: str) -> bool:
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag != "latest" and re.search(r"\d", tag) is not None


def _lock_version(pkg: str) -> str:
    for line in (REPO / "requirements" / "lock.txt").read_text().splitlines():
        if line.lower().startswith(f"{pkg}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{pkg} not in the lock")


def test_compose_has_the_services_and_pins_every_image():
    c = _compose()
    services = c["services"]
    assert {"postgres", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "spark-master", "spark-worker", "mlflow"} <= set(services)
    for name, svc in services.items():
        assert "image" in svc, f"{name} has no image"
        assert _pinned(svc["image"]), f"{name}: image {svc['image']} is not pinned to a version"
        if "build" in svc:
            assert svc["build"]["dockerfile"] == "docker/Dockerfile"
            assert (DOCKER / svc["build"]["context"]).resolve() == REPO
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert services["airflow-scheduler"]["image"] == f"mmpipeline:{version}"


def test_compose_airflow_wiring():
    s = _compose()["services"]
    env = s["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-apiserver:8080/")
    assert "spark://spark-master" in env["AIRFLOW_CONN_MMP_SPARK"]
    assert env["MMP__MLFLOW__TRACKING_URI"] == "http://mlflow:5000"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/mmpipeline/dags"
    assert "api-server" in s["airflow-apiserver"]["command"] and "8080:8080" in s["airflow-apiserver"]["ports"]
    assert s["airflow-dag-processor"]["command"] == ["airflow", "dag-processor"]
    assert s["airflow-scheduler"]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert "spark://spark-master:7077" in s["spark-worker"]["command"]
    assert "mlflow" in s["mlflow"]["command"] and "postgresql" in " ".join(s["mlflow"]["command"])
    assert (DOCKER / "postgres-init.sql").read_text().count("CREATE DATABASE mlflow") == 1


def test_dockerfile_pins_java_lock_and_delta_jars_matching_the_lock():
    text = (DOCKER / "Dockerfile").read_text()
    froms = re.findall(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M)
    assert froms and all(_pinned(f) for f in froms) and "3.11" in froms[0]
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}", text, re.M)
    assert "openjdk-17" in text
    assert "requirements/lock.txt" in text and "uv pip install --system --no-cache -r requirements/lock.txt" in text
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    assert args["DELTA_VERSION"] == _lock_version("delta-spark")
    pyspark = _lock_version("pyspark")
    assert args["SPARK_MINOR"] == ".".join(pyspark.split(".")[:2])
    assert "delta-spark_${SPARK_MINOR}_${SCALA_BINARY}" in text and "delta-storage" in text
    assert "spark-defaults.conf" in text
    for src in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (REPO / src).exists(), f"COPY source {src} missing"


def test_spark_defaults_configure_delta():
    conf = dict(line.split(None, 1) for line in (DOCKER / "spark-defaults.conf").read_text().splitlines()
                if line.strip() and not line.startswith("#"))
    assert conf["spark.sql.extensions"].strip() == "io.delta.sql.DeltaSparkSessionExtension"
    assert conf["spark.sql.catalog.spark_catalog"].strip() == "org.apache.spark.sql.delta.catalog.DeltaCatalog"
