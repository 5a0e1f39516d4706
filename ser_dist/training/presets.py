"""Named training presets: a model and recipe in one name, overridable key by key.

`TrainConfig.from_dict({"preset": "timnet_paper", "epochs": 100})` starts from the preset and applies
the other keys on top (nested `model` / `augment` keys merge field by field).

- `timnet_paper`: TIM-Net as published (Ye et al., ICASSP 2023; reference Keras code
  Jiaxin-Ye/TIM-Net_SER): 39 filters, kernel 2, dilations 1..128 (8 blocks), spatial dropout 0.1,
  forward + time-reversed stacks, free (linear) weighting of the eight scales, no dropout before the
  softmax head, Keras initialisation and BatchNorm settings; Adam lr 1e-3, betas (0.93, 0.98), no
  weight decay, constant learning rate, batch 64, label smoothing 0.1, 500 epochs, no class weights,
  no augmentation, no gradient clipping, no early stopping, no time pooling. Meant for MFCC-39 with
  `fixed_seconds: 4.354` (the reference pads/crops every signal to 96,000 samples at 22.05 kHz).
- `speaker_independent`: the recipe chosen for speaker-independent EMODB (LOSO) by `bench/recipe_search.py`
  on VALIDATION speakers only (`bench/results/recipe_search.json`; test speakers never took part):
  a compact TIM-Net (32 filters per direction, 6 blocks, 4-frame time pooling) trained 45 epochs with
  AdamW lr 3e-3, cosine decay, SpecAugment masks, mixup 0.2, random 4-s crops and label smoothing, on
  LOGMEL (validation UAR: LOGMEL above MFCC+deltas under both normalisations, 45 epochs above 30).
  It fits the CPU budget of a laptop (about 30 s per fold on one core).
"""

from __future__ import annotations

from ser_dist.errors import UnknownNameError

PRESETS: dict[str, dict] = {
    "speaker_independent": {
        "epochs": 45,
        "patience": 45,
        "batch_size": 32,
        "lr": 3e-3,
        "model": {"width": 32, "n_blocks": 6, "time_pool": 4},
    },
    "timnet_paper": {
        "epochs": 500,
        "batch_size": 64,
        "lr": 1e-3,
        "weight_decay": 0.0,
        "optimizer": "adam",
        "betas": (0.93, 0.98),
        "schedule": "constant",
        "warmup_epochs": 0,
        "grad_clip": None,
        "label_smoothing": 0.1,
        "class_weights": False,
        "patience": None,
        "model": {
            "width": 39, "n_blocks": 8, "kernel_size": 2, "dropout": 0.1, "bidirectional": True,
            "time_pool": 1, "input_dropout": 0.0, "head_dropout": 0.0, "fusion": "linear", "init": "keras",
            "bn_momentum": 0.01, "bn_eps": 1e-3,
        },
        "augment": {
            "time_masks": 0, "feature_masks": 0, "mixup_alpha": 0.0, "noise_std": 0.0, "max_frames": None,
        },
    },
}


def apply_preset(data: dict) -> dict:
    """`data` with its "preset" key (if any) expanded: the preset's values, then data's on top."""
    data = dict(data)
    name = data.pop("preset", None)
    if name is None:
        return data
    if name not in PRESETS:
        raise UnknownNameError("training preset", name, sorted(PRESETS))
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PRESETS[name].items()}
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged
