"""spark-submit entry point for the 'embed' stage.

    spark-submit jobs/embed.py --config configs/homedepot.yaml [--run-date YYYY-MM-DD]

Thin on purpose: parse arguments, run the stage from mmpipeline, exit non-zero on failure.
"""

import sys

from mmpipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "embed", *sys.argv[1:]]))
