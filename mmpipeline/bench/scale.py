"""``mmpipeline bench scale``: how each stage's cost grows with the catalog (JSON on stdout).

For every size in ``--param sizes=10000,100000,1000000`` a catalog is scaled up from the real
samples (:mod:`mmpipeline.bench.catalog`) into a scratch folder, and the registered stages run on
a fresh scratch lake with the production engine (Spark), in order. Per stage and size: wall
seconds, rows/s, peak RSS of the driver process and of the whole process tree (the Spark JVM and
the Python workers are children of the driver; sampled every 0.1 s in a thread), Delta commits
and data files written. Per stage: the scaling exponent ``b`` from the two largest sizes
(``t2/t1 = (n2/n1)^b``). Progress goes to stderr.

Extra measurements in the same run, per size:

* ``clean_vs_pandas``: the Spark product cleaning (tag + silver + quarantine, ``noop`` sink) next
  to the plain pandas baseline of ``bench clean`` on the same bronze rows, with both counts;
* ``images``: the image checks on the share with images, cold (no record) and warm (the record the
  clean stage kept in ``ops.image_checks``): files opened and seconds;
* ``validate_ge_vs_spark``: the GE suites of silver.products next to a hand-written Spark
  aggregation of the same checks (one scan), with both verdicts.

Stages are a registry: part 2 of the scale work adds embed/score with one :func:`register` line.
Params: ``sizes``, ``datasets`` (default ``../shared/datasets``), ``workdir`` (kept when given),
``stages`` (comma list, default all registered), ``skip_pandas``, ``skip_extras``, ``partial_json``
(a file that gets the results of the sizes done so far after each size), ``extras_at`` (``all``, the
default, or ``largest``: the extra measurements at the largest size only), ``process`` (``fresh``, the
default: each stage runs in its own Python process, as each is its own Airflow task in a night -- its
driver peak is that stage's alone, and a stage killed for memory is recorded as failed instead of
ending the benchmark; ``shared``: all stages in this process, one Spark session per size).

``clean_compare`` (per size): the whole clean stage's rows/s (rows = bronze rows in, all sources)
next to the product cleaning's Spark and pandas seconds and kept/quarantined counts on the same rows.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mmpipeline.bench.scale_stages import LATER_STAGES

log = logging.getLogger(__name__)

RUN_DATE = dt.date(2026, 1, 31)


@dataclass
class Stage:
    name: str
    run: str  # "module:function", called with a RunContext, returns the stage summary
    rows: Callable[[dict[str, Any], dict[str, Any]], int] | None = None  # (stage summary, catalog counts) -> rows


STAGES: dict[str, Stage] = {}


def register(name: str, run: str, rows: Callable[[dict[str, Any], dict[str, Any]], int] | None = None) -> None:
    """Add a stage to the benchmark (runs after the ones registered before it)."""
    STAGES[name] = Stage(name, run, rows)


def _input_rows(summary: dict[str, Any], counts: dict[str, Any]) -> int:
    return int(counts["products"] + counts["queries"] + counts["judgments"])


register("ingest", "mmpipeline.ingest:run", _input_rows)
register("clean", "mmpipeline.clean.stage:run", _input_rows)
register("validate", "mmpipeline.validate.stage:run",
         lambda s, c: int(sum((t.get("rows") or 0) for t in s.get("tables", {}).values())))
for _later in LATER_STAGES:  # embed, build-training-data, train, score, publish (mmpipeline.bench.scale_stages)
    register(*_later)


def _load(ref: str):
    import importlib

    mod, _, fn = ref.partition(":")
    return getattr(importlib.import_module(mod), fn)


def progress(msg: str) -> None:
    print(f"[bench scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------- measuring

class RssSampler:
    """Peak RSS of this process and of its whole process tree, sampled in a thread."""

    def __init__(self, interval: float = 0.1):
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.driver_peak = self.tree_peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        import psutil

        try:
            d = self._proc.memory_info().rss
        except psutil.Error:
            return
        tree = d
        for c in self._proc.children(recursive=True):
            try:
                tree += c.memory_info().rss
            except psutil.Error:
                pass
        self.driver_peak = max(self.driver_peak, d)
        self.tree_peak = max(self.tree_peak, tree)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._sample()
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self._sample()


def lake_files(root: Path) -> dict[str, tuple[int, set[str]]]:
    """{table folder: (Delta commits, data files)} for every Delta table under ``root``."""
    out: dict[str, tuple[int, set[str]]] = {}
    if not root.is_dir():
        return out
    for log_dir in root.rglob("_delta_log"):
        t = log_dir.parent
        commits = sum(1 for f in log_dir.glob("*.json"))
        files = {str(f.relative_to(t)) for f in t.rglob("*.parquet") if "_delta_log" not in f.parts}
        out[str(t.relative_to(root))] = (commits, files)
    return out


def lake_delta(before: dict[str, tuple[int, set[str]]], after: dict[str, tuple[int, set[str]]]) -> dict[str, Any]:
    versions = files = 0
    tables = {}
    for t, (c, f) in after.items():
        c0, f0 = before.get(t, (0, set()))
        dv, df = c - c0, len(f - f0)
        if dv or df:
            tables[t] = {"versions": dv, "files": df}
        versions += dv
        files += df
    return {"delta_versions": versions, "files_written": files, "tables": tables}


def scaling_exponent(n1: int, t1: float, n2: int, t2: float) -> float | None:
    if min(n1, n2, t1, t2) <= 0 or n1 == n2:
        return None
    return round(math.log(t2 / t1) / math.log(n2 / n1), 3)


# ------------------------------------------------------------------------------------- extras

def clean_vs_pandas(ctx, lake) -> dict[str, Any]:
    """Spark product cleaning vs the pandas baseline of ``bench clean`` on this run's bronze rows."""
    from pyspark.sql import functions as F

    from mmpipeline.bench.clean import clean_products_pandas
    from mmpipeline.clean import transforms as T
    from mmpipeline.clean.stage import quarantined_with_raw, release, tag_once

    c = ctx.cfg.clean
    bronze = lake.read("bronze.products").where(F.col("run_date") == F.lit(ctx.run_date))
    with RssSampler() as rs:
        t0 = time.perf_counter()
        tagged = tag_once(T.tag_products, bronze, c, cached=[])  # as the clean stage does: computed once
        counts = T.outcome_counts(tagged)
        T.products_silver(tagged).write.format("noop").mode("overwrite").save()
        T.quarantine_rows(quarantined_with_raw(tagged, bronze, counts), "product_id", ctx.run_date).write.format("noop").mode("overwrite").save()
        spark_s = time.perf_counter() - t0
        release(tagged)
    rows = int(counts["in"])
    out: dict[str, Any] = {"rows": rows, "spark": {
        "seconds": round(spark_s, 2), "rows_per_s": round(rows / spark_s, 1), "kept": counts[T.KEPT],
        "folded": counts[T.FOLDED], "quarantined": counts[T.QUARANTINED],
        "driver_peak_rss_mb": round(rs.driver_peak / 2**20), "tree_peak_rss_mb": round(rs.tree_peak / 2**20)}}
    if ctx.options.get("skip_pandas"):
        return out
    with RssSampler() as rs:
        t0 = time.perf_counter()
        pdf = lake.read_pandas("bronze.products", filters=[("run_date", "=", ctx.run_date)])
        silver, quarantine, folded = clean_products_pandas(pdf, c.max_title_chars, c.min_title_chars, c.max_price,
                                                           c.default_currency)
        pandas_s = time.perf_counter() - t0
    del pdf
    out["pandas"] = {"seconds": round(pandas_s, 2), "rows_per_s": round(rows / pandas_s, 1), "kept": len(silver),
                     "folded": folded, "quarantined": len(quarantine),
                     "driver_peak_rss_mb": round(rs.driver_peak / 2**20)}
    out["spark_over_pandas"] = round(pandas_s / spark_s, 3)
    out["same_counts"] = (len(silver) == counts[T.KEPT] and len(quarantine) == counts[T.QUARANTINED]
                          and folded == counts[T.FOLDED])
    return out


