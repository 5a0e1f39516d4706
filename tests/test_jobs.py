"""Job entrypoints: `--set` overrides, and `ray job submit` end to end against a token-auth head on 127.0.0.1.

The end-to-end test starts its own head with `ray start --head` (unique temp dir, free ports, its own
token file), submits `python -m jobs.pipeline --config configs/tiny_emodb.yaml` on a 28-file EMODB
subset, waits for SUCCEEDED, checks the reports, and stops only that head: `ray stop` would end every
Ray process on the machine (../shared/notes/ray-2.60.md), so `stop_head` kills this cluster's processes
by their temp dir, their marker variable and their parentage.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from ser_dist.errors import ConfigError
from ser_dist.runs import RunFolder, RunFolds
from tests.processes import processes_of, stop_processes

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent  # the head runs this venv's `ray`, so the job's `python` is this venv's too
RAY = VENV_BIN / "ray"
MARKER = "SER_DIST_TEST_CLUSTER"  # set on `ray start`; every process of the cluster inherits it
EMODB_EMOTIONS = "WLEAFTN"  # anger, boredom, disgust, fear, happiness, sadness, neutral
SUBSET_SPEAKERS = ("03", "09", "10", "11")  # 2 men, 2 women; each has all seven emotions
JOB_TIMEOUT_S = 600.0  # ~105 s at load 22-35 on 2 shared cores; once > 240 s while other benchmarks ran beside it
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


# --- `--set KEY=VALUE` overrides (jobs/common.py) -------------------------------------------------


@pytest.fixture
def jobs_common(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT))  # `jobs` is a top-level folder, not part of the package
    return importlib.import_module("jobs.common")


def test_set_reaches_nested_keys_with_yaml_values(jobs_common):
    data = {"name": "demo", "train": {"epochs": 12, "model": {"width": 32}}}
    out = jobs_common.apply_assignments(
        data, ["train.epochs=2", "train.model.width=8", "ssl_layers=[4, 8]", "runs_out=/tmp/x/runs", "n_folds=null", "extraction.num_workers=1"]
    )
    assert out == {
        "name": "demo", "train": {"epochs": 2, "model": {"width": 8}}, "ssl_layers": [4, 8], "runs_out": "/tmp/x/runs",
        "n_folds": None, "extraction": {"num_workers": 1},
    }
    assert data["train"] == {"epochs": 12, "model": {"width": 32}}  # the loaded config is not modified


def test_set_later_assignment_wins(jobs_common):
    assert jobs_common.apply_assignments({}, ["seed=1", "seed=2"]) == {"seed": 2}


@pytest.mark.parametrize(
    ("assignment", "match"),
    [("train.epochs", "expects KEY=VALUE"), ("=3", "expects KEY=VALUE"), ("name.sub=1", "not a section"), ("seed=[1", "not valid YAML")],
)
def test_set_rejects_malformed_assignments(jobs_common, assignment, match):
    with pytest.raises(ConfigError, match=match):
        jobs_common.apply_assignments({"name": "demo"}, [assignment])


def test_set_unknown_key_is_named_by_the_config(jobs_common):
    from ser_dist.configuration import from_mapping, load_config_file
    from ser_dist.pipeline import PipelineConfig

    data = jobs_common.apply_assignments(load_config_file(REPO_ROOT / "configs" / "tiny_emodb.yaml"), ["train.epoch=3"])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['epoch'\]; valid keys: .*'epochs'"):
        from_mapping(PipelineConfig, data, where="tiny_emodb.yaml")


@pytest.mark.parametrize("name", ["tiny_emodb", "emodb_to_ravdess", "demo_emodb"])
def test_job_configs_build_a_pipeline_config(name):
    from ser_dist.configuration import from_mapping, load_config_file
    from ser_dist.pipeline import PipelineConfig

    config = from_mapping(PipelineConfig, load_config_file(REPO_ROOT / "configs" / f"{name}.yaml"), where=name)
    assert config.corpus == "EMODB"


def test_tune_config_builds_a_tune_config():
    from ser_dist.configuration import from_mapping, load_config_file
    from ser_dist.tuning import TuneConfig

    config = from_mapping(TuneConfig, load_config_file(REPO_ROOT / "configs" / "tune_emodb.yaml"), where="tune_emodb")
    assert config.final_run and config.inner_folds >= 1 and config.space.width


@pytest.mark.parametrize("module", ["pipeline", "extract", "train", "tune", "evaluate"])
def test_every_job_entrypoint_parses(module):
    done = subprocess.run([sys.executable, "-m", f"jobs.{module}", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--config" in done.stdout and "--set" in done.stdout, done.stderr[-2000:]


def test_extract_job_extracts_every_member_of_a_pool(monkeypatch):
    import jobs.extract as job
    from ser_dist.api import ExtractConfig

    seen = []
    monkeypatch.setattr(job, "extract", lambda config: seen.append(config) or config.corpus)
    assert job.extract_each(ExtractConfig(corpus="EMODB, RAVDESS", features="LOGMEL")) == ["EMODB", "RAVDESS"]
    assert [c.features for c in seen] == ["LOGMEL", "LOGMEL"]
    assert job.extract_each(ExtractConfig(corpus="EMODB")) == ["EMODB"]


def test_evaluate_job_names_missing_fields(tmp_path):
    done = subprocess.run([sys.executable, "-m", "jobs.evaluate", "--source-run", str(tmp_path)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, env=os.environ | {"RAY_AUTH_MODE": "disabled"})
    assert done.returncode == 2 and "target_features" in done.stderr, done.stderr[-2000:]


# --- a head of our own: start, find its processes, stop only it -----------------------------------


@dataclass
class Head:
    temp_dir: Path  # short, unique: Ray's socket paths must stay under ~107 bytes
    token: str
    env: dict[str, str]
    gcs_port: int
    dashboard_port: int

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_range(size: int) -> tuple[int, int]:
    """A block of free ports below the ephemeral range, so worker ports don't meet other clusters' random ones."""
    rng = secrets.SystemRandom()
    for _ in range(50):
        low = rng.randrange(20_000, 30_000 - size)
        try:
            for port in range(low, low + size):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return low, low + size - 1
    raise RuntimeError(f"no block of {size} free ports found in 20000-30000")


def ray_cli(args: list[str], env: dict[str, str], *, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(RAY), *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def start_head(root: Path) -> Head:
    """`ray start --head` on 127.0.0.1 with token auth, a token file of its own and ports nobody else uses."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rt_", dir="/tmp"))
    token = secrets.token_hex(32)  # 64 hex chars, like `ray get-auth-token --generate`
    token_path = root / "auth_token"
    token_path.write_text(token)
    token_path.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # e.g. the suite's RAY_AUTH_MODE=disabled
    env |= {
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path),  # HOME's ~/.ray/auth_token is not used
        MARKER: temp_dir.name,
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    }
    gcs_port, dashboard_port = free_port(), free_port()
    min_worker, max_worker = free_port_range(200)
    args = [
        "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}", f"--temp-dir={temp_dir}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={free_port()}", f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}", f"--min-worker-port={min_worker}", f"--max-worker-port={max_worker}",
        "--num-cpus=2", "--num-gpus=0", "--object-store-memory=300000000", "--disable-usage-stats",
    ]
    head = Head(temp_dir, token, env, gcs_port, dashboard_port)
    try:
        started = ray_cli(args, env, timeout=180)
    except subprocess.TimeoutExpired:
        stop_head(head)
        raise
    if started.returncode != 0:
        stop_head(head)
        raise AssertionError(f"ray start --head failed ({started.returncode}):\n{started.stdout}\n{started.stderr}")
    return head


