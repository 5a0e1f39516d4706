"""Sweep job: `python -m jobs.tune --config configs/tune_emodb.yaml` (keys: fields of ser_dist.tuning.TuneConfig).

Ray Tune searches on the training sides of the first `inner_folds` outer folds (test folds never read),
then the best config gets a k-fold run whose test scores are reported apart.
"""

import sys

from jobs.common import run_job
from ser_dist.tuning import TuneConfig, run_sweep

if __name__ == "__main__":
    sys.exit(run_job(__doc__, TuneConfig, run_sweep, overrides={"features_path": "stored feature dataset folder or URI",
                                                              "out": "runs folder or URI", "name": "sweep name"}))
