"""FeatureSpec: what a feature matrix is, in one typed object that round-trips through JSON.

A spec is the feature configuration (`FeatureConfig`: type, log-mel/MFCC settings, deltas, fixed length,
trimming, storage dtype, encoder and layers, runtime options such as the encoder batch size) plus the
identity of the encoder that produced the numbers (model name, layers, weight hash). It is written in a
feature version's metadata.json (`feature_spec`) and in every checkpoint, handed whole to extraction
workers, and compared with `differences()` wherever features of two sources meet (a model and the
features it is asked to score).

Older metadata and checkpoints stored a flat feature-config dict with an "encoder" key beside it;
`FeatureSpec.from_json` reads both forms.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ser_dist.errors import ConfigError
from ser_dist.features.config import FeatureConfig, FeatureType


@dataclass(frozen=True)
class EncoderIdentity:
    """The encoder weights behind HUBERT/FUSION features."""

    model: str
    layers: tuple[int, ...]
    weight_hash: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> EncoderIdentity | None:
        if not data or not data.get("model"):
            return None
        return cls(str(data["model"]), tuple(int(x) for x in data.get("layers") or ()), data.get("weight_hash"))

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "layers": list(self.layers), "weight_hash": self.weight_hash}


@dataclass(frozen=True)
class FeatureSpec:
    config: FeatureConfig
    encoder: EncoderIdentity | None = None

    def to_json(self) -> dict[str, Any]:
        """Everything, runtime options included (`FeatureConfig.to_dict` keeps only what changes the numbers)."""
        config = self.config.to_dict()
        if self.config.feature_type.uses_encoder:
            config["ssl"]["max_batch_seconds"] = self.config.ssl.max_batch_seconds
        return {"config": config, "encoder": None if self.encoder is None else self.encoder.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureSpec:
        """From `to_json()`, or from the older flat form `{feature_type, logmel, ..., "encoder": {...}}`."""
        if not isinstance(data, dict):
            raise ConfigError(f"a feature spec must be a mapping, got {type(data).__name__}")
        if "config" in data:
            config, encoder = data["config"], data.get("encoder")
        else:
            config, encoder = {k: v for k, v in data.items() if k != "encoder"}, data.get("encoder")
        if "feature_type" not in (config or {}):
            raise ConfigError("a feature spec needs feature_type (LOGMEL, MFCC, HUBERT or FUSION)")
        known = {f.name for f in dataclasses.fields(FeatureConfig)}
        try:
            parsed = FeatureConfig.from_dict({k: v for k, v in config.items() if k in known})
        except (TypeError, KeyError) as exc:
            raise ConfigError(f"the stored feature config is not valid here ({exc})") from exc
        return cls(parsed, EncoderIdentity.from_json(encoder))

    def differences(self, other: FeatureSpec) -> list[tuple[str, object, object]]:
        """(field, this value, other value) for every way the two specs give different numbers.

        Compared: every field of `FeatureConfig.to_dict()` (type, log-mel, MFCC, deltas, fixed length,
        trimming, encoder model and layers) except the storage dtype, and the encoder weights (the weight
        hash when both record one). Runtime options (batch sizes) never count."""
        mine, theirs = _flatten(self.config.to_dict()), _flatten(other.config.to_dict())
        if mine.get("feature_type") != theirs.get("feature_type"):
            return [("feature_type", mine.get("feature_type"), theirs.get("feature_type"))]
        out = [(key, mine.get(key), theirs.get(key)) for key in sorted(set(mine) | set(theirs))
               if key != "storage_dtype" and mine.get(key) != theirs.get(key)]
        if self.config.feature_type.uses_encoder:
            hashes = (self.encoder and self.encoder.weight_hash, other.encoder and other.encoder.weight_hash)
            if all(hashes):
                out = [d for d in out if d[0] != "ssl.model"]  # the weights decide, not the path they were read from
                if hashes[0] != hashes[1]:
                    out.append(("encoder.weight_hash", hashes[0], hashes[1]))
        return out

    @property
    def uses_encoder(self) -> bool:
        return self.config.feature_type in (FeatureType.HUBERT, FeatureType.FUSION)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out