def cluster_processes(head: Head) -> list:
    """Every live process of this head (its temp dir or marker), with their descendants."""
    return processes_of(head.temp_dir, marker=MARKER, tag=head.temp_dir.name)


def stop_head(head: Head, *, grace_s: float = 5.0) -> list[str]:
    """Stop this head only (never `ray stop`): SIGTERM its processes, SIGKILL what is left; returns survivors."""
    survivors = stop_processes(lambda: cluster_processes(head), grace_s=grace_s)
    shutil.rmtree(head.temp_dir, ignore_errors=True)
    return survivors


# --- the end-to-end test ----------------------------------------------------------------------------


def make_ravdess_subset(source: Path, dest: Path) -> Path:
    """`dest/ravdess/Actor_0{1,2}/`: one speech file per emotion for two actors (16 files)."""
    for actor in ("Actor_01", "Actor_02"):
        (dest / "ravdess" / actor).mkdir(parents=True)
        files = sorted((source / actor).glob("03-01-*.wav"))
        for emotion in range(1, 9):
            first = next(p for p in files if int(p.name.split("-")[2]) == emotion)
            shutil.copy2(first, dest / "ravdess" / actor / first.name)
    return dest


def make_emodb_subset(source: Path, dest: Path) -> Path:
    """`dest/emodb/wav/`: one file per emotion for each of four speakers (28 files)."""
    wav_dir = dest / "emodb" / "wav"
    wav_dir.mkdir(parents=True)
    files = sorted((source / "wav").glob("*.wav"))
    for speaker in SUBSET_SPEAKERS:
        for emotion in EMODB_EMOTIONS:
            first = next(p for p in files if p.name[:2] == speaker and p.name[5] == emotion)
            shutil.copy2(first, wav_dir / first.name)
    return dest


