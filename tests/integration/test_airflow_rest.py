"""A real Airflow (api-server + scheduler + dag-processor, SQLite, LocalExecutor) on a free loopback
port: the DAG files parse in the dag-processor without import errors, and a DAG run triggered through
the REST API v2 (JWT from the simple auth manager first) with params succeeds.

The triggered DAG is a small one written here with the project's own helpers (``mmpipeline.orchestration``):
the real ``resolve_run`` task (params -> stage arguments, validated config file) and a real
``SparkSubmitOperator`` on the ``mmp_spark`` local-mode connection running a tiny PySpark job. The
pipeline DAGs themselves need the whole data pipeline; they are exercised by ``make run`` (``airflow
dags test``) and checked for integrity in tests/dags. Everything started here is stopped at the end,
also on failure.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.airflow_server, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEADLINE_S = float(os.environ.get("MMP_AIRFLOW_TEST_TIMEOUT", "420"))

SMOKE_DAG = '''
"""REST-trigger smoke test: the project's resolve_run + a SparkSubmitOperator on mmp_spark."""
import datetime as dt
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG

from mmpipeline.orchestration.dags import SPARK_CONN_ID, START_DATE, default_args, resolve_task, run_params
from mmpipeline.orchestration.runner import child_env

with DAG(dag_id="mm_smoke_test", schedule=None, start_date=START_DATE, catchup=False, params=run_params(),
         default_args=default_args(retries=0), tags=["mmpipeline", "test"]) as dag:
    resolved = resolve_task()
    SparkSubmitOperator(task_id="spark_job", application=str(Path(__file__).with_name("spark_job.py")),
                        application_args=resolved["argv"], conn_id=SPARK_CONN_ID, env_vars=child_env(),
                        execution_timeout=dt.timedelta(minutes=5), name="mmp-smoke")
'''

SPARK_JOB = '''
import sys
from pyspark.sql import SparkSession

spark = SparkSession.builder.appName("mmp-smoke").getOrCreate()
n = spark.range(1000).selectExpr("sum(id) AS s").first()["s"]
print("SMOKE_RESULT", n, "ARGS", " ".join(sys.argv[1:]), flush=True)
assert n == 499500
spark.stop()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(method: str, url: str, body: dict | None = None, token: str | None = None,
             timeout: float = 30) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else {})
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, {"detail": raw.decode(errors="replace")}


class Airflow:
    """The three components as child process groups, with their logs in the tmp AIRFLOW_HOME."""

    def __init__(self, home: Path, port: int, env: dict[str, str]):
        self.home, self.port, self.env = home, port, env
        self.base = f"http://127.0.0.1:{port}"
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> None:
        log = open(self.home / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen([str(BIN / "airflow"), *args], env=self.env, cwd=self.home,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise AssertionError(f"airflow {name} exited with {p.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, n: int = 40) -> str:
        try:
            return "\n".join((self.home / f"{name}.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        for p in self.procs.values():  # each component is the leader of its own process group
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        t0 = time.time()
        for p in self.procs.values():
            try:
                p.wait(timeout=max(1.0, 30 - (time.time() - t0)))
            except subprocess.TimeoutExpired:
                pass
            try:  # leftovers of the group (task supervisors, spark-submit JVMs)
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture()
def airflow_server(tmp_path):
    home = tmp_path / "airflow"
    dags = home / "dags"
    dags.mkdir(parents=True)
    for f in [".airflowignore", *(p.name for p in (REPO / "dags").glob("mm_*.py"))]:
        shutil.copy(REPO / "dags" / f, dags / f)
    (dags / "mm_smoke_test.py").write_text(SMOKE_DAG)
    (dags / "spark_job.py").write_text(SPARK_JOB)
    with open(dags / ".airflowignore", "a") as fh:
        fh.write("spark_job.py\n")
    port = _free_port()
    password = secrets.token_urlsafe(12)
    (home / "passwords.json").write_text(json.dumps({"admin": password}))
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "MMP_HOME": str(REPO),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW_CONN_MMP_SPARK": json.dumps({"conn_type": "spark", "host": "local[1]"}),
        "PYSPARK_PYTHON": sys.executable,
        "MMP_TASK_RETRIES": "0",
    }
    env.pop("AIRFLOW_CONFIG", None)
    af = Airflow(home, port, env)
    t0 = time.time()
    migrate = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, cwd=home, capture_output=True,
                             text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-2000:]
    print(f"airflow rest test: db migrate took {time.time() - t0:.1f}s", flush=True)
    try:
        af.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port))
        af.start("scheduler", "scheduler")
        af.start("dag-processor", "dag-processor")
        yield af, password
    finally:
        af.stop()


def _wait(what: str, fn, af: Airflow, deadline: float, every: float = 2.0):
    last = None
    while time.time() < deadline:
        af.check_alive()
        try:
            last = fn()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n--- api-server\n{af.tail('api-server')}"
                         f"\n--- scheduler\n{af.tail('scheduler')}\n--- dag-processor\n{af.tail('dag-processor')}")