def clean_compare(res: dict[str, Any]) -> dict[str, Any]:
    """One size's clean figures side by side: the whole stage (rows = bronze rows in, all sources)
    and the product cleaning, Spark vs pandas on the same rows, with both kept/quarantined counts."""
    st = res["stages"].get("clean") or {}
    cvp = res.get("clean_vs_pandas") or {}
    sp, pd_ = cvp.get("spark") or {}, cvp.get("pandas") or {}
    out: dict[str, Any] = {
        "stage_rows_in": st.get("rows"), "stage_seconds": st.get("seconds"), "stage_rows_per_s": st.get("rows_per_s"),
        "products": cvp.get("rows"), "spark_seconds": sp.get("seconds"), "pandas_seconds": pd_.get("seconds"),
        "spark_kept_quarantined": [sp.get("kept"), sp.get("quarantined")] if sp else None,
        "pandas_kept_quarantined": [pd_.get("kept"), pd_.get("quarantined")] if pd_ else None,
        "spark_over_pandas": cvp.get("spark_over_pandas"), "same_counts": cvp.get("same_counts")}
    return out


# --------------------------------------------------------------------------------------- main

def _overrides(base_cfg, lake_root: Path, sources: dict[str, Any]) -> dict[str, Any]:
    """The scratch run's config as overrides (JSON: a fresh stage process builds the same config)."""
    over: dict[str, Any] = {
        "name": "scale-bench", "lake.root": str(lake_root), "sources": sources,
        "clean.grade_min": 1.0, "clean.grade_max": 3.0, "quality.data_docs": False,
    }
    if base_cfg is not None:
        over["spark.master"] = base_cfg.spark.master
        over["spark.conf"] = dict(base_cfg.spark.conf)
    return over


