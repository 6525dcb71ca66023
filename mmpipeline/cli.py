"""The ``mmpipeline`` command: run a stage, run a benchmark, make sample data, look at the index.

    mmpipeline run STAGE --config FILE [--run-date YYYY-MM-DD] [--full-refresh] [--model-alias A]
    mmpipeline bench NAME --config FILE [--param key=value ...]          (JSON on stdout)
    mmpipeline sample-data OUT_DIR [--products N]
    mmpipeline search "QUERY" --config FILE
    mmpipeline search --audio FILE --config FILE                        (spoken query)
    mmpipeline index-status --config FILE
    mmpipeline rollback --config FILE (--to-run-date D | --to-version V)
    mmpipeline summary --config FILE

Every stage is ``run(ctx: RunContext) -> dict`` in its module (see the registry, mmpipeline/stages.py);
``jobs/*.py`` call the same entry point under spark-submit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import logging
import sys
import time
from typing import Any, Callable

from mmpipeline.stages import STAGES as _REGISTRY

# stage name -> "module:function" (from the stage registry, mmpipeline/stages.py); each is
# run(ctx: RunContext) -> dict (a JSON-able summary)
STAGES: dict[str, str] = {name: stage.entry for name, stage in _REGISTRY.items()}

# benchmark name -> "module:function"; each is main(cfg: Config | None, params: dict) -> dict
BENCHES: dict[str, str] = {
    "clean": "mmpipeline.bench.clean:main",
    "embed": "mmpipeline.bench.embed:main",
    "quality": "mmpipeline.bench.quality:main",
    "scale": "mmpipeline.bench.scale:main",
    "score": "mmpipeline.bench.score:main",
    "validate": "mmpipeline.bench.validate:main",  # GE suites on generated silver tables (was validate/timing.py)
    "voice": "mmpipeline.bench.voice:main",
}

log = logging.getLogger("mmpipeline")


def _load(ref: str) -> Callable[..., Any]:
    module, _, func = ref.partition(":")
    return getattr(importlib.import_module(module), func)


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("py4j", "urllib3", "httpx", "matplotlib", "PIL", "great_expectations", "alembic", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _parse_params(items: list[str] | None) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise SystemExit(f"--param takes key=value, got {item!r}")
        out[k] = yaml.safe_load(v)
    return out


def run_stage(stage: str, config: str | None, run_date: str | None = None, full_refresh: bool = False,
              model_alias: str | None = None, overrides: list[str] | None = None,
              options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one stage in-process; raise on failure.

    The run holds the lake's lock for the stage (a second run of the stage on the same lake is
    refused; a lock left by a killed run is taken over), records a ``running`` row in
    ``ops.stage_runs`` at start, records runs it finds left ``running`` as ``killed``, and ends with
    ``success`` or ``failed``.
    """
    import os
    import socket

    from mmpipeline.config import load_config
    from mmpipeline.context import RunContext
    from mmpipeline.lock import StageLock
    from mmpipeline.ops import record_stage_run, recover_abandoned

    if stage not in STAGES:
        raise SystemExit(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    cfg = load_config(config, overrides)
    ctx = RunContext.create(cfg, run_date, full_refresh=full_refresh, model_alias=model_alias,
                            options=options or {})
    with StageLock(cfg.lake.root, stage, ctx.run_date) as lock:
        killed = recover_abandoned(ctx, stage, lock.stale)
        started = dt.datetime.now(dt.timezone.utc)
        t0 = time.perf_counter()
        log.info("stage %s: start (config=%s, run date %s%s)", stage, cfg.config_path, ctx.run_date,
                 ", full refresh" if full_refresh else "")
        record_stage_run(ctx, stage, "running", started, {"pid": os.getpid(), "host": socket.gethostname(),
                                                          "previous_killed": [str(k["run_date"]) for k in killed]})
        _fault_hook(stage, "start")
        try:
            summary = _load(STAGES[stage])(ctx) or {}
        except BaseException as e:
            record_stage_run(ctx, stage, "failed", started, {"error": f"{type(e).__name__}: {e}"})
            raise
        wall = round(time.perf_counter() - t0, 2)
        summary = {"stage": stage, "run_date": str(ctx.run_date), **summary, "seconds": wall}
        if killed:
            summary["recovered_killed_runs"] = [str(k["run_date"]) for k in killed]
        record_stage_run(ctx, stage, "success", started, summary)
    log.info("stage %s: done in %.1fs", stage, summary["seconds"])
    return summary


def _fault_hook(stage: str, point: str) -> None:
    """Test hook: ``MMP_FAULT=<stage>:<point>`` makes the run kill itself with SIGKILL at that point
    (fault-injection tests; see tests/integration/test_faults_catalog.py). Points are named by the
    stages (e.g. clean's ``before-write``, ``after-products``)."""
    import os

    if os.environ.get("MMP_FAULT") == f"{stage}:{point}":
        import signal

        log.warning("MMP_FAULT=%s: killing this process", os.environ["MMP_FAULT"])
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


def fault_point(stage: str, point: str) -> None:
    """For stages: a named point where a fault-injection test may kill the run (no-op otherwise)."""
    _fault_hook(stage, point)


def describe_error(e: BaseException, config: str | None = None) -> str:
    """One line for an error a person meets: what is wrong, where, what to change."""
    from mmpipeline.config import describe_config_error
    from mmpipeline.context import StageError

    line = describe_config_error(e, config)
    if line:
        return line
    if isinstance(e, StageError):
        return str(e)
    if isinstance(e, PermissionError):
        return (f"permission denied: {e.filename or e}: make it writable or point the config there "
                "(e.g. --set lake.root=/a/writable/folder)")
    if isinstance(e, FileNotFoundError):
        return f"file not found: {e.filename or e}: check the path in the config or on the command line"
    first = (str(e).strip().splitlines() or [""])[0][:500]
    return f"{type(e).__name__}: {first} (run with --log-level DEBUG for the full traceback)"


def job_main(job_file: str) -> None:
    """Body of every ``jobs/<stage>.py``: ``mmpipeline run <stage> ARGS`` with spark-submit's arguments;
    the stage is the one whose job file is ``job_file`` in the registry."""
    from mmpipeline.stages import by_job

    sys.exit(main(["run", by_job(job_file).name, *sys.argv[1:]]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mmpipeline", description=__doc__.split("\n")[0])
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="cmd", required=True)

    def with_config(sp: argparse.ArgumentParser, required: bool = True) -> None:
        sp.add_argument("--config", required=required, help="YAML config file (see configs/)")
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set embed.batch_size=64 (repeatable)")

    r = sub.add_parser("run", help="run one pipeline stage")
    r.add_argument("stage", choices=list(STAGES))
    with_config(r)
    r.add_argument("--run-date", help="logical date YYYY-MM-DD (default: config run_date or today UTC)")
    r.add_argument("--full-refresh", action="store_true", help="recompute everything (embed: re-encode all)")
    r.add_argument("--model-alias", help="registered-model alias to use (score: default champion)")
    r.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="stage option")
    r.add_argument("--allow-empty-source", action="store_true",
                   help="clean: accept a source with no records (it empties its silver table)")

    b = sub.add_parser("bench", help="run a benchmark; prints JSON")
    b.add_argument("name", choices=list(BENCHES))
    with_config(b, required=False)
    b.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")

    s = sub.add_parser("sample-data", help="write a small generated catalog (no ../shared needed)")
    s.add_argument("out_dir")
    s.add_argument("--products", type=int, default=400)
    s.add_argument("--seed", type=int, default=0)

    q = sub.add_parser("search", help="show the published top results for a query")
    q.add_argument("query", nargs="?")
    q.add_argument("--audio", help="a spoken query (WAV/FLAC): transcribed, then searched")
    with_config(q)
    q.add_argument("--k", type=int, default=10)

    st = sub.add_parser("index-status", help="current and previous published runs")
    with_config(st)

    rb = sub.add_parser("rollback", help="make an earlier published run current again")
    with_config(rb)
    g = rb.add_mutually_exclusive_group(required=True)
    g.add_argument("--to-run-date")
    g.add_argument("--to-version", type=int)

    sm = sub.add_parser("summary", help="tables with row counts, champion metrics, sample results")
    with_config(sm)
    sm.add_argument("--run-date")

    args = p.parse_args(argv)
    setup_logging(args.log_level)
    debug = str(args.log_level).upper() == "DEBUG"

    try:
        if args.cmd == "run":
            overrides = list(args.overrides) + (["clean.allow_empty_source=true"] if args.allow_empty_source else [])
            summary = run_stage(args.stage, args.config, args.run_date, args.full_refresh, args.model_alias,
                                overrides, _parse_params(args.param))
            print(json.dumps(summary, default=str))
        elif args.cmd == "bench":
            from mmpipeline.config import load_config

            cfg = load_config(args.config, args.overrides) if args.config else None
            result = _load(BENCHES[args.name])(cfg, _parse_params(args.param))
            print(json.dumps(result, indent=2, default=str))
        elif args.cmd == "sample-data":
            result = _load("mmpipeline.sources.sample:write_sample_data")(args.out_dir, n_products=args.products,
                                                                           seed=args.seed)
            print(json.dumps(result, default=str))
        else:
            from mmpipeline.config import load_config

            cfg = load_config(args.config, args.overrides)
            if args.cmd == "search" and args.audio:
                _load("mmpipeline.voice.search:search_audio")(cfg, args.audio, k=args.k)
            elif args.cmd == "search":
                if not args.query:
                    raise SystemExit("search: give a QUERY or --audio FILE")
                _load("mmpipeline.score.search:search")(cfg, args.query, k=args.k)
            elif args.cmd == "index-status":
                _load("mmpipeline.score.index:index_status")(cfg)
            elif args.cmd == "rollback":
                to_date = dt.date.fromisoformat(args.to_run_date) if args.to_run_date else None
                _load("mmpipeline.score.index:rollback")(cfg, run_date=to_date, version=args.to_version)
            elif args.cmd == "summary":
                _load("mmpipeline.summary:print_summary")(cfg, run_date=args.run_date)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # one line for the person; the traceback only with --log-level DEBUG
        if debug:
            log.exception("%s failed", args.cmd)
        what = f"run {args.stage}" if args.cmd == "run" else args.cmd
        print(f"mmpipeline: {what} failed: {describe_error(e, getattr(args, 'config', None))}", file=sys.stderr)
        return _finish(1, args.cmd, argv)
    return _finish(0, args.cmd, argv)


# commands that only read the lake and MLflow (no Spark, nothing to close at exit)
READ_ONLY_COMMANDS = ("summary", "index-status", "search")


def _finish(rc: int, cmd: str, argv: list[str] | None) -> int:
    """The exit of a read-only command run as the program: output flushed, then the process ends
    without tearing down native libraries. pyarrow's dataset scanner threads can still be joinable
    when the interpreter destroys them, and the process then aborts *after* its work is done
    ("terminate called without an active exception", exit 134; apache/arrow#34314): seen in 2 of 12
    ``make run``s at ``mmpipeline summary``. Called from Python (``argv`` given) it just returns."""
    if argv is not None or cmd not in READ_ONLY_COMMANDS:
        return rc
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
