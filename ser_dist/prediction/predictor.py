"""Trained checkpoints -> emotion and class probabilities for files, folders, signals and long recordings.

    Predictor.from_dir("runs/EMODB_LOGMEL_loso")   # a run folder: every fold's model, probabilities averaged
    Predictor.from_dir("runs/x/fold_0/checkpoint")  # one checkpoint folder
    predictor.predict_file("a.wav")                 # Prediction(path, emotion, probabilities, duration_s)
    predictor.predict_signal(x, 44_100)
    predictor.predict_timeline("long.wav")          # Timeline: Segment(start, end, emotion, probabilities)

Features are computed exactly as at extraction (one `FeatureComputer` built from the checkpoint's
feature config; float16-stored features are rounded the same way), normalised as each checkpoint
records (`normalization` in checkpoint.json), and scored by the model in eval mode:

- `train_global`: the fold's training-part statistics, stored in the checkpoint.
- `per_speaker`: each speaker's own statistics, as in training. The caller names the speaker of each
  input (`predict_files(paths, speakers=[...])`: statistics over all inputs of that speaker) or enrols
  a speaker first (`enroll(speaker, files)`: statistics from unlabelled audio of that speaker). Without
  either the predictor refuses, unless it was built with `normalization="utterance"` (each input by
  its own statistics: an approximation of what was trained, said in every output).
Every Prediction says which normalisation it used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ser_dist.audio import TARGET_SAMPLE_RATE, load_audio, prepare_signal
from ser_dist.errors import AudioError, ConfigError, ModelLoadError, SpeakerStatisticsError
from ser_dist.features.compute import FeatureComputer
from ser_dist.features.config import FeatureConfig, FeatureType
from ser_dist.prediction.ensemble import Ensemble
from ser_dist.prediction.segmentation import (
    DroppedSpan,
    SegmentationConfig,
    Segmenter,
    VoiceActivityDetector,
    segment_signal,
)
from ser_dist.runs import RunFolder
from ser_dist.training.checkpoint import META_FILE, WEIGHTS_FILE
from ser_dist.training.data import Standardizer

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac")
TABLE_SUFFIXES = (".csv", ".json")
_FEATURE_CONFIG_KEYS = {f.name for f in dataclasses.fields(FeatureConfig)}


@dataclass(frozen=True)
class Prediction:
    path: str | None  # None for an in-memory signal
    emotion: str  # the most probable class
    probabilities: dict[str, float]  # class -> probability, in the checkpoint's label order; sums to 1
    duration_s: float
    normalization: str = "train_global"  # train_global | per_speaker | per_corpus | utterance: how this input was normalised
    speaker: str | None = None


@dataclass(frozen=True)
class Segment:
    start: float  # seconds
    end: float
    emotion: str
    probabilities: dict[str, float]


@dataclass
class Timeline:
    path: str | None
    duration_s: float
    segments: list[Segment]
    dropped: list[DroppedSpan] = field(default_factory=list)  # spans not classified, with the reason
    normalization: str = "train_global"  # how the segments were normalised


class Predictor:
    """One checkpoint, or every fold of a run averaged, with the feature computer they were trained on."""

    def __init__(self, ensemble: Ensemble, *, feature_config: FeatureConfig,
                 computer: FeatureComputer, source: str, device: torch.device, batch_size: int = 16,
                 normalization: str | None = None):
        if normalization not in (None, "utterance"):
            raise ConfigError(f"normalization must be None (as trained) or 'utterance', got {normalization!r}")
        self.ensemble = ensemble
        self.members = ensemble.members
        labels = ensemble.labels
        self.fallback_normalization = normalization  # "utterance": per-speaker models may score inputs without speaker statistics
        self.speaker_statistics: dict[str, Standardizer] = {}  # enrolled speakers
        self.labels = list(labels)
        self.feature_config = feature_config
        self.computer = computer
        self.source = source
        self.device = device
        self.batch_size = batch_size
        self._vad: VoiceActivityDetector | None = None

    # ---- loading -------------------------------------------------------------------------------

    @classmethod
    def from_dir(
        cls,
        directory: Path | str,
        *,
        expected_feature_type: FeatureType | str | None = None,
        ssl_model: str | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        normalization: str | None = None,
    ) -> Predictor:
        """Load a checkpoint folder (checkpoint.json + model.safetensors) or a run folder (fold_*/checkpoint/).

        `ssl_model` points an encoder-based checkpoint at another copy of its encoder (a local folder);
        its weights must hash to the ones the features were extracted with. `normalization="utterance"`
        lets a per-speaker model score inputs whose speaker has no statistics (each by its own).
        """
        directory = Path(directory)
        expected = FeatureType.parse(expected_feature_type).value if expected_feature_type is not None else None
        folders = checkpoint_folders(directory)
        device = torch.device(device)
        ensemble = Ensemble.load([(folder.parent.name if folder.name == "checkpoint" else folder.name, folder) for folder in folders],
                                 expected_feature_type=expected, device=device, batch_size=batch_size, source=str(directory))
        feature_config = _feature_config(ensemble.feature_config, directory, ssl_model=ssl_model)
        computer = FeatureComputer(feature_config, device=device)
        _check_encoder(ensemble.feature_config.get("encoder") or {}, computer, directory)
        for member in ensemble.members:
            if member.model.config.input_dim != computer.dim:
                raise ModelLoadError(
                    f"{member.path}: the model takes {member.model.config.input_dim}-dim features, but its feature config "
                    f"({feature_config.feature_type.value}) gives {computer.dim}"
                )
        if ensemble.needs_input_statistics:
            logger.info("%s was trained with %s normalisation: inputs need their group's statistics", directory,
                        "/".join(m for m in ensemble.normalizations if m != "train_global"))
        logger.info("loaded %d checkpoint(s) from %s (%s, labels %s)", len(ensemble.members), directory,
                    feature_config.feature_type.value, ",".join(ensemble.labels))
        return cls(ensemble, feature_config=feature_config, computer=computer,
                   source=str(directory), device=device, batch_size=batch_size, normalization=normalization)

    @property
    def needs_speakers(self) -> bool:
        """True when some member was trained with per-speaker (or per-corpus) statistics: inputs need their group's."""
        return any(m.per_utterance_norm for m in self.members)

    # ---- speakers ------------------------------------------------------------------------------

    def enroll(self, speaker: str, inputs: Sequence[Path | str | np.ndarray]) -> Standardizer:
        """Store `speaker`'s normalisation statistics from unlabelled audio (paths or 16 kHz signals)."""
        signals = [load_audio(x) if isinstance(x, str | Path) else np.asarray(x, np.float32) for x in inputs]
        if not signals:
            raise ConfigError(f"enroll({speaker!r}) needs at least one recording of that speaker")
        stats = Standardizer.fit(self._features(signals))
        self.speaker_statistics[str(speaker)] = stats
        return stats

    # ---- files and signals ---------------------------------------------------------------------

    def predict_file(self, path: Path | str, *, speaker: str | None = None) -> Prediction:
        signal = load_audio(path)
        return self._predictions([signal], [str(path)], None if speaker is None else [speaker])[0]

    def predict_signal(self, samples: np.ndarray, sample_rate: int, *, speaker: str | None = None) -> Prediction:
        """Samples (N,) or (N, channels), float, at any rate: validated and resampled as files are."""
        signal = prepare_signal(samples, sample_rate)
        return self._predictions([signal], [None], None if speaker is None else [speaker])[0]

    def predict_files(self, paths: Sequence[Path | str], *, speakers: Sequence[str] | None = None) -> list[Prediction]:
        """One Prediction per path, in input order; files are batched by length. A bad file raises AudioError.

        `speakers` (one per path) lets a per-speaker model normalise each speaker by the statistics of all
        of that speaker's inputs here (or of its enrolment, when enrolled)."""
        signals = [load_audio(p) for p in paths]
        return self._predictions(signals, [str(p) for p in paths], speakers)

    def predict_signals(self, signals: Sequence[np.ndarray], names: Sequence[str | None] | None = None, *,
                        speakers: Sequence[str] | None = None) -> list[Prediction]:
        """Predictions for 16 kHz mono float32 signals (as `load_audio` returns them)."""
        return self._predictions(list(signals), list(names) if names is not None else [None] * len(signals), speakers)

    def input_normalization(self, speakers: Sequence[str | None] | None) -> str:
        """How inputs with these speakers are normalised: train_global, per_speaker, per_corpus or utterance."""
        if not self.needs_speakers:
            return "train_global"
        modes = sorted({m.normalization for m in self.members if m.per_utterance_norm})
        if speakers is not None and all(s is not None for s in speakers):
            return modes[0] if len(modes) == 1 else "+".join(modes)
        if self.fallback_normalization == "utterance":
            return "utterance"
        if modes == ["per_corpus"]:
            raise SpeakerStatisticsError(
                f"{self.source} was trained with per_corpus normalisation (each corpus by its own statistics), so each input "
                "needs the statistics of its corpus or recording condition: pass speakers=[...] with one group name per "
                "input (the same name for every input of one corpus; `ser-dist predict --speaker-column COLUMN`), "
                "enroll(name, unlabelled_files) first, or build the predictor with normalization='utterance' "
                "(`--normalization utterance`) to normalise each input by its own statistics instead (an approximation)"
            )
        raise SpeakerStatisticsError(
            f"{self.source} was trained with per-speaker normalisation, so each input needs its speaker's statistics: "
            "pass speakers=[...] (one per input; `ser-dist predict --speaker-column COLUMN` with a CSV of paths), "
            "enroll(speaker, unlabelled_files) first, or build the predictor with normalization='utterance' "
            "(`--normalization utterance`) to normalise each input by its own statistics instead (an approximation)"
        )

    def probabilities(self, signals: Sequence[np.ndarray], *, speakers: Sequence[str | None] | None = None) -> np.ndarray:
        """Ensemble-averaged class probabilities (N, C) for 16 kHz mono signals, in input order."""
        signals = list(signals)
        if speakers is not None and len(speakers) != len(signals):
            raise ConfigError(f"{len(speakers)} speakers for {len(signals)} inputs; give one speaker per input")
        mode = self.input_normalization(speakers)
        features = self._features(signals)
        statistics = self._input_statistics(features, speakers, mode)
        if not features:
            return np.zeros((0, len(self.labels)), np.float32)
        return self.ensemble.probabilities(features, speaker_statistics=statistics).astype(np.float32)

    def _features(self, signals: list[np.ndarray]) -> list[np.ndarray]:
        """(T_i, D) per signal, computed in length-sorted chunks of batch_size; float16-rounded when trained so."""
        out: list[np.ndarray] = [None] * len(signals)  # type: ignore[list-item]
        order = np.argsort([len(s) for s in signals], kind="stable")  # similar lengths share a batch
        for first in range(0, len(order), self.batch_size):
            chunk = order[first : first + self.batch_size]
            for i, f in zip(chunk, self.computer.compute([signals[i] for i in chunk]), strict=True):
                out[i] = f.astype(np.float16).astype(np.float32) if self.feature_config.storage_dtype == "float16" else f
        return out

    def _input_statistics(self, features: list[np.ndarray], speakers: Sequence[str | None] | None, mode: str) -> list[Standardizer | None]:
        if mode == "train_global":
            return [None] * len(features)
        if mode == "utterance":
            return [Standardizer.fit([f]) for f in features]
        by_speaker: dict[str, list[int]] = {}
        for i, speaker in enumerate(speakers):  # type: ignore[arg-type]
            by_speaker.setdefault(str(speaker), []).append(i)
        stats = {
            speaker: self.speaker_statistics.get(speaker) or Standardizer.fit([features[i] for i in rows])
            for speaker, rows in by_speaker.items()
        }
        return [stats[str(s)] for s in speakers]  # type: ignore[union-attr]

    def _predictions(self, signals: list[np.ndarray], names: list[str | None], speakers: Sequence[str | None] | None = None) -> list[Prediction]:
        probs = self.probabilities(signals, speakers=speakers)
        mode = self.input_normalization(speakers)
        who = list(speakers) if speakers is not None else [None] * len(signals)
        return [
            Prediction(name, self.labels[int(row.argmax())], self._as_dict(row), len(signal) / TARGET_SAMPLE_RATE, mode, speaker)
            for name, signal, row, speaker in zip(names, signals, probs, who, strict=True)
        ]

    def _as_dict(self, row: np.ndarray) -> dict[str, float]:
        return {label: float(p) for label, p in zip(self.labels, row, strict=True)}

    # ---- long recordings -----------------------------------------------------------------------

    def predict_timeline(self, path: Path | str, segmentation: SegmentationConfig | None = None, *, speaker: str | None = None) -> Timeline:
        """Cut a recording by voice activity (default) or fixed windows and classify each piece.

        For a per-speaker model the recording counts as one speaker (`speaker`, else the recording itself;
        an enrolled speaker's statistics are used when enrolled)."""
        return self._timeline(load_audio(path), str(path), segmentation or SegmentationConfig(), speaker)

    def predict_signal_timeline(self, samples: np.ndarray, sample_rate: int, segmentation: SegmentationConfig | None = None,
                                *, speaker: str | None = None) -> Timeline:
        return self._timeline(prepare_signal(samples, sample_rate), None, segmentation or SegmentationConfig(), speaker)

    def _timeline(self, signal: np.ndarray, name: str | None, config: SegmentationConfig, speaker: str | None = None) -> Timeline:
        if config.method is Segmenter.VAD and self._vad is None:
            self._vad = VoiceActivityDetector()
        cut = segment_signal(signal, TARGET_SAMPLE_RATE, config=config, detector=self._vad)
        pieces = [signal[int(round(s * TARGET_SAMPLE_RATE)) : int(round(e * TARGET_SAMPLE_RATE))] for s, e in cut.spans]
        # a recording is taken as one speaker: a per-speaker model normalises its segments by the recording's statistics
        speakers = [speaker or name or "recording"] * len(pieces) if self.needs_speakers and self.fallback_normalization is None else None
        probs = self.probabilities(pieces, speakers=speakers) if pieces else np.zeros((0, len(self.labels)), np.float32)
        segments = [
            Segment(start, end, self.labels[int(row.argmax())], self._as_dict(row))
            for (start, end), row in zip(cut.spans, probs, strict=True)
        ]
        return Timeline(name, len(signal) / TARGET_SAMPLE_RATE, segments, cut.dropped, self.input_normalization(speakers))


