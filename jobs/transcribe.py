"""spark-submit entry point for the 'transcribe' stage.

    spark-submit jobs/transcribe.py --config configs/homedepot.yaml [--run-date YYYY-MM-DD]

Thin on purpose: parse arguments, run the stage from mmpipeline, exit non-zero on failure.
"""

import sys

from mmpipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "transcribe", *sys.argv[1:]]))
