"""cluster.yaml passes Ray's own cluster-launcher validation (no cloud calls) and says what the README promises."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema", reason="Ray's cluster config schema check needs jsonschema (ray[default])")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO_ROOT / "cluster.yaml"


def validated(raw: dict) -> dict:
    """What `ray up` checks before it talks to the cloud: defaults filled in, then the schema and bounds."""
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def config(raw: dict) -> dict:
    return validated(raw)


def gpu_types(config: dict) -> dict[str, dict]:
    return {name: spec for name, spec in config["available_node_types"].items() if spec["resources"].get("GPU", 0) >= 1}


def test_validates_with_rays_schema(config):
    assert config["provider"]["type"] == "aws"
    assert config["provider"]["region"]
    assert config["head_node_type"] in config["available_node_types"]


def test_cpu_head_and_autoscaling_gpu_workers(raw, config):
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] >= 1
    workers = gpu_types(config)
    assert workers, "no worker type with GPU resources"
    for name, spec in workers.items():
        assert name != config["head_node_type"]
        assert spec["resources"]["CPU"] >= 1  # counted in the file: no instance-type lookup at launch
        assert 0 <= spec["min_workers"] <= spec["max_workers"] <= config["max_workers"]
        assert "max_workers" in raw["available_node_types"][name], "autoscaling bound of the GPU type left to defaults"
    assert config["max_workers"] >= 1


@pytest.mark.parametrize("role", ["head", "worker"])
def test_setup_installs_pinned_torch_then_this_package(config, role):
    commands = config[f"{role}_setup_commands"]  # global setup_commands already merged in
    torch_at = [i for i, c in enumerate(commands) if re.search(r"pip install .*torch==2\.13\.0", c)]
    package_at = [i for i, c in enumerate(commands) if re.search(r"pip install .*-e ~/ser-dist\b", c)]
    assert torch_at and package_at, commands
    assert torch_at[0] < package_at[0], "torch must be pinned before the package pulls an unpinned build"


def test_working_copy_is_mounted_without_ignored_files(raw):
    mounts = raw["file_mounts"]
    assert (REPO_ROOT / mounts["~/ser-dist"]).resolve() == REPO_ROOT  # relative to the repo root, where `ray up` runs
    assert ".gitignore" in raw["rsync_filter"]  # .venv/, data/, runs/ stay behind


def test_dashboard_on_localhost_and_token_auth_on(raw):
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in head_start
    for role in ("head", "worker"):
        start = [c for c in raw[f"{role}_start_ray_commands"] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), start
    assert "~/.ray/auth_token" in raw["file_mounts"], "workers need the cluster's token"


_DELETE = object()


def _set(path: str, value):
    def edit(config: dict) -> None:
        *parents, leaf = path.split(".")
        node = config
        for part in parents:
            node = node[part]
        if value is _DELETE:
            del node[leaf]
        else:
            node[leaf] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        (_set("max_workers", -1), jsonschema.ValidationError, "less than the minimum of 0"),
        (_set("max_worker", 3), jsonschema.ValidationError, "'max_worker' was unexpected"),  # a typo
        (_set("available_node_types.gpu_worker.resources", {"GPU": "one"}), jsonschema.ValidationError, "not of type 'integer'"),
        (_set("available_node_types.gpu_worker.node_config", _DELETE), jsonschema.ValidationError, "'node_config' is a required"),
        (_set("head_node_type", "head_gpu"), ValueError, "must be one of `available_node_types`"),
        (_set("available_node_types.gpu_worker.min_workers", 9), ValueError, "smaller than the sum of `min_workers`"),
    ],
    ids=["negative-max-workers", "unknown-key", "non-integer-resource", "missing-node-config", "unknown-head-type", "min-above-max"],
)
def test_broken_copies_fail_validation(raw, edit, error, match):
    broken = copy.deepcopy(raw)
    edit(broken)
    with pytest.raises(error, match=match):
        validated(broken)
