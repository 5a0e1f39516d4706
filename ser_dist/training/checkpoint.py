"""Self-describing model folders: weights + normalisation in safetensors, everything else in JSON.

    model.safetensors   TimNet weights, plus `norm.mean` / `norm.std` (training-part statistics)
    checkpoint.json     model config, feature config, label list, training config, provenance

Never pickles. `load_checkpoint` refuses a folder with a missing file or a mismatched config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ser_dist.errors import ModelLoadError
from ser_dist.model.timnet import TimNet, TimNetConfig
from ser_dist.training.data import Standardizer

WEIGHTS_FILE = "model.safetensors"
META_FILE = "checkpoint.json"
FORMAT_VERSION = 1


@dataclass
class LoadedModel:
    model: TimNet
    standardizer: Standardizer
    labels: list[str]
    feature_config: dict
    meta: dict


def save_checkpoint(
    directory: Path | str,
    *,
    model_config: TimNetConfig,
    state_dict: dict[str, torch.Tensor],
    standardizer: Standardizer,
    labels: list[str],
    feature_config: dict,
    extra: dict | None = None,
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in state_dict.items()}
    tensors.update(standardizer.to_tensors())
    save_file(tensors, str(directory / WEIGHTS_FILE))
    meta = {
        "format_version": FORMAT_VERSION,
        "model_config": model_config.to_dict(),
        "labels": list(labels),
        "feature_config": feature_config,
        **(extra or {}),
    }
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return directory


def load_checkpoint(directory: Path | str, *, expected_feature_type: str | None = None) -> LoadedModel:
    directory = Path(directory)
    missing = [name for name in (WEIGHTS_FILE, META_FILE) if not (directory / name).is_file()]
    if missing:
        raise ModelLoadError(f"{directory} is not a complete ser-dist checkpoint: missing {', '.join(missing)}")
    meta = json.loads((directory / META_FILE).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(f"{directory}: checkpoint format {meta.get('format_version')} is not {FORMAT_VERSION}")
    feature_type = (meta.get("feature_config") or {}).get("feature_type")
    if expected_feature_type is not None and feature_type != expected_feature_type:
        raise ModelLoadError(f"{directory} was trained on {feature_type} features, not {expected_feature_type}")
    tensors = load_file(str(directory / WEIGHTS_FILE))
    config = TimNetConfig.from_dict(meta["model_config"])
    model = TimNet(config)
    state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{directory}: weights do not fit the stored model config ({exc})") from exc
    model.eval()
    return LoadedModel(model, Standardizer.from_tensors(tensors), list(meta["labels"]), meta["feature_config"], meta)
