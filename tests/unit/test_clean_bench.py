"""The clean benchmark runs end to end on a few rows (speed is never asserted)."""


def test_bench_clean_small(spark, tmp_path):
    from mmpipeline.bench.clean import main

    out = main(None, {"rows": 3000, "workdir": str(tmp_path)})
    assert out["rows"] == 3000 and out["spark"]["rows_per_s"] > 0 and out["pandas"]["rows_per_s"] > 0
    assert out["same_result"], out
    assert out["spark"]["kept"] + out["spark"]["folded"] + out["spark"]["quarantined"] == 3000
    assert {"duplicate", "invalid_price", "negative_price"} <= set(out["spark"]["reasons"])
