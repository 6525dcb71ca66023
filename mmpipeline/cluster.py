"""A throw-away Spark standalone cluster on loopback, from the pyspark install (no download).

pyspark ships Spark's own standalone master and worker. :func:`standalone_cluster` starts a master
and ``workers`` workers on 127.0.0.1 (``spark-class org.apache.spark.deploy.master.Master`` /
``...worker.Worker``, small cores and memory each), waits until every worker has registered, and
always stops what it started -- process group by process group -- when the ``with`` block ends,
whether it ends normally or with an exception. :func:`submit_command` builds the ``spark-submit``
command line that runs a stage's entry point (``jobs/<stage>.py``) on it.

Executors then live in their own JVMs and Python workers: anything a stage only got from the
driver's memory shows up as a failure here. Used by ``tests/integration/test_cluster_standalone.py``
(``make cluster-test``) and by hand::

    python -m mmpipeline.cluster --workers 2 -- jobs/embed.py --config configs/fashion.yaml --set embed.engine=spark
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]


class ClusterError(RuntimeError):
    pass


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_MASTER_HOST": "127.0.0.1",
                "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
                "SPARK_DAEMON_MEMORY": env.get("SPARK_DAEMON_MEMORY", "256m"),
                "SPARK_NO_DAEMONIZE": "1"})
    env.pop("PYSPARK_GATEWAY_PORT", None)  # never attach to a parent's JVM
    env.pop("PYSPARK_GATEWAY_SECRET", None)
    env.update(extra or {})
    return env


@dataclass
class StandaloneCluster:
    master_url: str
    web_url: str
    work_dir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def state(self) -> dict:
        with urllib.request.urlopen(f"{self.web_url}/json/", timeout=5) as r:
            return json.loads(r.read())

    def alive_workers(self) -> int:
        try:
            return int(self.state().get("aliveworkers", 0))
        except (OSError, ValueError):  # not up yet, or not the master's page (see bound_urls)
            return 0

    def bound_urls(self) -> bool:
        """Take the master's RPC and web UI addresses from its log once both are bound: Spark moves to
        the next port when the one asked for was taken in the meantime (another process can grab a
        port between :func:`free_port` and the bind), so the asked-for ports are not trusted."""
        text = self.logs[0].read_text(errors="replace") if self.logs and self.logs[0].is_file() else ""
        rpc = re.search(r"Starting Spark master at (spark://[\w.]+:\d+)", text)
        web = re.search(r"MasterWebUI.*?started at (http://[\w.]+:\d+)", text)
        if not (rpc and web):
            return False
        self.master_url, self.web_url = rpc.group(1), web.group(1)
        return True

    def log_tail(self, n: int = 30) -> str:
        out = []
        for p in self.logs:
            if p.is_file():
                lines = p.read_text(errors="replace").splitlines()[-n:]
                out.append(f"--- {p.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every process group started here (workers first), SIGKILL what is left."""
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for p in reversed(self.procs):
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)
        self.procs.clear()


