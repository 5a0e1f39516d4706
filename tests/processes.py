"""Stopping the processes a test started (never `ray stop`, which ends every Ray process on the machine)."""

from __future__ import annotations

import signal
from collections.abc import Callable


def stop_processes(find: Callable[[], list], *, first: signal.Signals = signal.SIGTERM, grace_s: float = 5.0) -> list[str]:
    """Send `first` to every process `find()` returns, wait `grace_s`, SIGKILL what is left; returns the survivors
    ("pid command line"). `find` is called again at each step, so processes started meanwhile are caught too."""
    import psutil

    for signum, wait in ((first, grace_s), (signal.SIGKILL, 5.0)):
        procs = find()
        if not procs:
            break
        for proc in procs:
            try:
                proc.send_signal(signum)
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(procs, timeout=wait)
    survivors = []
    for proc in find():
        try:
            survivors.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            continue
    return survivors


def processes_of(temp_dir, *, marker: str, tag: str) -> list:
    """Every live process of one Ray node or cluster this test started: `temp_dir` in its command line or
    `marker`=`tag` in its environment, plus all their descendants (Ray workers rename themselves `ray::...`).
    Never this process or its parents."""
    import os

    import psutil

    spared = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        if proc.pid in spared:
            continue
        try:
            if str(temp_dir) in " ".join(proc.cmdline()) or proc.environ().get(marker) == tag:
                found[proc.pid] = proc
                found |= {child.pid: child for child in proc.children(recursive=True) if child.pid not in spared}
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    alive = []
    for proc in found.values():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            continue
    return alive
