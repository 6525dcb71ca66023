"""A torch-only stage as a subprocess of the Airflow worker: ``python -m mmpipeline.cli run STAGE ARGV``.

Spark stages run through spark-submit (``jobs/<stage>.py``); torch-only stages (train-image-tower,
transcribe, train, evaluate) never start a SparkSession, and a spark-submit would add a JVM for
nothing (or, in cluster deploy mode, ship a GPU job to a Spark executor host). In a subprocess the
model's memory is released when the stage ends; the stage's JSON summary (its last stdout line)
becomes the task's XCom.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from mmpipeline.orchestration.runs import REPO_ROOT

log = logging.getLogger("mmpipeline.airflow")


def child_env() -> dict[str, str]:
    """Environment for stage processes: the worker's interpreter and its bin/ first on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    return {
        "PATH": bin_dir + (os.pathsep + path if path else ""),
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        "TRANSFORMERS_OFFLINE": os.environ.get("TRANSFORMERS_OFFLINE", "1"),
    }


def run_cli_stage(stage: str, argv: list[str], cwd: Path | str = REPO_ROOT) -> dict[str, Any]:
    """Run ``python -m mmpipeline.cli run STAGE ARGV`` in a subprocess, streaming its output to the log.

    Returns the stage's JSON summary (its last stdout line); raises with the output's tail on failure.
    The child is terminated if the task is killed or times out.
    """
    import collections
    import json
    import subprocess

    cmd = [sys.executable, "-m", "mmpipeline.cli", "run", stage, *argv]
    env = {**os.environ, **child_env()}
    log.info("running: %s", shlex.join(cmd))
    tail: collections.deque[str] = collections.deque(maxlen=25)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=str(cwd), bufsize=1)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            log.info("%s", line)
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    if rc != 0:
        raise RuntimeError(f"mmpipeline run {stage} exited with code {rc}; last output:\n" + "\n".join(tail))
    for line in reversed(tail):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    return {"stage": stage}
