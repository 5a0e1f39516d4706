"""What every job entrypoint shares: parse --config plus overrides, set up logging, join Ray."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any

import yaml

from ser_dist.configuration import from_mapping, load_config_file
from ser_dist.errors import ConfigError, SerDistError


def apply_assignments(data: dict[str, Any], assignments: Iterable[str]) -> dict[str, Any]:
    """Apply `KEY=VALUE` overrides to a config mapping, in order; returns a new mapping.

    Dotted keys reach nested sections (`train.model.width=8`); values are parsed as YAML
    as in a config file (`train.epochs=2` is an int, `ssl_layers=[4,8]` a list, `/tmp/runs` a string,
    `n_folds=null` None).
    Unknown keys are left for `from_mapping`, which names the valid ones.
    """
    data = _deep_copy_mapping(data)
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.epochs=2), got {assignment!r}")
        try:
            value = yaml.safe_load(raw)  # as in a config file: empty or `null` -> None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML ({exc})") from exc
        *parents, leaf = key.split(".")
        node = data
        for depth, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parents[: depth + 1])
                raise ConfigError(f"--set {key}: {where} is {child!r}, not a section with keys")
            node = child
        node[leaf] = value
    return data


def _deep_copy_mapping(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy_mapping(v) if isinstance(v, dict) else v for k, v in data.items()}


def run_job(description: str, config_cls: type, run: Callable[[Any], Any], *, overrides: dict[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML file; keys are the fields of " + config_cls.__name__)
    for flag, help_text in (overrides or {}).items():
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, help=help_text)
    parser.add_argument(
        "--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
        help="override any config key, applied last and in order; dotted keys for nested sections "
             "(train.epochs=2), values parsed as YAML; repeatable",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        data = load_config_file(args.config) if args.config else {}
        for flag in overrides or {}:
            if getattr(args, flag) is not None:
                data[flag] = getattr(args, flag)
        data = apply_assignments(data, args.assignments)
        config = from_mapping(config_cls, data, where=args.config or "config")
        from ser_dist.ray_runtime import ensure_ray

        ensure_ray()
        run(config)
    except SerDistError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0
