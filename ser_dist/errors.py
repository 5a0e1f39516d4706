"""Every error ser-dist raises on purpose. Each subclasses the builtin that fits and says what to do."""

from __future__ import annotations


class SerDistError(Exception):
    """Base class of ser-dist's own errors."""


class CorpusNotFoundError(SerDistError, FileNotFoundError):
    """A corpus root is missing, empty, or not in the published layout."""


class ManifestError(SerDistError, ValueError):
    """A corpus file cannot be turned into a manifest row (bad name, unknown label, duplicate id)."""


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
