"""Every error ser-dist raises on purpose. Each subclasses the builtin that fits and says what to do."""

from __future__ import annotations


class SerDistError(Exception):
    """Base class of ser-dist's own errors."""


class CorpusNotFoundError(SerDistError, FileNotFoundError):
    """A corpus root is missing, empty, or not in the published layout."""


class ManifestError(SerDistError, ValueError):
    """A corpus file cannot be turned into a manifest row (bad name, unknown label, duplicate id)."""


class UnknownLabelError(ManifestError):
    """Labels of a corpus table that are neither canonical emotions nor keys of its label map."""

    def __init__(self, table: object, rows: list[tuple[int, str]], valid: list[str] | tuple[str, ...], *, mapped=()):
        self.table, self.rows, self.valid = str(table), list(rows), tuple(valid)
        mapped_note = f" (label map keys: {', '.join(mapped)})" if mapped else ""
        super().__init__(f"{table}: {len(self.rows)} row(s) with unknown labels{mapped_note}: {self.describe(self.rows, self.valid)}")

    @staticmethod
    def describe(rows: list[tuple[int, str]], valid: list[str] | tuple[str, ...], *, limit: int = 20) -> str:
        listed = ", ".join(f"row {line} {label!r}" for line, label in rows[:limit])
        more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
        return (
            f"{listed}{more}; expected one of {', '.join(valid)}, "
            "or map them with a label-map file (--label-map FILE holding {their_label: canonical_label})"
        )


class UnknownNameError(SerDistError, KeyError):
    """A name (corpus, feature type, emotion, protocol) is not one of the valid ones."""

    def __init__(self, kind: str, name: object, valid: list[str] | tuple[str, ...]):
        self.kind, self.name, self.valid = kind, name, tuple(valid)
        super().__init__(f"unknown {kind} {name!r}; expected one of {', '.join(self.valid)}")

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.args[0]


class AudioError(SerDistError, ValueError):
    """An audio file cannot be used: unreadable, empty, too short, non-finite, not audio."""

    def __init__(self, path: object, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


class ModelLoadError(SerDistError, OSError):
    """A pretrained encoder or a trained checkpoint cannot be loaded."""


class FeatureStoreError(SerDistError, ValueError):
    """Stored features are missing, incomplete, or were made with another configuration."""


class ConfigError(SerDistError, ValueError):
    """A configuration value is out of range or inconsistent."""


class ConfigFileNotFoundError(SerDistError, FileNotFoundError):
    """A file the user named as configuration (e.g. a label map) does not exist."""


class SpeakerStatisticsError(ConfigError):
    """A model trained with per-speaker normalisation got an input without its speaker's statistics."""