def checkpoint_folders(directory: Path) -> list[Path]:
    """The checkpoint folder itself, or every fold's checkpoint of a run folder (fold order)."""
    if not directory.is_dir():
        raise ModelLoadError(f"{directory}: no such folder; expected a checkpoint folder or a run folder runs/<name>")
    if (directory / META_FILE).exists() or (directory / WEIGHTS_FILE).exists():
        return [directory]  # load_checkpoint says what is missing
    folds = RunFolder(directory).fold_checkpoints()  # ModelLoadError names unfinished folds
    if not folds:
        raise ModelLoadError(
            f"{directory} is neither a checkpoint folder ({META_FILE} + {WEIGHTS_FILE}) nor a run folder (fold_<k>/checkpoint/)"
        )
    return [checkpoint.local_path for _, checkpoint in folds]


def _feature_config(stored: dict, directory: Path, *, ssl_model: str | None) -> FeatureConfig:
    """The checkpoint's FeatureConfig; provenance keys stored beside it (e.g. "encoder") are not config."""
    if not stored or "feature_type" not in stored:
        raise ModelLoadError(f"{directory}: checkpoint.json has no feature_config.feature_type; it cannot say how to compute its inputs")
    try:
        config = FeatureConfig.from_dict({k: v for k, v in stored.items() if k in _FEATURE_CONFIG_KEYS})
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{directory}: the stored feature config is not valid here ({exc})") from exc
    if ssl_model is not None:
        if not config.feature_type.uses_encoder:
            raise ConfigError(f"{directory} uses {config.feature_type.value} features, which need no encoder; drop ssl_model")
        config = dataclasses.replace(config, ssl=dataclasses.replace(config.ssl, model=ssl_model))
    return config


