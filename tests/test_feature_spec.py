"""FeatureSpec: one typed description of a feature matrix, round-tripped through JSON and compared."""

from __future__ import annotations

import json

from ser_dist.features.config import FeatureConfig, FeatureType, LogMelConfig, MfccConfig, SSLConfig
from ser_dist.features.spec import EncoderIdentity, FeatureSpec


def test_round_trip_keeps_runtime_options_and_encoder():
    config = FeatureConfig(feature_type=FeatureType.FUSION, ssl=SSLConfig(model="/models/whisper-tiny.en", layers=(2,), max_batch_seconds=8.0),
                           storage_dtype="float16", trim_db=40.0)
    spec = FeatureSpec(config, EncoderIdentity("/models/whisper-tiny.en", (2,), "abc123"))
    back = FeatureSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert back == spec
    assert back.config.ssl.max_batch_seconds == 8.0  # FeatureConfig.to_dict drops it; the spec does not
    assert FeatureConfig.from_dict(config.to_dict()).ssl.max_batch_seconds == SSLConfig().max_batch_seconds


def test_reads_the_older_flat_form():
    flat = FeatureConfig(feature_type=FeatureType.MFCC, deltas=2).to_dict() | {"encoder": {}}
    spec = FeatureSpec.from_json(flat)
    assert spec.config.feature_type is FeatureType.MFCC and spec.config.deltas == 2 and spec.encoder is None


def test_differences_name_every_setting_that_changes_the_numbers():
    base = FeatureSpec(FeatureConfig(feature_type=FeatureType.MFCC, deltas=2))
    assert base.differences(base) == []
    assert base.differences(FeatureSpec(FeatureConfig(feature_type=FeatureType.MFCC, deltas=2, storage_dtype="float16"))) == []
    other = FeatureSpec(FeatureConfig(feature_type=FeatureType.MFCC, deltas=1, mfcc=MfccConfig(n_mfcc=13),
                                      logmel=LogMelConfig(hop_length=320), fixed_seconds=3.0))
    assert {d[0] for d in base.differences(other)} == {"deltas", "mfcc.n_mfcc", "logmel.hop_length", "fixed_seconds"}
    assert base.differences(FeatureSpec(FeatureConfig())) == [("feature_type", "MFCC", "LOGMEL")]


def test_encoder_weights_decide_not_the_path():
    a = FeatureSpec(FeatureConfig(feature_type=FeatureType.HUBERT, ssl=SSLConfig(model="/a/hubert", layers=(9,))),
                    EncoderIdentity("/a/hubert", (9,), "h1"))
    moved = FeatureSpec(FeatureConfig(feature_type=FeatureType.HUBERT, ssl=SSLConfig(model="/b/hubert", layers=(9,))),
                        EncoderIdentity("/b/hubert", (9,), "h1"))
    assert a.differences(moved) == []
    retrained = FeatureSpec(moved.config, EncoderIdentity("/b/hubert", (9,), "h2"))
    assert a.differences(retrained) == [("encoder.weight_hash", "h1", "h2")]
    other_layer = FeatureSpec(FeatureConfig(feature_type=FeatureType.HUBERT, ssl=SSLConfig(model="/a/hubert", layers=(6,))),
                              EncoderIdentity("/a/hubert", (6,), "h1"))
    assert [d[0] for d in a.differences(other_layer)] == ["ssl.layers"]