def test_trigger_dag_run_through_rest_api(airflow_server):
    af, password = airflow_server
    deadline = time.time() + DEADLINE_S
    api = f"{af.base}/api/v2"
    t0 = time.time()
    phases: dict[str, float] = {}

    def mark(name: str) -> None:
        phases[name] = round(time.time() - t0, 1)
        print(f"airflow rest test: {name} after {phases[name]}s", flush=True)

    _wait("the API server", lambda: _request("GET", f"{api}/monitor/health")[0] == 200, af, deadline)
    mark("api-server up")
    # auth: a JWT from the simple auth manager, then every call with "Authorization: Bearer ..."
    status, body = _request("POST", f"{af.base}/auth/token", {"username": "admin", "password": password})
    assert status in (200, 201), body
    token = body["access_token"]
    assert _request("GET", f"{api}/dags", token=None)[0] in (401, 403)

    _wait("the dag-processor to parse mm_smoke_test",
          lambda: _request("GET", f"{api}/dags/mm_smoke_test", token=token)[0] == 200, af, deadline)
    # the real pipeline DAGs parse in the dag-processor too, without import errors
    _wait("the pipeline DAGs", lambda: {d["dag_id"] for d in _request("GET", f"{api}/dags?limit=50", token=token)[1]
                                         .get("dags", [])} >= {"mm_catalog_daily", "mm_ranker_weekly",
                                                              "mm_scoring_nightly"}, af, deadline)
    mark("DAGs parsed")
    status, errors = _request("GET", f"{api}/importErrors", token=token)
    assert status == 200 and errors["total_entries"] == 0, errors

    status, body = _request("PATCH", f"{api}/dags/mm_smoke_test", {"is_paused": False}, token=token)
    assert status == 200 and body["is_paused"] is False, body
    conf = {"config": "configs/sample.yaml", "run_date": "2026-11-20", "full_refresh": True,
            "overrides": ["embed.batch_size=16"]}
    status, run = _request("POST", f"{api}/dags/mm_smoke_test/dagRuns", {"logical_date": None, "conf": conf},
                           token=token)
    assert status in (200, 201), run
    run_id = run["dag_run_id"]

    def finished():
        st, r = _request("GET", f"{api}/dags/mm_smoke_test/dagRuns/{run_id}", token=token)
        return r if st == 200 and r.get("state") in ("success", "failed") else None

    mark("run triggered")
    final = _wait(f"dag run {run_id} to finish", finished, af, deadline, every=3)
    mark(f"run {final['state']}")
    status, tis = _request("GET", f"{api}/dags/mm_smoke_test/dagRuns/{run_id}/taskInstances", token=token)
    states = {t["task_id"]: t["state"] for t in tis.get("task_instances", [])}
    assert final["state"] == "success", f"{final}\n{states}\n--- scheduler\n{af.tail('scheduler', 80)}"
    assert states == {"resolve_run": "success", "spark_job": "success"}

    # the params reached the tasks: resolve_run's XCom holds the resolved stage arguments
    status, xcom = _request("GET", f"{api}/dags/mm_smoke_test/dagRuns/{run_id}/taskInstances/resolve_run/"
                                   "xcomEntries/argv?deserialize=true", token=token)
    assert status == 200, xcom
    argv = xcom["value"]
    if isinstance(argv, str):
        argv = json.loads(argv.replace("'", '"'))
    assert argv[:4] == ["--config", str(REPO / "configs" / "sample.yaml"), "--run-date", "2026-11-20"]
    assert "--full-refresh" in argv and argv[-2:] == ["--set", "embed.batch_size=16"]