def _start(cmd: Sequence[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    fh = open(log_path, "wb")
    try:
        # own session: stop() signals the JVM and anything it forked (executors, Python workers)
        return subprocess.Popen(list(cmd), stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    finally:
        fh.close()


@contextmanager
def standalone_cluster(workers: int = 2, cores: int = 1, memory: str = "1g", work_dir: str | Path | None = None,
                       start_timeout: float = 180.0, env: dict[str, str] | None = None) -> Iterator[StandaloneCluster]:
    """Start a master and ``workers`` workers on 127.0.0.1; yield the cluster; always stop it."""
    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mmp-cluster-")
        work_dir = tmp.name
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    spark_class = str(spark_home() / "bin" / "spark-class")
    port, web = free_port(), free_port()
    cluster = StandaloneCluster(f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{web}", work)
    e = _env(env)
    try:
        cluster.logs.append(work / "master.log")
        cluster.procs.append(_start([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                     "--port", str(port), "--webui-port", str(web)], cluster.logs[-1], e))
        _wait(cluster.bound_urls, start_timeout, "master", cluster)
        for i in range(workers):
            wdir = work / f"worker{i}"
            wdir.mkdir(exist_ok=True)
            cluster.logs.append(work / f"worker{i}.log")
            cluster.procs.append(_start([spark_class, "org.apache.spark.deploy.worker.Worker", cluster.master_url,
                                         "--host", "127.0.0.1", "--cores", str(cores), "--memory", memory,
                                         "--webui-port", str(free_port()), "--work-dir", str(wdir)],
                                        cluster.logs[-1], e))
        _wait(lambda: cluster.alive_workers() >= workers, start_timeout, f"{workers} workers", cluster)
        log.info("cluster: %s with %d workers (%d cores, %s each), logs in %s", cluster.master_url, workers, cores,
                 memory, work)
        yield cluster
    finally:
        cluster.stop()
        if tmp is not None:
            tmp.cleanup()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(cond, timeout: float, what: str, cluster: StandaloneCluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        dead = [p for p in cluster.procs if p.poll() is not None]
        if dead:
            raise ClusterError(f"standalone cluster: a process exited (code {dead[0].returncode}) while waiting for "
                               f"{what}\n{cluster.log_tail()}")
        time.sleep(0.5)
    raise ClusterError(f"standalone cluster: {what} not up after {timeout:.0f}s\n{cluster.log_tail()}")


def submit_command(master_url: str, app: str | Path, args: Sequence[str] = (), *, executor_memory: str = "512m",
                   driver_memory: str = "1g", executor_cores: int = 1, conf: dict[str, str] | None = None,
                   pythonpath: str | Path = REPO) -> list[str]:
    """``spark-submit --master spark://...`` for a stage entry point, in client mode on loopback. The
    executors' Python workers get this interpreter and ``pythonpath`` (where ``mmpipeline`` is) --
    nothing else of the driver's process."""
    c = {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1",
         "spark.pyspark.python": sys.executable, "spark.pyspark.driver.python": sys.executable,
         "spark.executorEnv.PYTHONPATH": str(pythonpath), "spark.executorEnv.HF_HUB_OFFLINE": "1",
         "spark.executorEnv.TRANSFORMERS_OFFLINE": "1", "spark.ui.enabled": "false",
         "spark.ui.showConsoleProgress": "false"}
    c.update(conf or {})
    cmd = [str(spark_home() / "bin" / "spark-submit"), "--master", master_url, "--deploy-mode", "client",
           "--driver-memory", driver_memory, "--executor-memory", executor_memory,
           "--executor-cores", str(executor_cores)]
    for k, v in c.items():
        cmd += ["--conf", f"{k}={v}"]
    return cmd + [str(app), *args]


def run_submit(cmd: Sequence[str], log_path: str | Path | None = None, timeout: float = 900.0,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a ``spark-submit`` command to completion (output to ``log_path`` when given)."""
    e = _env({"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})})
    if log_path is None:
        return subprocess.run(list(cmd), env=e, timeout=timeout, capture_output=True, text=True)
    with open(log_path, "w") as fh:
        return subprocess.run(list(cmd), env=e, timeout=timeout, stdout=fh, stderr=subprocess.STDOUT, text=True)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m mmpipeline.cluster",
                                description="start a loopback standalone cluster, spark-submit one app on it, stop it")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cores", type=int, default=1)
    p.add_argument("--memory", default="1g", help="memory each worker offers")
    p.add_argument("--executor-memory", default="512m")
    p.add_argument("app", help="entry point, e.g. jobs/embed.py")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the app's arguments")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        with standalone_cluster(a.workers, a.cores, a.memory) as c:
            cmd = submit_command(c.master_url, a.app, [x for x in a.args if x != "--"],
                                 executor_memory=a.executor_memory)
            return subprocess.run(cmd, env=_env({"PYTHONPATH": str(REPO)})).returncode
    except ClusterError as e:
        print(f"cluster: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
