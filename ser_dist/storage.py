"""Where features and results live: a local path or a URI that `pyarrow.fs` understands.

A multi-node Ray cluster needs storage every node can reach. Every location argument of ser-dist
(feature store root, run folders, sweep folders) takes either a local path (`data/features`) or a
URI: `s3://bucket/prefix` (credentials from the usual AWS environment or in the URI, options such as
`?region=eu-west-1&endpoint_override=host:9000&scheme=http` in the query), `gs://…`, `hdfs://…`,
`file:///abs/path`.

`Location` is the small part of `pathlib.Path` the store and the runs need (join, name, parent,
read/write text, list, delete), backed by the location's `pyarrow.fs.FileSystem`; it pickles, so Ray
workers on other nodes open the same store. `StagedDirectory` gives code that writes many small files
(reports, spreadsheets, PNGs) a local working folder mirrored to a remote location.

Atomicity: on a local or `file://` filesystem, files are written under a temporary name and renamed.
On object stores an object becomes visible only once its upload completes, so a reader never sees
half of one; that is what the feature store relies on there.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from ser_dist.errors import ConfigError

logger = logging.getLogger(__name__)

LOCAL_SCHEMES = ("", "file")


def is_uri(value: str | os.PathLike) -> bool:
    """True for `scheme://…` strings (s3, gs, hdfs, file, …); False for plain paths."""
    text = os.fspath(value)
    return "://" in text and text.split("://", 1)[0].isidentifier()


@dataclass(frozen=True, eq=False)
class Location:
    """A file or folder on a local disk or behind a `pyarrow.fs` URI.

    `uri` round-trips (it keeps the scheme, credentials and query options the user gave), `path` is
    the filesystem's own path (`bucket/prefix/…` on S3, an absolute path locally).
    """

    scheme: str  # "" for a local path
    path: str
    authority_prefix: str = ""  # "user:secret@" as given in the URI, if any
    query: str = ""
    _filesystem: pafs.FileSystem | None = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(cls, value: str | os.PathLike | Location) -> Location:
        if isinstance(value, Location):
            return value
        text = os.fspath(value)
        if not is_uri(text):
            return cls("", str(Path(text).expanduser().absolute()))
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        userinfo, _, host = parts.netloc.rpartition("@")
        if scheme == "file":
            if host not in ("", "localhost"):
                raise ConfigError(f"{text}: file:// URIs name a local path (file:///abs/path), not a host")
            return cls("file", str(Path(parts.path or "/").absolute()))
        path = (host + parts.path).rstrip("/")
        if not path:
            raise ConfigError(f"{text}: the URI names no bucket or path")
        return cls(scheme, path, f"{userinfo}@" if userinfo else "", parts.query)

    # -- identity -----------------------------------------------------------------------------
    def _key(self) -> tuple[str, str, str, str]:
        scheme = "" if self.scheme == "file" else self.scheme  # file:///x is the local path /x
        return (scheme, self.path.rstrip("/") or "/", self.authority_prefix, self.query)

    def __eq__(self, other: object) -> bool:
        """Equal to another Location of the same place, or to a local path (str/Path) naming it."""
        if isinstance(other, Location):
            return self._key() == other._key()
        if isinstance(other, str | os.PathLike):
            return self._key() == Location.parse(other)._key()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def is_local(self) -> bool:
        return self.scheme in LOCAL_SCHEMES

    @property
    def uri(self) -> str:
        if self.scheme == "":
            return self.path
        if self.scheme == "file":
            return f"file://{self.path}"
        return f"{self.scheme}://{self.authority_prefix}{self.path}" + (f"?{self.query}" if self.query else "")

    def __str__(self) -> str:
        return self.uri

    def __fspath__(self) -> str:
        if not self.is_local:
            raise TypeError(f"{self.redacted()} is not on a local filesystem; use its Location methods")
        return self.path

    def redacted(self) -> str:
        """The URI without credentials, for logs and reports."""
        return self.uri.replace(self.authority_prefix, "***@") if self.authority_prefix else self.uri

    @property
    def local_path(self) -> Path:
        return Path(os.fspath(self))

    @property
    def filesystem(self) -> pafs.FileSystem:
        if self._filesystem is not None:
            return self._filesystem
        if self.is_local:
            fs = pafs.LocalFileSystem()
        else:
            try:
                fs, _ = pafs.FileSystem.from_uri(self.uri)
            except (ValueError, OSError) as exc:  # ArrowInvalid is a ValueError
                raise ConfigError(f"cannot open storage {self.redacted()}: {exc}") from exc
        object.__setattr__(self, "_filesystem", fs)
        return fs

    def __reduce__(self):  # pickled by URI: each process opens its own filesystem client
        return (Location, (self.scheme, self.path, self.authority_prefix, self.query))

    # -- path algebra -------------------------------------------------------------------------
    def __truediv__(self, other: str) -> Location:
        child = str(other).strip("/")
        return Location(self.scheme, f"{self.path.rstrip('/')}/{child}", self.authority_prefix, self.query, self._filesystem)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> Location:
        head = self.path.rstrip("/").rsplit("/", 1)[0] or "/"
        return Location(self.scheme, head, self.authority_prefix, self.query, self._filesystem)

    @property
    def parents(self) -> list[Location]:
        out, current = [], self
        while current.parent.path != current.path:
            current = current.parent
            out.append(current)
        return out

    # -- queries ------------------------------------------------------------------------------
    def _info(self) -> pafs.FileInfo:
        return self.filesystem.get_file_info(self.path)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def iterdir(self) -> list[Location]:
        if not self.is_dir():
            return []
        infos = self.filesystem.get_file_info(pafs.FileSelector(self.path, recursive=False))
        return sorted((self / info.base_name for info in infos), key=lambda loc: loc.path)

    def glob(self, pattern: str) -> list[Location]:
        """Children matching `prefix*suffix` (one `*` at most), like Path.glob for a flat folder."""
        prefix, star, suffix = pattern.partition("*")
        return [c for c in self.iterdir() if (c.name.startswith(prefix) and c.name.endswith(suffix) if star else c.name == pattern)]

    # -- reading and writing ------------------------------------------------------------------
    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        self.filesystem.create_dir(self.path, recursive=True)

    def read_bytes(self) -> bytes:
        with self.filesystem.open_input_stream(self.path) as stream:
            return stream.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def write_bytes(self, data: bytes) -> None:
        """Whole-file write: temp name + rename locally, one upload on object stores."""
        if self.is_local:
            self.parent.mkdir()
            tmp = self.parent / f".tmp-{os.getpid()}-{self.name}"
            with self.filesystem.open_output_stream(tmp.path) as stream:
                stream.write(data)
            os.replace(tmp.path, self.path)
        else:
            with self.filesystem.open_output_stream(self.path) as stream:
                stream.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.filesystem.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def remove_tree(self) -> None:
        if self.is_dir():
            self.filesystem.delete_dir(self.path)

    def rename(self, target: Location) -> None:
        self.filesystem.move(self.path, target.path)

    # -- copying between a local folder and a location ----------------------------------------
    def upload_from(self, local_dir: Path, *, exclude: tuple[str, ...] = (), skip: dict | None = None) -> int:
        """Copy every file under `local_dir` to this location (same relative paths); returns how many.

        `skip` maps relative path -> (size, mtime) of files uploaded before; unchanged ones are not
        sent again, and the dict is updated.
        """
        n = 0
        for file in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
            relative = file.relative_to(local_dir).as_posix()
            if relative.split("/", 1)[0] in exclude:
                continue
            stat = file.stat()
            stamp = (stat.st_size, stat.st_mtime_ns)
            if skip is not None and skip.get(relative) == stamp:
                continue
            (self / relative).write_bytes(file.read_bytes())
            if skip is not None:
                skip[relative] = stamp
            n += 1
        return n

    def download_to(self, local_dir: Path, *, exclude: tuple[str, ...] = ()) -> int:
        """Copy every file under this location into `local_dir`; returns how many (0 if it does not exist)."""
        if not self.is_dir():
            return 0
        n = 0
        for info in self.filesystem.get_file_info(pafs.FileSelector(self.path, recursive=True)):
            if info.type != pafs.FileType.File:
                continue
            relative = info.path[len(self.path.rstrip("/")) + 1 :]
            if relative.split("/", 1)[0] in exclude:
                continue
            target = Path(local_dir) / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.filesystem.open_input_stream(info.path) as stream:
                target.write_bytes(stream.read())
            n += 1
        return n

    # -- Ray Train / Tune ---------------------------------------------------------------------
    def ray_storage(self) -> dict:
        """`storage_path` (and `storage_filesystem` for remote stores) for Ray's RunConfig."""
        if self.is_local:
            return {"storage_path": self.path}
        return {"storage_path": self.path, "storage_filesystem": self.filesystem}


