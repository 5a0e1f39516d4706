"""What every job entrypoint shares: parse --config plus a few overrides, set up logging, join Ray."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

from ser_dist.configuration import from_mapping, load_config_file
from ser_dist.errors import SerDistError


def run_job(description: str, config_cls: type, run: Callable[[Any], Any], *, overrides: dict[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML file; keys are the fields of " + config_cls.__name__)
    for flag, help_text in (overrides or {}).items():
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, help=help_text)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        data = load_config_file(args.config) if args.config else {}
        for flag in overrides or {}:
            if getattr(args, flag) is not None:
                data[flag] = getattr(args, flag)
        config = from_mapping(config_cls, data, where=args.config or "config")
        from ser_dist.ray_runtime import ensure_ray

        ensure_ray()
        run(config)
    except SerDistError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0