def _check_encoder(stored: dict, computer: FeatureComputer, directory: Path) -> None:
    expected = stored.get("weight_hash")
    if computer.encoder is None or not expected:
        return
    actual = computer.encoder_metadata()["weight_hash"]
    if actual != expected:
        raise ModelLoadError(
            f"{directory}: its features came from encoder weights {expected} ({stored.get('model')}), but "
            f"{computer.encoder.model_id} has weights {actual}; pass ssl_model= the encoder it was trained with"
        )


# ---- the `ser-dist predict` table ------------------------------------------------------------------


def expand_audio_paths(paths: Iterable[Path | str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given and the .wav/.flac files under folders (recursive, sorted); plus (path, reason) for misses."""
    files: list[Path] = []
    missing: list[tuple[str, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                missing.append((str(path), f"folder holds no {' or '.join(AUDIO_SUFFIXES)} files"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            missing.append((str(path), "no such file or folder"))
    return files, missing


def predict_paths(
    paths: list[str],
    model_dir: str,
    *,
    out: str | None = None,
    timeline: bool = False,
    segmenter: str = SegmentationConfig.method.value,
    window_s: float | None = None,
    hop_s: float | None = None,
    device: str = "cpu",
    speaker_column: str | None = None,
    normalization: str | None = None,
) -> pd.DataFrame:
    """Predict every file (folders are searched recursively) and return, and optionally write, the table.

    One row per file, or per segment with `timeline`. A file that cannot be used gives a row with
    status "error" and the reason instead of stopping the run; a segment left out gives status "skipped".
    `out` ending in .csv or .json is written in that format. With `speaker_column`, each path is a CSV
    table with a `path` column and that column (relative paths resolve against the table's folder): a
    per-speaker model then normalises each speaker by the statistics of all of that speaker's files.
    `normalization="utterance"` lets a per-speaker model score files without speakers (each by its own).
    """
    if out is not None and Path(out).suffix.lower() not in TABLE_SUFFIXES:
        raise ConfigError(f"--out {out!r}: unknown table format; expected a file ending in {' or '.join(TABLE_SUFFIXES)}")
    options = {k: v for k, v in (("window_s", window_s), ("hop_s", hop_s)) if v is not None}
    segmentation = SegmentationConfig(method=Segmenter.parse(segmenter), **options)
    predictor = Predictor.from_dir(model_dir, device=device, normalization=normalization)
    speakers: dict[str, str] | None = None
    if speaker_column is not None:
        files, speakers = read_speaker_tables(paths, speaker_column)
        missing = [(str(f), "no such file") for f in files if not f.is_file()]
        files = [f for f in files if f.is_file()]
    else:
        files, missing = expand_audio_paths(paths)
    predictor.input_normalization(None if speakers is None else list(speakers.values()))  # refuses early, naming what to pass
    rows = [_error_row(path, reason) for path, reason in missing]
    if timeline:
        for path in files:
            try:
                result = predictor.predict_timeline(path, segmentation, speaker=None if speakers is None else speakers[str(path)])
            except AudioError as exc:
                rows.append(_error_row(str(path), exc.problem))
                continue
            rows.extend(_timeline_rows(result, predictor.labels))
    else:
        rows.extend(_file_rows(predictor, files, speakers))
    table = pd.DataFrame(rows, columns=_columns(predictor.labels, timeline=timeline))
    n_bad = int((table["status"] != "ok").sum())
    if n_bad:
        logger.warning("%d of %d rows not predicted: %s", n_bad, len(table),
                       "; ".join(f"{r.path}: {r.reason}" for r in table[table["status"] != "ok"].itertuples()))
    if out is not None:
        write_table(table, out)
    return table


def read_speaker_tables(tables: list[str], speaker_column: str) -> tuple[list[Path], dict[str, str]]:
    """Audio paths and their speakers from CSV tables with a `path` column and `speaker_column`."""
    files: list[Path] = []
    speakers: dict[str, str] = {}
    for raw in tables:
        table_path = Path(raw)
        if table_path.suffix.lower() != ".csv" or not table_path.is_file():
            raise ConfigError(f"--speaker-column expects CSV tables (path,{speaker_column}); {raw} is not a CSV file")
        table = pd.read_csv(table_path, dtype=str)
        missing = [c for c in ("path", speaker_column) if c not in table.columns]
        if missing:
            raise ConfigError(f"{table_path}: missing column(s) {missing}; found {list(table.columns)}")
        empty = table.index[table[speaker_column].isna() | table["path"].isna()].tolist()
        if empty:
            raise ConfigError(f"{table_path}: rows {[i + 2 for i in empty][:10]} have no path or no {speaker_column}")
        for path, speaker in zip(table["path"], table[speaker_column], strict=True):
            resolved = Path(path) if Path(path).is_absolute() else table_path.parent / path
            files.append(resolved)
            speakers[str(resolved)] = str(speaker)
    return files, speakers


def write_table(table: pd.DataFrame, out: Path | str) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        out.write_text(json.dumps(json.loads(table.to_json(orient="records")), indent=2))
    else:
        table.to_csv(out, index=False)
    return out


def _columns(labels: list[str], *, timeline: bool) -> list[str]:
    timing = ["start_s", "end_s"] if timeline else []
    return ["path", "status", "reason", *timing, "emotion", "duration_s", "speaker", "normalization", *[f"p_{label}" for label in labels]]


def _error_row(path: str, reason: str, status: str = "error") -> dict:
    return {"path": path, "status": status, "reason": reason}


def _file_rows(predictor: Predictor, files: list[Path], speakers: dict[str, str] | None = None) -> list[dict]:
    rows: list[dict] = []
    signals, names = [], []
    for path in files:
        try:
            signals.append(load_audio(path))
            names.append(str(path))
        except AudioError as exc:
            rows.append(_error_row(str(path), exc.problem))
    who = None if speakers is None else [speakers[n] for n in names]
    try:
        predictions = predictor.predict_signals(signals, names, speakers=who)
    except AudioError:  # an encoder refused one signal of a batch: find which, file by file
        predictions = []
        for k, (signal, name) in enumerate(zip(signals, names, strict=True)):
            try:
                predictions.extend(predictor.predict_signals([signal], [name], speakers=None if who is None else [who[k]]))
            except AudioError as exc:
                rows.append(_error_row(name, exc.problem))
    for p in predictions:
        rows.append({"path": p.path, "status": "ok", "reason": "", "emotion": p.emotion, "duration_s": p.duration_s,
                     "speaker": p.speaker, "normalization": p.normalization,
                     **{f"p_{label}": v for label, v in p.probabilities.items()}})
    order = {str(path): i for i, path in enumerate(files)}
    return sorted(rows, key=lambda r: order.get(r["path"], -1))


def _timeline_rows(result: Timeline, labels: list[str]) -> list[dict]:
    rows = [
        {"path": result.path, "status": "ok", "reason": "", "start_s": s.start, "end_s": s.end, "emotion": s.emotion,
         "duration_s": s.end - s.start, "normalization": result.normalization, **{f"p_{label}": s.probabilities[label] for label in labels}}
        for s in result.segments
    ]
    rows += [
        {"path": result.path, "status": "skipped", "reason": d.reason, "start_s": d.start_s, "end_s": d.end_s, "duration_s": d.end_s - d.start_s}
        for d in result.dropped
    ]
    if not rows:
        rows.append(_error_row(result.path, f"no speech found in {result.duration_s:.2f} s", status="skipped"))
    return sorted(rows, key=lambda r: r.get("start_s", 0.0))