def job_info(head: Head, submission_id: str, *, token: str | None) -> tuple[int, dict]:
    """GET the job through the dashboard's REST API (cheaper than a `ray` CLI call per poll on 2 cores)."""
    request = urllib.request.Request(f"{head.dashboard_url}/api/jobs/{submission_id}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def wait_for_job(head: Head, submission_id: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    status = "UNKNOWN"
    while time.monotonic() < deadline:
        code, info = job_info(head, submission_id, token=head.token)
        status = info.get("status", f"HTTP {code}")
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            if info.get("start_time") and info.get("end_time"):
                print(f"job {submission_id}: {status} after {(info['end_time'] - info['start_time']) / 1000:.1f} s")
            return status
        time.sleep(3)
    return f"TIMEOUT after {timeout_s:.0f} s (last status {status})"


@pytest.fixture
def head(tmp_path):
    pytest.importorskip("psutil", reason="stopping only this test's head needs psutil to find its processes")
    if not RAY.is_file():
        pytest.skip(f"no `ray` CLI in this venv ({RAY}); install ray[default]")
    head = start_head(tmp_path)
    try:
        yield head
    finally:
        survivors = stop_head(head)
        assert not survivors, f"processes of the test head outlived stop_head: {survivors}"


@pytest.mark.slow
def test_pipeline_job_submitted_to_a_token_auth_head(head, tmp_path, emodb_root, ravdess_root):
    import psutil

    listening = {c.laddr.ip for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == head.dashboard_port}
    assert listening == {"127.0.0.1"}, f"dashboard listens on {listening}"
    data_root = make_emodb_subset(emodb_root, tmp_path / "corpora")
    make_ravdess_subset(ravdess_root, data_root)
    features_out, runs_out = tmp_path / "features", tmp_path / "runs"
    submission_id = f"tiny_{head.temp_dir.name}"
    started = time.monotonic()
    submitted = ray_cli([
        "job", "submit", "--address", head.dashboard_url, "--working-dir", str(REPO_ROOT), "--no-wait",
        "--submission-id", submission_id, "--",
        "python", "-m", "jobs.pipeline", "--config", "configs/tiny_emodb.yaml", "--data-root", str(data_root),
        "--set", f"features_out={features_out}", "--set", f"runs_out={runs_out}",
    ], head.env)
    assert submitted.returncode == 0, f"submit failed:\n{submitted.stdout}\n{submitted.stderr}"
    package = re.search(r"\(([\d.]+)MiB\)", submitted.stdout + submitted.stderr)
    assert package is None or float(package.group(1)) < 20, f"working dir upload too big: {package.group(0)}"

    # While it runs: token auth is on for the cluster, so requests without the right token are refused.
    no_token = {k: v for k, v in head.env.items() if k not in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")}
    refused = ray_cli(["job", "submit", "--address", head.dashboard_url, "--no-wait", "--", "python", "-c", "print(1)"],
                      no_token | {"RAY_AUTH_MODE": "disabled"})
    assert refused.returncode != 0
    assert re.search(r"AuthenticationError|Unauthorized|authentication token", refused.stdout + refused.stderr), refused.stderr[-2000:]
    assert job_info(head, submission_id, token=None)[0] == 401
    assert job_info(head, submission_id, token=secrets.token_hex(32))[0] == 403

    print(f"submitted and checked the auth refusals in {time.monotonic() - started:.1f} s")
    status = wait_for_job(head, submission_id, JOB_TIMEOUT_S)
    print(f"job finished {time.monotonic() - started:.1f} s after submission")
    if status != "SUCCEEDED":
        logs = ray_cli(["job", "logs", "--address", head.dashboard_url, submission_id], head.env)
        pytest.fail(f"job {submission_id} ended {status}; `ray job logs`:\n{logs.stdout[-6000:]}\n{logs.stderr[-2000:]}")
    cli_status = ray_cli(["job", "status", "--address", head.dashboard_url, submission_id], head.env)
    # `ray job status` exits 0 for a FAILED job too: the text is what counts
    assert f"Job '{submission_id}' succeeded" in ANSI_ESCAPE.sub("", cli_status.stdout + cli_status.stderr), cli_status.stdout

    print(f"`ray job status` checked {time.monotonic() - started:.1f} s after submission")
    (run_dir,) = [p.parent for p in runs_out.glob("*/summary.json")]
    assert run_dir.name == "tiny_EMODB_LOGMEL_speaker_kfold_tune_final"  # the k-fold run of the sweep's best config
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["protocol"]["protocol"] == "speaker_kfold" and len(summary["folds"]) == 2
    assert summary["n_test"] == len(SUBSET_SPEAKERS) * len(EMODB_EMOTIONS)
    assert 0.0 <= summary["uar"] <= 1.0
    report = json.loads((run_dir / "report.json").read_text())
    assert report
    assert (run_dir / "report.xlsx").stat().st_size > 0
    pipeline = json.loads((run_dir / "pipeline.json").read_text())
    # the sweep was nested (one search of 2 trials per outer fold, on its training side), and saved its table
    sweep_dir = runs_out / "tiny_EMODB_LOGMEL_speaker_kfold_tune"
    assert pipeline["sweep"]["mode"] == "nested" and (sweep_dir / "tune_results.csv").is_file()
    assert pipeline["sweep"]["n_trials"] == 2 * len(pipeline["sweep"]["fold_configs"]) == 4
    # what each outer fold's search read (the sweep's folds.json) against what that fold of the final run tested
    sweep_folds, final_folds = RunFolds.load(sweep_dir / "folds.json"), RunFolder(run_dir).read_folds()
    assert sorted(sweep_folds.extra["swept_folds"]) == [f.index for f in final_folds.folds] == [0, 1]
    everything = set().union(*(set(f.test) for f in final_folds.folds))
    assert len(everything) == summary["n_test"]
    for outer, tested in zip(sweep_folds.folds, final_folds.folds, strict=True):
        read = set(outer.train) | set(outer.val)
        assert set(tested.test) == set(outer.test) and not read & set(tested.test) and read == everything - set(tested.test)
        speakers_read = {s for other in final_folds.folds if set(other.test) & read for s in other.test_speakers}
        assert len(tested.test_speakers) == 2 and not speakers_read & set(tested.test_speakers)
        assert {u[:2] for u in read} == set(SUBSET_SPEAKERS) - {u[:2] for u in tested.test}  # EMODB ids start with the speaker
    assert pipeline["sweep"]["unseen_by_sweep"]["share_of_test_speakers_unseen"] == 1.0
    # cross-corpus EMODB -> RAVDESS through the mapping (calm, surprise -> neutral: all 16 kept)
    (cross,) = pipeline["cross_corpus"]
    assert cross["target"] == "RAVDESS" and cross["n"] == 16 and cross["normalization"] == "target"
    cross_report = json.loads((run_dir / "cross_RAVDESS_target-norm" / "report.json").read_text())
    assert cross_report["summary"]["uar"] == cross["uar"]
    assert list(features_out.glob("LOGMEL/*/*/metadata.json")) or list(features_out.rglob("metadata.json"))
