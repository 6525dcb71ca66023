"""spark-submit entry point for the 'ingest' stage.

    spark-submit jobs/ingest.py --config configs/homedepot.yaml [--run-date YYYY-MM-DD]

Thin on purpose: parse arguments, run the stage from mmpipeline, exit non-zero on failure.
"""

import sys

from mmpipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "ingest", *sys.argv[1:]]))