def run_size(n: int, work: Path, datasets: Path, base_cfg, params: dict[str, Any], stages: list[str]) -> dict[str, Any]:
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):  # the stages' tables must not mix into the JSON
        return _run_size(n, work, datasets, base_cfg, params, stages)


def _run_size(n: int, work: Path, datasets: Path, base_cfg, params: dict[str, Any], stages: list[str]) -> dict[str, Any]:
    from mmpipeline.bench.catalog import write_scaled_catalog
    from mmpipeline.config import load_config
    from mmpipeline.context import RunContext

    t0 = time.perf_counter()
    cat = write_scaled_catalog(work / "catalog", n, datasets)
    progress(f"size {n:,}: catalog written in {time.perf_counter() - t0:.1f}s {cat['counts']}")
    lake_root = work / "lake"
    over = _overrides(base_cfg, lake_root, cat["sources"])
    cfg = load_config(None, over, env={})
    # bench.scale_stages knobs
    later = {k: params[k] for k in ("train_epochs", "data_engine", "encode_budget") if k in params}
    options = {"skip_pandas": bool(params.get("skip_pandas")), **later,
               "text_cache_file": str(work.parent / "text-cache.pkl")}
    ctx = RunContext.create(cfg, RUN_DATE, options=dict(options))
    res: dict[str, Any] = {"catalog": cat["counts"], "catalog_seconds": round(time.perf_counter() - t0, 2),
                           "stages": {}}
    fresh = str(params.get("process", "fresh")) == "fresh"
    if not fresh:
        ctx.spark  # noqa: B018  (start Spark outside the timed stages)
    for name in stages:
        st = STAGES[name]
        before = lake_files(lake_root)
        progress(f"size {n:,}: {name} ...")
        if fresh:
            out = run_stage_process(name, over, options, work / f"stage-{name}.json")
        else:
            out = measure_stage(name, ctx)
        if "failed" in out:
            res["stages"][name] = {"failed": out["failed"], **lake_delta(before, lake_files(lake_root))}
            progress(f"size {n:,}: {name} FAILED: {out['failed']}; the later stages of this size are skipped")
            break
        summary, secs = out["summary"], out["seconds"]
        rows = st.rows(summary, cat["counts"]) if st.rows else cat["counts"]["products"]
        rec = {"seconds": round(secs, 2), "rows": rows, "rows_per_s": round(rows / secs, 1) if secs else None,
               "driver_peak_rss_mb": out["driver_peak_rss_mb"], "tree_peak_rss_mb": out["tree_peak_rss_mb"],
               "process": "fresh" if fresh else "shared", **lake_delta(before, lake_files(lake_root))}
        rec["summary"] = summary
        res["stages"][name] = rec
        progress(f"size {n:,}: {name} {secs:.1f}s ({rec['rows_per_s']:,} rows/s), driver peak "
                 f"{rec['driver_peak_rss_mb']} MB, tree peak {rec['tree_peak_rss_mb']} MB")
    if not params.get("skip_extras") and (params.get("extras_at", "all") != "largest" or params.get("_largest")):
        lake = ctx.spark_lake()
        if "clean" in stages:
            progress(f"size {n:,}: clean vs pandas ...")
            res["clean_vs_pandas"] = clean_vs_pandas(ctx, lake)
            progress(f"size {n:,}: clean vs pandas {res['clean_vs_pandas']}")
            from mmpipeline.bench.images import image_check_bench

            res["clean_compare"] = clean_compare(res)
            progress(f"size {n:,}: clean compare {res['clean_compare']}")
            res["images"] = image_check_bench(ctx, lake)
            progress(f"size {n:,}: images {res['images']}")
        if "validate" in stages:
            from mmpipeline.bench.validate import ge_vs_spark

            res["validate_ge_vs_spark"] = ge_vs_spark(ctx, lake, "silver.products")
            progress(f"size {n:,}: GE vs Spark {res['validate_ge_vs_spark']}")
    return res


