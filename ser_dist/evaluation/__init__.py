"""Cross-corpus evaluation: trained source checkpoints scored on another corpus's stored features.

    evaluate_cross_corpus(EvaluationConfig(source_run, target_features, mode=..., normalization=...))
    cross_corpus_matrix(source_runs, target_features, out_dir)   # source x target UAR + heatmap
    CrossCorpusEvaluator(source_run, mode=...).evaluate(target_features, normalization=..., mapping=...)
    load_mapping("my_mapping.yaml")                               # the emotion table, user overrides on top
"""

from ser_dist.evaluation.cross_corpus import (
    STANDARD_PAIRS,
    CrossCorpusEvaluator,
    EvaluationConfig,
    EvaluationMode,
    TargetNormalization,
    check_pair,
    cross_corpus_matrix,
    cross_corpus_report,
    default_out_dir,
    evaluate_cross_corpus,
    target_features_path,
)
from ser_dist.evaluation.mapping import (
    LabelMapping,
    common_label_space,
    load_mapping,
    map_labels,
    merge_probabilities,
    removed_counts,
)

__all__ = [
    "STANDARD_PAIRS",
    "CrossCorpusEvaluator",
    "EvaluationConfig",
    "EvaluationMode",
    "LabelMapping",
    "TargetNormalization",
    "check_pair",
    "common_label_space",
    "cross_corpus_matrix",
    "cross_corpus_report",
    "default_out_dir",
    "evaluate_cross_corpus",
    "load_mapping",
    "map_labels",
    "merge_probabilities",
    "removed_counts",
    "target_features_path",
]
