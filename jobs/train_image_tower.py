"""spark-submit entry point for the 'train-image-tower' stage.

    spark-submit jobs/train_image_tower.py --config configs/homedepot.yaml [--run-date YYYY-MM-DD]

Thin on purpose: parse arguments, run the stage from mmpipeline, exit non-zero on failure.
"""

import sys

from mmpipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "train-image-tower", *sys.argv[1:]]))
