"""Extraction job: `python -m jobs.extract --config FILE` (keys: fields of ser_dist.api.ExtractConfig).

`corpus` may name a pool (`EMODB,RAVDESS`, registry names and `table:PATH` tables alike): each member is
extracted into its own feature store, as `ser-dist extract --corpus A,B` does."""

import sys
from dataclasses import replace

from jobs.common import run_job
from ser_dist.api import ExtractConfig, extract
from ser_dist.corpora import split_corpora


def extract_each(config: ExtractConfig) -> list:
    """`extract` for every corpus of `config.corpus` (one, or a comma-separated pool), in order."""
    return [extract(replace(config, corpus=corpus)) for corpus in split_corpora(config.corpus)]


if __name__ == "__main__":
    sys.exit(run_job(__doc__, ExtractConfig, extract_each,
                     overrides={"data_root": "corpora folder", "corpus": "a corpus (EMODB, RAVDESS, IEMOCAP, CREMAD, SAVEE, TESS, table:PATH) or a pool A,B"}))
