"""Smoke test of ``bench scale`` at two tiny sizes: every stage measured, the extras agree."""

from __future__ import annotations


def test_bench_scale_small(spark, tmp_path, shared_datasets):
    from mmpipeline.bench import scale

    out = scale.main(None, {"sizes": [150, 300], "datasets": str(shared_datasets), "workdir": str(tmp_path),
                            "stages": "ingest,clean,validate", "extras_at": "largest", "process": "shared"})
    # sizes as --param sizes=[150,300] gives them; the later stages: bench only (minutes)
    assert out["sizes"] == [150, 300] and list(out["results"]) == ["150", "300"]
    assert "clean_vs_pandas" not in out["results"]["150"]  # extras_at=largest: measured once
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
        if n != "300":
            continue
        cvp = r["clean_vs_pandas"]
        assert cvp["same_counts"], cvp  # Spark and pandas keep and quarantine the same rows
        assert cvp["spark"]["quarantined"] > 0
        img = r["images"]
        assert img["cold"]["files_opened"] == img["cold"]["distinct_refs"] - img["cold"]["no_file"] > 0
        assert img["warm"]["files_opened"] == 0  # unchanged files keep last run's verdict
        assert img["warm"]["verdicts_reused"] == img["cold"]["files_opened"]
        ge = r["validate_ge_vs_spark"]
        assert ge["same_verdicts"] and ge["verdicts_compared"] >= 8
        cc = r["clean_compare"]  # whole stage rows/s and product cleaning Spark vs pandas, same rows
        assert cc["stage_rows_in"] == sum(r["catalog"][k] for k in ("products", "queries", "judgments"))
        assert cc["spark_kept_quarantined"] == cc["pandas_kept_quarantined"] and cc["same_counts"]
        assert cc["spark_seconds"] > 0 and cc["pandas_seconds"] > 0
    assert set(out["scaling_exponent_b"]) == {"ingest", "clean", "validate"}
    assert out["scaling_between"] == [150, 300]


def test_bench_scale_fresh_processes_record_a_failed_stage(tmp_path, shared_datasets):
    """The default: each stage in its own process (its peaks its own); a stage whose process fails
    is recorded as failed with the exit, the size's later stages are skipped, and no exponent is made up."""
    from mmpipeline.bench import scale

    out = scale.main(None, {"sizes": "120", "datasets": str(shared_datasets), "workdir": str(tmp_path),
                            "stages": "ingest,embed,train", "skip_extras": True})
    st = out["results"]["120"]["stages"]
    assert st["ingest"]["process"] == "fresh" and st["ingest"]["seconds"] > 0
    assert st["ingest"]["delta_versions"] == 4 and st["ingest"]["tree_peak_rss_mb"] > st["ingest"]["driver_peak_rss_mb"]
    # no silver.products: the stage's own one-line error, with the exit
    assert st["embed"]["failed"].startswith("exit code 1: StageError: silver.products does not exist"), st["embed"]
    assert "train" not in st
    assert out["targets"]["failed_stages"] == ["embed"]


def test_stage_registry_takes_new_stages():
    from mmpipeline.bench import scale

    scale.register("noop_test", "builtins:dict")
    try:
        assert list(scale.STAGES)[-1] == "noop_test"
    finally:
        scale.STAGES.pop("noop_test")


def test_later_stages_registered_in_order_and_text_cache_encodes_each_text_once():
    import numpy as np

    from mmpipeline.bench import scale
    from mmpipeline.bench.scale_stages import CachingTextEncoder

    names = list(scale.STAGES)
    assert names[:3] == ["ingest", "clean", "validate"]
    assert names[3:9] == ["embed", "build-training-data", "train", "evaluate", "score", "publish"]

    class Model:
        name = "m"
        calls: list[list[str]] = []

        def encode(self, texts, **kw):
            self.calls.append(list(texts))
            return np.array([[len(t), t.count("a")] for t in texts], np.float32)

    inner = Model()
    a = CachingTextEncoder(inner, "spec-test-1")
    v1 = a.encode(["aa", "b", "aa"], progress=False)
    b = CachingTextEncoder(inner, "spec-test-1")  # the next size: same model spec, shared cache
    v2 = b.encode(["b", "aaa"])
    assert inner.calls == [["aa", "b"], ["aaa"]] and a.encoded == 2 and a.hits == 1 and b.encoded == 1
    np.testing.assert_array_equal(v1, [[2, 2], [1, 0], [2, 2]])
    np.testing.assert_array_equal(v2, [[1, 0], [3, 3]])
    assert a.name == "m"  # everything else is the wrapped encoder's
    assert CachingTextEncoder(inner, "spec-test-2").encode(["b"]).shape == (1, 2) and len(inner.calls) == 3


def test_text_cache_persists_for_the_next_stage_process(tmp_path, monkeypatch):
    """bench scale runs each stage in its own process: the cache goes through a file."""
    import numpy as np

    from mmpipeline.bench import scale_stages as ss

    monkeypatch.setattr(ss, "_TEXT_CACHE", {})

    class Model:
        calls: list[list[str]] = []

        def encode(self, texts, **kw):
            self.calls.append(list(texts))
            return np.array([[len(t), 2.0] for t in texts], np.float32)

    ss.CachingTextEncoder(Model(), "ns").encode(["ab", "c"])
    ss.save_text_cache(tmp_path / "cache.pkl")
    monkeypatch.setattr(ss, "_TEXT_CACHE", {})  # a new process
    ss.load_text_cache(tmp_path / "cache.pkl")
    inner = Model()
    inner.calls = []
    enc = ss.CachingTextEncoder(inner, "ns")
    np.testing.assert_array_equal(enc.encode(["c", "ab", "xyz"]), [[1, 2], [2, 2], [3, 2]])
    assert inner.calls == [["xyz"]] and enc.hits == 2 and enc.encoded == 1
    ss.load_text_cache(tmp_path / "missing.pkl")  # no file yet: nothing to load


def test_text_cache_encode_budget_reuses_encoded_vectors_beyond_it():
    import numpy as np

    from mmpipeline.bench.scale_stages import CachingTextEncoder

    class Model:
        calls: list[list[str]] = []

        def encode(self, texts, **kw):
            self.calls.append(list(texts))
            return np.array([[len(t), 1.0] for t in texts], np.float32)

    m = Model()
    e = CachingTextEncoder(m, "spec-budget-test", budget=2)
    v = e.encode(["a", "bb", "a", "ccc", "dddd"])
    assert m.calls == [["a", "bb"]] and e.encoded == 2 and e.reused == 2 and e.hits == 1
    encoded = np.array([[1.0, 1.0], [2.0, 1.0]], np.float32)
    for r in v[3:]:  # near a vector really encoded (10% of its norm away), but never an exact copy
        d = np.linalg.norm(encoded - r, axis=1) / np.linalg.norm(encoded, axis=1)
        assert np.isclose(d.min(), CachingTextEncoder.JITTER, rtol=1e-4)
    assert len({tuple(r) for r in v}) == 4  # 'a' twice; the stand-ins distinct from everything
    again = e.encode(["ccc", "dddd"])  # the same stand-in vectors next time (by hash; not stored)
    np.testing.assert_array_equal(again, v[3:])
    assert len(m.calls) == 1 and e.hits == 1 and e.reused == 4 and len(e.cache) == 2
