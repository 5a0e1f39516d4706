"""Joining or starting Ray the same way from the CLI, jobs, benches and tests."""

from __future__ import annotations

import logging
import os

import ray

logger = logging.getLogger(__name__)


def ensure_ray(*, num_cpus: int | None = None, quiet: bool = True) -> None:
    """Join the cluster in RAY_ADDRESS (as `ray job submit` sets) or start a local one."""
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    kwargs = {"logging_level": logging.ERROR if quiet else logging.INFO, "log_to_driver": not quiet}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
    logger.info("Ray resources: %s", ray.cluster_resources())


def cluster_has_gpu() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


def cluster_cpus() -> int:
    return int(ray.cluster_resources().get("CPU", 1))