def measure_stage(name: str, ctx) -> dict[str, Any]:
    """Run one registered stage in this process: seconds, summary, driver and tree peak RSS (MB)."""
    with RssSampler() as rs:
        t1 = time.perf_counter()
        summary = _load(STAGES[name].run)(ctx) or {}
        secs = time.perf_counter() - t1
    release_memory()  # a night runs each stage in its own process: do not carry this one's heap over
    return {"seconds": secs, "summary": summary, "driver_peak_rss_mb": round(rs.driver_peak / 2**20),
            "tree_peak_rss_mb": round(rs.tree_peak / 2**20)}


def run_stage_process(name: str, overrides: dict[str, Any], options: dict[str, Any], spec_file: Path) -> dict[str, Any]:
    """Run one stage in a fresh Python process (``python -m mmpipeline.bench.scale SPEC``), as an
    Airflow task runs it: Spark starts there before the timed part; the process's own sampler gives
    its peaks (driver = that process). A non-zero exit (killed for memory: -9) is ``{"failed": ...}``."""
    import subprocess

    import mmpipeline

    spec_file.write_text(json.dumps({"stage": name, "overrides": overrides, "options": options,
                                     "log_level": logging.getLogger().getEffectiveLevel()}, default=str))
    result_file = spec_file.with_suffix(".result.json")
    result_file.unlink(missing_ok=True)
    env = dict(os.environ)
    root = str(Path(mmpipeline.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    # the stage's printed tables go to stderr with the progress: stdout is the benchmark's JSON
    proc = subprocess.run([sys.executable, "-m", "mmpipeline.bench.scale", str(spec_file)], env=env,
                          stdout=sys.__stderr__, stderr=sys.__stderr__, check=False)
    out = json.loads(result_file.read_text()) if result_file.is_file() else {}
    if proc.returncode != 0 or not out:
        why = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit code {proc.returncode}"
        return {"failed": f"{why}: {out['failed']}" if out.get("failed") else why}
    return out


def _stage_process_main(spec_file: str) -> int:
    """Body of the fresh stage process (see :func:`run_stage_process`)."""
    from mmpipeline.cli import setup_logging
    from mmpipeline.config import load_config
    from mmpipeline.context import RunContext

    spec = json.loads(Path(spec_file).read_text())
    setup_logging(logging.getLevelName(int(spec.get("log_level", logging.INFO))))  # as the CLI does
    sys.stdout = sys.stderr
    ctx = RunContext.create(load_config(None, spec["overrides"], env={}), RUN_DATE, options=spec["options"])
    ctx.spark  # noqa: B018  (start Spark outside the timed stage)
    result = Path(spec_file).with_suffix(".result.json")
    try:
        out = measure_stage(spec["stage"], ctx)
    except Exception as e:  # noqa: BLE001  (one line for the benchmark; the traceback at DEBUG)
        line = (str(e).splitlines() or [type(e).__name__])[0][:300]
        log.error("bench scale: stage %s failed: %s", spec["stage"], line)
        log.debug("traceback", exc_info=True)
        result.write_text(json.dumps({"failed": f"{type(e).__name__}: {line}"}))
        return 1
    out["summary"] = json.loads(json.dumps(out["summary"], default=str))
    result.write_text(json.dumps(out))
    return 0


def release_memory() -> None:
    """Collect garbage and hand the freed heap back to the OS (glibc ``malloc_trim``): without it the
    bench process kept each stage's high-water mark (7.3 GB after train at 1M products) into the next."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def _slim(summary: Any) -> Any:
    """Stage summaries without the per-check noise (kept small in the JSON)."""
    if isinstance(summary, dict):
        return {k: _slim(v) for k, v in summary.items() if k not in ("reasons", "merge", "data_docs")}
    return summary


def _items(value: Any) -> list[str]:
    """A list param given as ``a,b,c``, ``[a, b, c]`` (YAML list) or one value."""
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [s.strip() for s in str(value).strip("[]").split(",") if s.strip()]


def main(cfg, params: dict[str, Any]) -> dict[str, Any]:
    sizes = [int(float(s)) for s in _items(params.get("sizes", "10000,100000,1000000"))]
    stages = _items(params.get("stages", ",".join(STAGES)))
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown} in --param stages; registered: {list(STAGES)}")
    datasets = Path(params.get("datasets") or Path(__file__).resolve().parents[3] / "shared" / "datasets")
    if not (datasets / "homedepot" / "relevance.csv").is_file():
        raise FileNotFoundError(f"bench scale needs the sample datasets: no homedepot/relevance.csv under {datasets} "
                                f"(set --param datasets=PATH)")
    keep = bool(params.get("workdir"))
    root = Path(params.get("workdir") or tempfile.mkdtemp(prefix="mmp-bench-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"benchmark": "scale", "sizes": sizes, "stages": stages, "cores": os.cpu_count(),
                              "load_avg_start": [round(x, 2) for x in os.getloadavg()], "results": {}}
    try:
        for n in sizes:
            work = root / f"n{n}"
            shutil.rmtree(work, ignore_errors=True)
            t0 = time.perf_counter()
            r = run_size(n, work, datasets, cfg, {**params, "_largest": n == max(sizes)}, stages)
            for st in r["stages"].values():
                if "summary" in st:
                    st["summary"] = _slim(st["summary"])
            result["results"][str(n)] = r
            progress(f"size {n:,} done in {time.perf_counter() - t0:.1f}s")
            if params.get("partial_json"):  # the sizes done so far, for long runs
                Path(params["partial_json"]).write_text(json.dumps(result, default=str, indent=2))
            if not keep:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    result["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    done = [n for n in sizes if str(n) in result["results"]]
    if len(done) >= 2:
        n1, n2 = sorted(done)[-2:]
        result["scaling_between"] = [n1, n2]
        secs = {n: {s: st.get("seconds") for s, st in result["results"][str(n)]["stages"].items()} for n in (n1, n2)}
        result["scaling_exponent_b"] = {  # None for a stage that failed (or did not run) at either size
            s: (scaling_exponent(n1, secs[n1][s], n2, secs[n2][s]) if secs[n1].get(s) and secs[n2].get(s) else None)
            for s in stages}
    result["targets"] = _targets(result)
    return json.loads(json.dumps(result, default=str))


def _targets(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, evaluated on the largest size measured."""
    if not result["results"]:
        return {}
    n = max(int(k) for k in result["results"])
    r = result["results"][str(n)]
    out: dict[str, Any] = {"size": n}
    cl = r["stages"].get("clean")
    if cl:
        out["clean_rows_per_s"] = cl["rows_per_s"]
        out["clean_rows_per_s_ok (>= 30000)"] = bool(cl["rows_per_s"] and cl["rows_per_s"] >= 30000)
    cvp = r.get("clean_vs_pandas", {})
    if "spark_over_pandas" in cvp:
        out["clean_spark_over_pandas"] = cvp["spark_over_pandas"]
        out["clean_spark_over_pandas_ok (>= 2)"] = cvp["spark_over_pandas"] >= 2 and cvp["same_counts"]
    b = result.get("scaling_exponent_b") or {}
    for s in STAGES:
        if b.get(s) is not None:
            out[f"b_{s}_ok (<= 1.15)"] = b[s] <= 1.15
    dense = [i for i in (r["stages"].get("score", {}).get("summary") or {}).get("indexes", []) if i.get("kind") != "bm25"]
    if dense:
        out["ann_recall_vs_exact"] = {f"{i['modality']} ({i['kind']})": i["recall"] for i in dense}
        out["ann_recall_ok (>= 0.95)"] = all(i["recall"] is not None and i["recall"] >= 0.95 for i in dense)
    failed = [s for s, st in r["stages"].items() if "failed" in st]
    if failed:
        out["failed_stages"] = failed
    # driver peaks (MiB): part 1's 3 GB for ingest / clean / validate, part 2's 6 GB for the later stages
    for group, names, limit in (("ingest_clean_validate", ("ingest", "clean", "validate"), 3072),
                                ("later_stages", [n for n, _, _ in LATER_STAGES], 6144)):
        peaks = {s: st["driver_peak_rss_mb"] for s, st in r["stages"].items() if s in names and "driver_peak_rss_mb" in st}
        if peaks:
            top = max(peaks, key=peaks.get)
            out[f"driver_peak_rss_mb_{group}"] = {"stage": top, "mb": peaks[top]}
            out[f"driver_peak_rss_{group}_ok (<= {limit} MB)"] = peaks[top] <= limit
    return out


if __name__ == "__main__":  # a fresh stage process of run_stage_process
    sys.exit(_stage_process_main(sys.argv[1]))
