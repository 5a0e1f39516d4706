"""`ser-dist serve`: start Serve on the cluster in RAY_ADDRESS (or a local one) and block until stopped."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

APP_NAME = "ser_dist"


@dataclass(frozen=True)
class ServeConfig:
    model: str  # a checkpoint folder or a run folder runs/<name>
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 16  # 1: no batching
    batch_wait_timeout_s: float = 0.01
    replicas: int = 1


def run_service(config: ServeConfig, *, block: bool = True) -> str:
    """Deploy the application and return its URL; with `block`, wait until Ctrl-C, then delete it."""
    from ray import serve

    from ser_dist.ray_runtime import ensure_ray
    from ser_dist.serve.app import EmotionRecognizer, ServeAppConfig

    ensure_ray()
    serve.start(http_options={"host": config.host, "port": config.port})
    app_config = ServeAppConfig(model=config.model, max_batch_size=config.max_batch_size,
                                batch_wait_timeout_s=config.batch_wait_timeout_s)
    app = EmotionRecognizer.options(num_replicas=config.replicas).bind(app_config)
    serve.run(app, name=APP_NAME, route_prefix="/")
    url = f"http://{config.host}:{config.port}"
    logger.info("serving %s at %s (POST /predict, GET /healthz, GET /model); Ctrl-C stops", config.model, url)
    if not block:
        return url
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        logger.info("stopping: deleting the %s application", APP_NAME)
        serve.delete(APP_NAME)
        raise
    return url
