"""GE runs the aggregates only while everything passes; the examples of unexpected values are
fetched (GE SUMMARY) only when a check fails, with the same verdicts either way."""

from __future__ import annotations


def _jobs(spark, group: str) -> int:
    # Count the jobs of one job group, not all jobs: the status tracker keeps only the last
    # spark.ui.retainedJobs jobs, so a difference of totals goes wrong in a long test session.
    return len(spark.sparkContext.statusTracker().getJobIdsForGroup(group))


def test_passing_suite_skips_example_scans_and_failures_keep_examples(spark):
    import great_expectations.expectations as gxe

    from mmpipeline.validate import Check, GXProject

    df = spark.createDataFrame([(str(i), float(i % 7), "ok" if i % 9 else "bad") for i in range(300)],
                               "id string, price double, status string").cache()
    df.count()
    checks = [Check(gxe.ExpectColumnValuesToNotBeNull(column="id"), "critical", name="id_not_null"),
              Check(gxe.ExpectColumnValuesToBeBetween(column="price", min_value=0, max_value=10), "critical",
                    name="price_range"),
              Check(gxe.ExpectColumnValuesToBeUnique(column="id"), "critical", name="id_unique"),
              Check(gxe.ExpectTableRowCountToBeBetween(min_value=1), "critical", name="rows")]
    fast, slow = GXProject.ephemeral(spark=spark), GXProject.ephemeral(spark=spark)
    slow.result_detail = "always"
    runs = {}
    for label, project in (("fast", fast), ("slow", slow)):
        project.validate(df, "t", "s", checks, data_docs=False)  # warm-up
        group = f"validate-result-format-{label}"
        spark.sparkContext.setJobGroup(group, group)
        try:
            rep = project.validate(df, "t", "s", checks, data_docs=False)
        finally:
            spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
        runs[label] = (_jobs(spark, group), {r.check_name: (r.success, r.observed_value) for r in rep.results}, rep.rows)
    assert runs["fast"][1] == runs["slow"][1] and runs["fast"][2] == runs["slow"][2] == 300
    assert 0 < runs["fast"][0] < runs["slow"][0], runs  # fewer Spark jobs: no scans for examples

    bad = checks + [Check(gxe.ExpectColumnValuesToBeInSet(column="status", value_set=["ok"]), "critical",
                          name="status_domain")]
    rep = fast.validate(df, "t", "s2", bad, data_docs=False)
    r = {x.check_name: x for x in rep.results}["status_domain"]
    assert not r.success and "e.g. 'bad' x20" in r.observed_value  # examples, as with SUMMARY
