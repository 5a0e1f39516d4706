"""k-fold training job: `python -m jobs.train --config FILE` (keys: fields of ser_dist.training.kfold.KFoldConfig)."""

import sys

from jobs.common import run_job
from ser_dist.training.kfold import KFoldConfig, run_kfold

if __name__ == "__main__":
    sys.exit(run_job(__doc__, KFoldConfig, run_kfold, overrides={"features_path": "stored feature dataset folder"}))
