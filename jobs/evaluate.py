"""Cross-corpus evaluation job: `python -m jobs.evaluate --config FILE` (keys: fields of
ser_dist.evaluation.EvaluationConfig: source_run, target_features, mode, normalization, mapping_file, out).

Example: python -m jobs.evaluate --source-run runs/demo_EMODB_LOGMEL_loso \\
             --target-features data/features/LOGMEL/RAVDESS_LOGMEL --set normalization=target
"""

import sys

from jobs.common import run_job
from ser_dist.evaluation.cross_corpus import EvaluationConfig, evaluate_cross_corpus

if __name__ == "__main__":
    sys.exit(run_job(__doc__, EvaluationConfig, evaluate_cross_corpus, overrides={
        "source_run": "trained run folder (or checkpoint folder), local or URI",
        "target_features": "the target corpus's stored features (same feature config), local or URI",
    }))
