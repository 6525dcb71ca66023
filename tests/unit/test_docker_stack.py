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
    assert "api-server" in s["airflow-apiserver"]["command"] and "127.0.0.1:8080:8080" in s["airflow-apiserver"]["ports"]
    assert s["airflow-dag-processor"]["command"] == ["airflow", "dag-processor"]
    assert s["airflow-scheduler"]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert "spark://spark-master:7077" in s["spark-worker"]["command"]
    assert "mlflow" in s["mlflow"]["command"] and "postgresql" in " ".join(s["mlflow"]["command"])
    assert (DOCKER / "postgres-init.sh").read_text().count("CREATE DATABASE mlflow") == 1


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


# ------------------------------------------------------------------------- deployment safety

SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "KEY")


def _compose_text() -> str:
    return (DOCKER / "docker-compose.yml").read_text()


def _env_example() -> dict[str, str]:
    out = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def test_no_secret_has_a_default_and_every_required_one_is_in_env_example():
    text = _compose_text()
    refs = re.findall(r"\$\{(\w+)(:?[-?])?([^}]*)\}", text)
    secret_refs = [(v, op, rest) for v, op, rest in refs if any(w in v for w in SECRET_WORDS)]
    assert secret_refs, "the stack takes its secrets from the environment"
    for var, op, rest in secret_refs:
        assert op == ":?", f"${{{var}}} must be required (${{{var}:?message}}), not defaulted ({op}{rest})"
        assert "docker/.env" in rest, f"{var}: the error message should say where to set it"
    required = {v for v, op, _ in refs if op == ":?"}
    example = _env_example()
    assert required <= set(example), f"missing from docker/.env.example: {sorted(required - set(example))}"
    assert all(v == "" for k, v in example.items() if k in required), ".env.example must not ship secret values"
    # the shell of airflow-init must not fall back to a password either ($${VAR:-...} in compose)
    assert not re.search(r"\$\$\{\w*(PASSWORD|SECRET)\w*:-", text)


def test_no_fixed_password_in_urls_env_or_init_scripts():
    text = _compose_text()
    for user, pw in re.findall(r"://(\w+):([^@\s]+)@", text):
        assert pw.startswith("${") and pw.endswith("}"), f"fixed password for {user} in a connection URL"
    for name, svc in _compose()["services"].items():
        env = svc.get("environment") or {}
        for k, v in env.items():
            if any(w in k for w in SECRET_WORDS) and not k.endswith(("_FILE", "_PATH")):
                assert str(v).startswith("${") and ":?" in str(v), f"{name}: {k} is a fixed value"
    init = (DOCKER / "postgres-init.sh").read_text()
    assert not re.search(r"PASSWORD\s+'", init), "postgres-init.sh must not hold a fixed password"
    assert "MLFLOW_DB_PASSWORD" in init
    assert "admin_password" not in (DOCKER / "mlflow-basic-auth.ini").read_text().replace("# ", "").split("admin_username")[0]


def test_every_published_port_binds_loopback_only():
    published = 0
    for name, svc in _compose()["services"].items():
        for port in svc.get("ports") or []:
            published += 1
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every host interface"
    assert published >= 3  # api-server, MLflow, Spark master UI


def test_mlflow_and_airflow_require_authentication():
    s = _compose()["services"]
    cmd = s["mlflow"]["command"]
    assert cmd[cmd.index("--app-name") + 1] == "basic-auth"
    assert s["mlflow"]["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${MLFLOW_ADMIN_PASSWORD:?")
    assert s["airflow-scheduler"]["environment"]["MLFLOW_TRACKING_PASSWORD"].startswith("${MLFLOW_ADMIN_PASSWORD:?")
    init = " ".join(s["airflow-init"]["command"])
    assert "passwords.json" in init and ":-admin" not in init and "AIRFLOW_ADMIN_PASSWORD" in init
    assert s["airflow-init"]["environment"]["AIRFLOW_ADMIN_PASSWORD"].startswith("${AIRFLOW_ADMIN_PASSWORD:?")
    assert ".env" in (DOCKER / ".gitignore").read_text().split()
