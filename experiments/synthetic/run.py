"""Entry point of the synthetic identifiability study (paper §5.1, App. F.1): same as ``mcl synthetic ...``.

    python experiments/synthetic/run.py --preset quick --out runs/synthetic-quick
    python experiments/synthetic/run.py --config experiments/synthetic/configs/home_ground.json --out runs/home

See experiments/synthetic/README.md for the commands, the tables they produced and how they compare to the paper.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from mclcore.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["synthetic", *sys.argv[1:]]))
