"""Full pipeline job: extract -> k-fold (Ray Train) -> reports. `python -m jobs.pipeline --config configs/demo_emodb.yaml`."""

import sys

from jobs.common import run_job
from ser_dist.pipeline import PipelineConfig, run_pipeline

if __name__ == "__main__":
    sys.exit(run_job(__doc__, PipelineConfig, run_pipeline, overrides={
        "data_root": "folder holding emodb/, ravdess/, iemocap/", "ssl_model": "encoder folder or hub id (for HUBERT/FUSION)",
        "features": "LOGMEL, HUBERT or FUSION", "name": "run name prefix",
    }))