def as_location(value: str | os.PathLike | Location) -> Location:
    return Location.parse(value)


class StagedDirectory:
    """A local working folder for a location: the location itself when local, else a temp mirror.

    For a remote location the existing files are downloaded first (so a rerun sees finished folds),
    `sync()` uploads what changed so far, and leaving the `with` block uploads everything and removes
    the mirror. `exclude` names top-level folders that are neither downloaded nor uploaded (e.g.
    Ray's own storage, which Ray writes to the location directly).
    """

    def __init__(self, location: Location | str | os.PathLike, *, exclude: tuple[str, ...] = ()):
        self.location = as_location(location)
        self.exclude = exclude
        self._tmp: str | None = None
        self._uploaded: dict = {}
        self.local: Path

    def __enter__(self) -> StagedDirectory:
        if self.location.is_local:
            self.local = self.location.local_path
            self.local.mkdir(parents=True, exist_ok=True)
        else:
            self._tmp = tempfile.mkdtemp(prefix="ser_dist_stage_")
            self.local = Path(self._tmp)
            n = self.location.download_to(self.local, exclude=self.exclude)
            self._uploaded = {p.relative_to(self.local).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
                              for p in self.local.rglob("*") if p.is_file()}
            logger.info("staging %s in %s (%d existing file(s) fetched)", self.location.redacted(), self.local, n)
        return self

    def sync(self) -> None:
        if not self.location.is_local:
            self.location.mkdir()
            self.location.upload_from(self.local, exclude=self.exclude, skip=self._uploaded)

    def __exit__(self, *exc_info) -> None:
        try:
            self.sync()
        finally:
            if self._tmp:
                shutil.rmtree(self._tmp, ignore_errors=True)
