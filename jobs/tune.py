"""Sweep job: `python -m jobs.tune --config configs/tune_emodb.yaml` (keys: fields of ser_dist.tuning.TuneConfig).

Nested by default: Ray Tune searches each outer fold's config on that fold's training side only (its test
utterances never read), then the k-fold run trains and tests each fold once with its own config. `mode:
shared` searches once on the training sides of the first `inner_folds` outer folds and reports which
test speakers it read.
"""

import sys

from jobs.common import run_job
from ser_dist.tuning import TuneConfig, run_sweep

if __name__ == "__main__":
    sys.exit(run_job(__doc__, TuneConfig, run_sweep, overrides={"features_path": "stored feature dataset folder or URI",
                                                              "out": "runs folder or URI", "name": "sweep name"}))
