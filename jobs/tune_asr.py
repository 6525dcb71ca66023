"""spark-submit jobs/tune_asr.py --config FILE [--run-date YYYY-MM-DD]: the stage named by this file (mmpipeline/stages.py)."""
from mmpipeline.cli import job_main
if __name__ == "__main__": job_main(__file__)  # noqa: E701
