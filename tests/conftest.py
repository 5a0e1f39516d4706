"""Shared fixtures: real corpora from ../shared/data, a synthetic IEMOCAP folder, one local Ray cluster."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SER_DIST_SHARED", REPO_ROOT.parent / "shared"))
DATA = SHARED / "data"
WHISPER_TINY = SHARED / "models" / "whisper-tiny.en"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared data/models folder beside the repo); set SER_DIST_SHARED")
    return path


@pytest.fixture(scope="session")
def emodb_root() -> Path:
    return need(DATA / "emodb")


@pytest.fixture(scope="session")
def ravdess_root() -> Path:
    return need(DATA / "ravdess")


@pytest.fixture(scope="session")
def whisper_tiny() -> Path:
    return need(WHISPER_TINY)


def write_tone(path: Path, seconds: float, *, sample_rate: int = 16_000, freq: float = 220.0, channels: int = 1, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
    if channels > 1:
        x = np.stack([x] * channels, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.astype(np.float32), sample_rate, subtype="PCM_16")
    return path


# (session, dialog, utterance suffix, code) for the synthetic IEMOCAP copy: 2 sessions, 4 speakers.
SYNTHETIC_IEMOCAP = [
    (1, "Ses01F_impro01", "F000", "neu"), (1, "Ses01F_impro01", "M000", "hap"), (1, "Ses01F_impro01", "F001", "exc"),
    (1, "Ses01F_impro01", "M001", "sad"), (1, "Ses01F_impro01", "F002", "ang"), (1, "Ses01F_impro01", "M002", "fru"),
    (1, "Ses01M_script01_1", "F000", "xxx"), (1, "Ses01M_script01_1", "M000", "neu"), (1, "Ses01M_script01_1", "F001", "sad"),
    (2, "Ses02F_impro02", "F000", "ang"), (2, "Ses02F_impro02", "M000", "exc"), (2, "Ses02F_impro02", "F001", "neu"),
    (2, "Ses02F_impro02", "M001", "sad"), (2, "Ses02M_script02_2", "F000", "hap"), (2, "Ses02M_script02_2", "M000", "oth"),
]


def make_iemocap(root: Path) -> Path:
    """An IEMOCAP-shaped folder in the published layout (label files + sentence wavs)."""
    by_dialog: dict[tuple[int, str], list[str]] = {}
    for i, (session, dialog, suffix, code) in enumerate(SYNTHETIC_IEMOCAP):
        utt = f"{dialog}_{suffix}"
        start = 1.0 + 3 * i
        line = f"[{start:.4f} - {start + 1.5:.4f}]\t{utt}\t{code}\t[2.5000, 3.0000, 2.0000]"
        by_dialog.setdefault((session, dialog), []).append(line)
        write_tone(root / f"Session{session}" / "sentences" / "wav" / dialog / f"{utt}.wav", 0.6 + 0.05 * i, freq=150 + 20 * i, seed=i)
    for (session, dialog), lines in by_dialog.items():
        label_dir = root / f"Session{session}" / "dialog" / "EmoEvaluation"
        label_dir.mkdir(parents=True, exist_ok=True)
        body = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for line in lines:
            body += [line, "C-E1:\tNeutral;\t()", "A-E2:\tval 3; act 2; dom  2;\t()", ""]
        (label_dir / f"{dialog}.txt").write_text("\n".join(body))
        (label_dir / "Categorical").mkdir(exist_ok=True)  # the real release has these subfolders
    return root


@pytest.fixture
def iemocap_root(tmp_path: Path) -> Path:
    return make_iemocap(tmp_path / "iemocap")


@pytest.fixture(scope="session")
def ray_cluster():
    """One quiet local Ray cluster for the whole test session."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(config, items):
    """A test that uses the local Ray cluster is `ray` and `slow`, so `-m "not slow"` is the quick loop."""
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
            item.add_marker(pytest.mark.slow)
