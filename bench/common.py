"""Shared bench helpers: what machine a figure came from, peak memory of a process tree (Ray's included),
and one JSON file per bench under bench/results/.

Benches import this as `common` (run as `python bench/<name>.py`, bench/ is then on sys.path) or as
`bench.common` (run as `python -m bench.<name>`).
"""

from __future__ import annotations

import json
import os
import platform
import re
import threading
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_VERSIONED = ("ser-dist", "torch", "ray", "transformers", "numpy", "pyarrow")
MIB = 2**20
# Per-node daemons that Ray also titles `ray::...`; they are not workers.
RAY_AGENTS = frozenset({"ray::DashboardAgent", "ray::RuntimeEnvAgent"})


def machine_info() -> dict:
    """CPU, memory, accelerator and library versions, read without importing torch or ray."""
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(_mem_total_bytes() / 2**30, 1),
        "gpu": _gpu(),
        "versions": {name: _version(name) for name in _VERSIONED},
    }


class MemorySampler:
    """Peak RSS of a process (the 'driver') and of its descendants, sampled by a background thread.

    Descendants titled `ray::...` (actors, tasks, idle workers) are Ray workers; the rest (raylet,
    gcs_server, Ray's agents, ...) is Ray's system. Only the driver's own process tree is read, so
    other Ray clusters on the machine never count. `track` names extra sums by title prefix, e.g.
    `{"feature_workers": "ray::MapWorker"}`. RSS counts shared pages once per process.

        with MemorySampler(os.getpid()) as memory:
            run()
        memory.summary()  # {"peak_driver_mib": ..., "peak_workers_mib": ..., ...}
    """

    def __init__(self, pid: int, *, interval_s: float = 0.2, track: dict[str, str] | None = None):
        import psutil

        self._psutil = psutil
        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        self.track = dict(track or {})
        kinds = ["driver", "workers", "ray_system", "driver_plus_workers", "all", *self.track]
        self.peak = dict.fromkeys(kinds, 0)
        self.max_workers = 0
        self.peak_by_title: dict[str, int] = {}  # one process's peak, by title without the method name
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        try:
            now = dict.fromkeys(self.peak, 0)
            now["driver"] = self.root.memory_info().rss
            children = self.root.children(recursive=True)
        except self._psutil.Error:
            return
        n_workers = 0
        for proc in children:
            try:
                rss = proc.memory_info().rss
                title = process_title(proc)
            except self._psutil.Error:
                continue  # ended between listing and reading
            if not rss:
                continue
            if title.startswith("ray::") and title not in RAY_AGENTS:
                now["workers"] += rss
                n_workers += 1
            else:
                now["ray_system"] += rss
            for name, prefix in self.track.items():
                if title.startswith(prefix):
                    now[name] += rss
            self.peak_by_title[title] = max(rss, self.peak_by_title.get(title, 0))
        now["driver_plus_workers"] = now["driver"] + now["workers"]
        now["all"] = now["driver_plus_workers"] + now["ray_system"]
        for key, value in now.items():
            self.peak[key] = max(self.peak[key], value)
        self.max_workers = max(self.max_workers, n_workers)
        self.samples += 1

    def summary(self) -> dict:
        out = {f"peak_{key}_mib": round(value / MIB, 1) for key, value in self.peak.items()}
        out["max_worker_processes"] = self.max_workers
        out["peak_by_title_mib"] = {title: round(rss / MIB, 1) for title, rss in sorted(self.peak_by_title.items())}
        out["samples"] = self.samples
        return out


def process_title(proc) -> str:
    """A process's title without arguments; for Ray workers, without the running method (`ray::_StatsActor`)."""
    cmdline = proc.cmdline()
    title = (cmdline[0] if cmdline else proc.name()).split(" ")[0]
    match = re.match(r"ray::[^.]*", title)
    return match.group(0) if match else Path(title).name


def write_result(name: str, payload: dict, *, results_dir: Path | str | None = None) -> Path:
    """Write `<results_dir>/<name>.json` (payload + machine + date) and print its tables.

    Every top-level payload entry that is a list of flat dicts (e.g. "figures", "targets") is
    printed as a table; everything else is only written.
    """
    directory = Path(results_dir) if results_dir else RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    record = {
        "bench": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        **payload,
    }
    path = directory / f"{name}.json"
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(_repo_relative(json.dumps(record, indent=2, default=str)) + "\n")
    os.replace(tmp, path)
    machine = record["machine"]
    print(f"\n{name}: {machine['cpu_model']}, {machine['cpus_usable']} CPU(s), {machine['memory_gib']} GiB, GPU: {machine['gpu']}")
    for key, value in payload.items():
        if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
            print(f"\n[{key}]")
            print(format_table(value))
    print(f"\nwritten: {path}")
    return path


def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Plain-text table of flat dicts; floats get 3 significant decimals, missing cells are blank."""
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    lines = ["  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _gpu() -> str:
    """'none', or the NVIDIA GPU names the driver lists (no CUDA initialisation)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir():
        names = []
        for info in sorted(gpus.glob("*/information")):
            for line in info.read_text().splitlines():
                if line.startswith("Model:"):
                    names.append(line.split(":", 1)[1].strip())
        if names:
            return ", ".join(names)
    return "none"


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _repo_relative(text: str) -> str:
    """Paths in results name places relative to the repo (`data/...`, `../shared/...`), not this machine's."""
    repo = RESULTS_DIR.parents[1]
    for absolute, relative in ((repo.parent / "shared", "../shared"), (repo, ".")):
        text = text.replace(f'"{absolute}/', f'"{relative}/').replace(f'"{absolute}"', f'"{relative}"')
    return text.replace('"./', '"')
