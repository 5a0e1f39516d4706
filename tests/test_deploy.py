"""deploy/: the KubeRay manifests parse, run the repository's own entrypoint, and carry the repository's own
Serve config, which passes Ray Serve's schema and the application's argument check."""

from __future__ import annotations

import importlib
import shlex
from pathlib import Path

import pytest
import yaml

from jobs.common import apply_assignments
from ser_dist.configuration import from_mapping, load_config_file
from ser_dist.pipeline import PipelineConfig

pytest.importorskip("ray.serve", reason="the Serve config check needs ray[serve]")
from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY = REPO_ROOT / "deploy"


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def test_serve_config_passes_rays_schema_and_the_apps_arguments():
    config = ServeDeploySchema.model_validate(load("serve_config.yaml"))
    (app,) = config.applications
    assert isinstance(app, ServeApplicationSchema)
    module, _, attribute = app.import_path.partition(":")
    build_app = getattr(importlib.import_module(module), attribute)  # the import path resolves
    from ser_dist.serve.app import ServeAppConfig
    from ser_dist.serve.app import build_app as ours

    assert build_app is ours
    args = ServeAppConfig.from_args(app.args)  # every arg is one the application takes
    assert args.max_batch_size > 1
    (deployment,) = app.deployments
    assert deployment.name == "EmotionRecognizer"
    scaling = deployment.autoscaling_config
    assert scaling["min_replicas"] <= scaling["initial_replicas"] <= scaling["max_replicas"]


def test_rayservice_embeds_the_serve_config():
    service = load("rayservice.yaml")
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert embedded == load("serve_config.yaml")
    ServeDeploySchema.model_validate(embedded)
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0"
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        (container,) = group["template"]["spec"]["containers"]
        assert container["workingDir"] == "/app"  # args.model (runs/...) is relative to it


def test_rayjob_runs_the_pipeline_entrypoint_with_a_valid_config():
    job = load("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.pipeline"]
    assert (REPO_ROOT / (argv[2].replace(".", "/") + ".py")).is_file()
    flags = {}
    sets = []
    for flag, value in zip(argv[3::2], argv[4::2], strict=True):
        (sets.append(value) if flag == "--set" else flags.__setitem__(flag, value))
    assert (REPO_ROOT / flags["--config"]).is_file()
    data = load_config_file(REPO_ROOT / flags["--config"]) | {"data_root": flags["--data-root"]}
    config = from_mapping(PipelineConfig, apply_assignments(data, sets), where="rayjob entrypoint")
    assert config.runs_out == "/data/ser/runs"
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["working_dir"] == "/app"
