"""How the stages run under Airflow: everything the DAG files need, as ordinary tested modules.

* :mod:`~mmpipeline.orchestration.runs`     trigger params + asset events + dates -> one stage argument list (pure)
* :mod:`~mmpipeline.orchestration.runner`   a stage as ``python -m mmpipeline.cli run STAGE`` in a subprocess
* :mod:`~mmpipeline.orchestration.failures` the one-paragraph failure text and the task/DAG failure callbacks
* :mod:`~mmpipeline.orchestration.gates`    input fingerprints: skip a run whose inputs did not change
* :mod:`~mmpipeline.orchestration.timings`  wall time per task from the Airflow metadata DB (scripts/run_nightly.sh)
* :mod:`~mmpipeline.orchestration.dags`     the Airflow objects (assets, params, tasks) built from :mod:`mmpipeline.stages`

Only ``dags`` imports Airflow; none of them imports torch, pyspark, pandas or mlflow at module level
(the DAG files import ``dags`` at parse time; tests/dags checks what that pulls in).
"""
