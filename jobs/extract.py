"""Extraction job: `python -m jobs.extract --config FILE` (keys: fields of ser_dist.api.ExtractConfig)."""

import sys

from jobs.common import run_job
from ser_dist.api import ExtractConfig, extract

if __name__ == "__main__":
    sys.exit(run_job(__doc__, ExtractConfig, extract, overrides={"data_root": "corpora folder", "corpus": "EMODB, RAVDESS or IEMOCAP"}))
