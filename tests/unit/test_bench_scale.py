"""Smoke test of ``bench scale`` at two tiny sizes: every stage measured, the extras agree."""

from __future__ import annotations


def test_bench_scale_small(spark, tmp_path, shared_datasets):
    from mmpipeline.bench import scale

    out = scale.main(None, {"sizes": "300,600", "datasets": str(shared_datasets), "workdir": str(tmp_path)})
    assert out["sizes"] == [300, 600] and list(out["results"]) == ["300", "600"]
    for n, r in out["results"].items():
        assert r["catalog"]["products"] == int(n)
        for name in ("ingest", "clean", "validate"):
            st = r["stages"][name]
            assert st["seconds"] > 0 and st["rows"] > 0 and st["driver_peak_rss_mb"] > 0
            assert st["tree_peak_rss_mb"] > st["driver_peak_rss_mb"]  # the JVM is in the tree
        # one commit per bronze table (3) + ops.row_accounting (source records vs bronze rows)
        assert r["stages"]["ingest"]["delta_versions"] == 4, r["stages"]["ingest"]
        assert r["stages"]["clean"]["files_written"] > 0
        steps = r["stages"]["clean"]["summary"]["seconds_per_step"]  # where clean's time goes, per step
        assert "products: tag + counts" in steps and "merge silver.products" in steps, steps
        cvp = r["clean_vs_pandas"]
        assert cvp["same_counts"], cvp  # Spark and pandas keep and quarantine the same rows
        assert cvp["spark"]["quarantined"] > 0
        img = r["images"]
        assert img["cold"]["files_opened"] == img["cold"]["distinct_refs"] - img["cold"]["no_file"] > 0
        assert img["warm"]["files_opened"] == 0  # unchanged files keep last run's verdict
        assert img["warm"]["verdicts_reused"] == img["cold"]["files_opened"]
        ge = r["validate_ge_vs_spark"]
        assert ge["same_verdicts"] and ge["verdicts_compared"] >= 8
    assert set(out["scaling_exponent_b"]) == {"ingest", "clean", "validate"}
    assert out["scaling_between"] == [300, 600]


def test_stage_registry_takes_new_stages():
    from mmpipeline.bench import scale

    scale.register("noop_test", "builtins:dict")
    try:
        assert list(scale.STAGES)[-1] == "noop_test"
    finally:
        scale.STAGES.pop("noop_test")
