"""spark-submit entry point for the 'tune-text-tower' stage.

    spark-submit jobs/tune_text_tower.py --config configs/homedepot.yaml [--run-date YYYY-MM-DD]

Thin on purpose: parse arguments, run the stage from mmpipeline, exit non-zero on failure.
"""

import sys

from mmpipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "tune-text-tower", *sys.argv[1:]]))
