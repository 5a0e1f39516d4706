"""Two Ray nodes on this machine, features and runs on S3, `ray job submit`, and one node lost mid-fold.

The test owns everything it starts: a head (`ray start --head`, token auth with its own token file,
1 CPU) and a second node B (`ray start --address ...`, 1 CPU, resource `node_b`, its own temp dir),
each marked by an environment variable that every process of the node inherits, and a moto S3 server
in this process. With one CPU per node, the two extraction actors and two concurrent folds' Ray Train
workers can only run one per node. The pipeline job (`python -m jobs.pipeline`, 3 speaker folds, LOGMEL,
a tiny TIM-Net) is submitted with `ray job submit`; once a fold training on node B has saved a resume
checkpoint in the bucket, node B's processes (raylet, agents, workers) are SIGKILLed. The job must
still succeed with every fold, the interrupted fold must have continued from its last checkpoint (its
result.json: `resumed_from_epochs`), no fold may have started from epoch 0 twice, and a second
submission must train nothing. Only this test's processes are stopped (never `ray stop`).

How this maps onto `ray up cluster.yaml`: README, "Several nodes, and losing one".
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.processes import processes_of, stop_processes

sys.path.insert(0, str(Path(__file__).parent))
from test_jobs import ANSI_ESCAPE, MARKER, RAY, REPO_ROOT, VENV_BIN, free_port, free_port_range, ray_cli  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.multinode]

BUCKET = "ser-dist-multinode"
SPEAKERS = ("03", "09", "10", "11", "12", "13")  # 3 men, 3 women, each with all seven emotions: 3 folds of 2 speakers
EMOTIONS = "WLEAFTN"
EPOCHS = 30  # enough epochs of a tiny model that node B can be stopped in the middle of a fold
JOB_TIMEOUT_S = 900.0
RUN_NAME = "multi_EMODB_LOGMEL_speaker_kfold"  # PipelineConfig: {name}_{corpus}_{features}_{protocol}
# Faster node-death detection by the GCS than the default 5 x 3 s (Ray config from the environment).
FAST_HEALTH_CHECKS = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "2000",
                      "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "1000"}


# --- the cluster: a head and node B, each a set of processes this test can find and stop ----------------


@dataclass
class Node:
    name: str  # "head" or "node_b"
    temp_dir: Path  # short, unique: Ray's socket paths must stay under ~107 bytes

    @property
    def tag(self) -> str:
        return self.temp_dir.name  # the MARKER value every process of this node inherits


@dataclass
class Cluster:
    head: Node
    node_b: Node
    token: str
    env: dict[str, str]  # for `ray` CLI calls: token auth on, this cluster's token file
    gcs_port: int
    dashboard_port: int
    node_ids: dict[str, str] = field(default_factory=dict)  # "head" / "node_b" -> Ray node id

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def get(self, path: str) -> tuple[int, dict]:
        """GET from the dashboard's REST API (jobs, state) with this cluster's token."""
        request = urllib.request.Request(f"{self.dashboard_url}{path}", headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, {}

    def state(self, kind: str, **filters: str) -> list[dict]:
        """`ray list <kind> --detail` through the state API, e.g. state("actors")."""
        query = "limit=10000&detail=true&timeout=30" + "".join(
            f"&filter_keys={k}&filter_predicates=%3D&filter_values={v}" for k, v in filters.items())
        code, body = self.get(f"/api/v0/{kind}?{query}")
        assert code == 200, f"state API /api/v0/{kind} answered HTTP {code}"
        return body["data"]["result"]["result"]


def node_processes(node: Node) -> list:
    """Every live process of `node` (its temp dir or marker), with their descendants."""
    return processes_of(node.temp_dir, marker=MARKER, tag=node.tag)


def kill_node(node: Node, *, sig: signal.Signals = signal.SIGKILL, grace_s: float = 5.0) -> list[str]:
    """Send `sig` to every process of `node` (SIGKILL: a node lost at once), SIGKILL stragglers; returns survivors."""
    return stop_processes(lambda: node_processes(node), first=sig, grace_s=grace_s)


def node_ports_args() -> list[str]:
    """Ports of one node's own services, free now and distinct from every other node's."""
    low, high = free_port_range(100)
    return [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--min-worker-port={low}", f"--max-worker-port={high}"]


def start_cluster(root: Path) -> Cluster:
    token = secrets.token_hex(32)
    token_path = root / "auth_token"
    token_path.write_text(token)
    token_path.chmod(0o600)
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # e.g. the suite's RAY_AUTH_MODE=disabled
    base |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path), "PATH": f"{VENV_BIN}{os.pathsep}{base.get('PATH', '')}",
             "RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", **FAST_HEALTH_CHECKS}
    head = Node("head", Path(tempfile.mkdtemp(prefix="rmh_", dir="/tmp")))
    node_b = Node("node_b", Path(tempfile.mkdtemp(prefix="rmb_", dir="/tmp")))
    cluster = Cluster(head, node_b, token, base | {MARKER: head.tag}, free_port(), free_port())
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--object-store-memory=200000000", "--disable-usage-stats"]
    try:
        started = ray_cli([
            "start", "--head", f"--port={cluster.gcs_port}", f"--temp-dir={head.temp_dir}", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={cluster.dashboard_port}", f"--ray-client-server-port={free_port()}",
            *node_ports_args(), *common,
        ], base | {MARKER: head.tag}, timeout=180)
        assert started.returncode == 0, f"ray start --head failed:\n{started.stdout}\n{started.stderr}"
        joined = ray_cli([
            "start", f"--address=127.0.0.1:{cluster.gcs_port}", f"--temp-dir={node_b.temp_dir}", '--resources={"node_b": 1}',
            *node_ports_args(), *common,
        ], base | {MARKER: node_b.tag}, timeout=180)
        assert joined.returncode == 0, f"ray start (node B) failed:\n{joined.stdout}\n{joined.stderr}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            nodes = [n for n in cluster.state("nodes") if n["state"] == "ALIVE"]
            if len(nodes) == 2:
                for n in nodes:
                    cluster.node_ids["node_b" if (n.get("resources_total") or {}).get("node_b") else "head"] = n["node_id"]
                if len(cluster.node_ids) == 2:
                    return cluster
            time.sleep(2)
        raise AssertionError(f"node B did not join the head within 120 s: {cluster.state('nodes')}")
    except BaseException:
        stop_cluster(cluster)
        raise


def stop_cluster(cluster: Cluster) -> list[str]:
    """Stop this test's nodes only: SIGTERM, then SIGKILL what is left; node B first."""
    import shutil

    survivors = kill_node(cluster.node_b, sig=signal.SIGTERM) + kill_node(cluster.head, sig=signal.SIGTERM)
    for node in (cluster.node_b, cluster.head):
        shutil.rmtree(node.temp_dir, ignore_errors=True)
    return survivors


@pytest.fixture
def cluster(tmp_path):
    pytest.importorskip("psutil", reason="stopping only this test's nodes needs psutil to find their processes")
    if not RAY.is_file():
        pytest.skip(f"no `ray` CLI in this venv ({RAY}); install ray[default]")
    cluster = start_cluster(tmp_path)
    try:
        yield cluster
    finally:
        survivors = stop_cluster(cluster)
        assert not survivors, f"processes of the test cluster outlived stop_cluster: {survivors}"


@pytest.fixture
def s3_root():
    """`s3://…` URI of a bucket on a moto S3 server in this process; every node reaches it on 127.0.0.1."""
    import pyarrow.fs as pafs

    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    root = f"s3://testing:testing@{BUCKET}/ser?endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    filesystem, _ = pafs.FileSystem.from_uri(root + "&allow_bucket_creation=true")
    filesystem.create_dir(BUCKET)
    try:
        yield root
    finally:
        server.stop()


# --- the job ------------------------------------------------------------------------------------------------


def make_corpus(source: Path, dest: Path) -> Path:
    """`dest/emodb/wav/`: one file per emotion for each of SPEAKERS (42 files)."""
    import shutil

    wav_dir = dest / "emodb" / "wav"
    wav_dir.mkdir(parents=True)
    files = sorted((source / "wav").glob("*.wav"))
    for speaker in SPEAKERS:
        for emotion in EMOTIONS:
            first = next(p for p in files if p.name[:2] == speaker and p.name[5] == emotion)
            shutil.copy2(first, wav_dir / first.name)
    return dest


def write_job_config(path: Path, *, data_root: Path, s3_root: str) -> Path:
    config = {
        "name": "multi", "corpus": "EMODB", "data_root": str(data_root), "features": "LOGMEL",
        "protocol": "speaker_kfold", "n_folds": 3, "checkpoint_every": 1,
        "features_out": s3_root.replace("/ser?", "/ser/features?"), "runs_out": s3_root.replace("/ser?", "/ser/runs?"),
        "extraction": {"num_workers": 2, "batch_size": 8},  # two actors: one per node (1 CPU each)
        "train": {"epochs": EPOCHS, "patience": None, "warmup_epochs": 1, "batch_size": 8, "model": {"width": 8, "n_blocks": 2, "time_pool": 4}},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def submit(cluster: Cluster, config: Path, submission_id: str) -> None:
    done = ray_cli(["job", "submit", "--address", cluster.dashboard_url, "--working-dir", str(REPO_ROOT), "--no-wait",
                    "--submission-id", submission_id, "--", "python", "-m", "jobs.pipeline", "--config", str(config)], cluster.env)
    assert done.returncode == 0, f"submit failed:\n{done.stdout}\n{done.stderr}"


def job_status(cluster: Cluster, submission_id: str) -> str:
    code, info = cluster.get(f"/api/jobs/{submission_id}")
    return info.get("status", f"HTTP {code}")


def wait_for_job(cluster: Cluster, submission_id: str, timeout_s: float = JOB_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    status = "UNKNOWN"
    while time.monotonic() < deadline:
        status = job_status(cluster, submission_id)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(3)
    if status != "SUCCEEDED":
        logs = ray_cli(["job", "logs", "--address", cluster.dashboard_url, submission_id], cluster.env)
        pytest.fail(f"job {submission_id} ended {status}; `ray job logs`:\n{logs.stdout[-8000:]}\n{logs.stderr[-2000:]}")
    cli = ray_cli(["job", "status", "--address", cluster.dashboard_url, submission_id], cluster.env)
    assert f"Job '{submission_id}' succeeded" in ANSI_ESCAPE.sub("", cli.stdout + cli.stderr), cli.stdout


def resume_checkpoints(runs) -> dict[int, list[dict]]:
    """Per fold, the resume checkpoints now in Ray Train's storage of the run: [{"epoch", "node_id"}], oldest first."""
    import pyarrow.fs as pafs

    storage = runs / RUN_NAME / "ray"
    try:
        infos = storage.filesystem.get_file_info(pafs.FileSelector(storage.path, recursive=True, allow_not_found=True))
    except OSError:
        return {}
    found: dict[int, list[dict]] = {}
    for info in infos:
        parts = info.path[len(storage.path):].strip("/").split("/")
        if len(parts) == 3 and parts[0].startswith("fold_") and parts[1].startswith("epoch_") and parts[2] == "trainer_rank0.json":
            try:
                with storage.filesystem.open_input_stream(info.path) as stream:
                    resume = json.loads(stream.read())["resume"]
            except (OSError, ValueError, KeyError):
                continue  # being written or being deleted (num_to_keep=1)
            found.setdefault(int(parts[0][5:]), []).append({"epoch": int(parts[1][6:]), "node_id": resume["attempts"][-1]["node_id"]})
    return {k: sorted(v, key=lambda c: c["epoch"]) for k, v in found.items()}


def registered_checkpoint_epoch(runs, fold: int) -> int | None:
    """The epoch of the latest checkpoint Ray Train has registered for `fold` (its checkpoint_manager_snapshot.json).

    A worker's report reaches the controller at its next poll, so a checkpoint already uploaded can still be
    unregistered when the worker dies; a restart resumes from the registered one."""
    snapshot = runs / RUN_NAME / "ray" / f"fold_{fold}" / "checkpoint_manager_snapshot.json"
    if not snapshot.is_file():
        return None

    def find(value, inside_latest: bool = False):
        if isinstance(value, dict):
            for key, item in value.items():
                if inside_latest and key == "checkpoint_dir_name" and isinstance(item, str) and item.startswith("epoch_"):
                    return int(item[6:])
                found = find(item, inside_latest or key == "latest_checkpoint_result")
                if found is not None:
                    return found
        elif isinstance(value, list):
            for item in value:
                found = find(item, inside_latest)
                if found is not None:
                    return found
        return None

    return find(json.loads(snapshot.read_text()))


def wait_for_fold_on(cluster: Cluster, runs, node: str, submission_id: str, *, timeout_s: float = 600) -> tuple[int, int]:
    """(fold, epoch) of the first resume checkpoint saved by a worker on `node`, early enough in its fold."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for fold, checkpoints in resume_checkpoints(runs).items():
            last = checkpoints[-1]
            if last["node_id"] == cluster.node_ids[node] and 2 <= last["epoch"] <= EPOCHS - 8:
                return fold, last["epoch"]
        status = job_status(cluster, submission_id)
        assert status in ("PENDING", "RUNNING"), f"job ended {status} before a fold trained on {node}"
        time.sleep(0.5)
    raise AssertionError(f"no fold saved a checkpoint on {node} within {timeout_s:.0f} s: {resume_checkpoints(runs)}")


def test_pipeline_survives_losing_a_worker_node(cluster, s3_root, tmp_path, emodb_root):
    from ser_dist.runs import RunFolder
    from ser_dist.storage import as_location

    config = write_job_config(tmp_path / "job.yaml", data_root=make_corpus(emodb_root, tmp_path / "corpora"), s3_root=s3_root)
    runs = as_location(yaml.safe_load(config.read_text())["runs_out"])
    started = time.monotonic()
    submit(cluster, config, "multinode_1")

    fold, seen_epoch = wait_for_fold_on(cluster, runs, "node_b", "multinode_1")
    # Before the kill, from Ray's state: the extraction actors and the fold workers ran on both nodes.
    actors = cluster.state("actors")
    nodes_by_kind: dict[str, set[str]] = {"extract": set(), "train": set()}
    for actor in actors:
        if "FeatureWorker" in actor.get("class_name", "") or "MapWorker" in actor.get("class_name", ""):
            nodes_by_kind["extract"].add(actor["node_id"])
        if actor.get("class_name") == "RayTrainWorker":
            nodes_by_kind["train"].add(actor["node_id"])
    both = set(cluster.node_ids.values())
    assert nodes_by_kind["extract"] == both, f"extraction actors ran on {nodes_by_kind['extract']}, nodes {cluster.node_ids}"
    assert nodes_by_kind["train"] == both, f"Ray Train workers ran on {nodes_by_kind['train']}, nodes {cluster.node_ids}"

    survivors = kill_node(cluster.node_b)  # raylet, agents and workers of node B at once, mid-fold
    killed_at = time.monotonic()
    assert not survivors, f"node B processes survived SIGKILL: {survivors}"
    time.sleep(2)  # a poll of the controller that was under way when the node died has finished by now
    registered = registered_checkpoint_epoch(runs, fold)
    last_before = max((c["epoch"] for c in resume_checkpoints(runs).get(fold, []) if c["node_id"] == cluster.node_ids["node_b"]),
                      default=seen_epoch)
    print(f"node B killed {killed_at - started:.1f} s after submission, fold {fold} past epoch {seen_epoch} "
          f"(last checkpoint of node B in the bucket: epoch {last_before}, "
          f"registered by Ray Train: epoch {registered})")
    wait_for_job(cluster, "multinode_1")
    print(f"job succeeded {time.monotonic() - started:.1f} s after submission")
    dead = [n for n in cluster.state("nodes") if n["node_id"] == cluster.node_ids["node_b"]]
    assert dead and dead[0]["state"] == "DEAD"

    run = RunFolder(runs / RUN_NAME)
    summary = run.read_summary()
    assert summary["protocol"]["protocol"] == "speaker_kfold" and [f["fold"] for f in summary["folds"]] == [0, 1, 2]
    assert summary["n_test"] == len(SPEAKERS) * len(EMOTIONS) and summary["folds_trained_this_run"] == 3
    workers_seen = set()
    for k in range(3):
        result = run.read_result(k)
        history = run.read_history(k)
        attempts = result["attempts"]
        # each fold started from epoch 0 once; every later attempt continued from a checkpoint
        assert attempts[0]["start_epoch"] == 0 and all(a["start_epoch"] > 0 for a in attempts[1:]), attempts
        assert result["epochs_run"] == EPOCHS, result["epochs_run"]  # every epoch once: a resumed history continues
        assert history is not None and list(history["epoch"]) == list(range(1, EPOCHS + 1))
        workers_seen |= {a["node_id"] for a in attempts}
        if k == fold:
            # the fold interrupted on node B continued on the head from its last checkpoint (the last one Ray Train had
            # registered; a report still on its way to the controller when the node died is lost with the node)
            assert attempts[0]["node_id"] == cluster.node_ids["node_b"]
            assert [a["node_id"] for a in attempts[1:]] == [cluster.node_ids["head"]]
            (resumed,) = result["resumed_from_epochs"]
            assert resumed == registered and 1 <= resumed <= last_before, (seen_epoch, resumed, registered, last_before)
        else:
            assert result["resumed_from_epochs"] == [], (k, attempts)
    assert workers_seen == set(cluster.node_ids.values())

    # A second submission of the same job finds every feature and every fold in the bucket: it trains nothing.
    submit(cluster, config, "multinode_2")
    wait_for_job(cluster, "multinode_2")
    again = run.read_summary()
    assert again["folds_trained_this_run"] == 0 and again["uar"] == summary["uar"]
    pipeline = json.loads(run.pipeline_file.read_text())
    assert pipeline["summary"]["uar"] == summary["uar"]
    print(f"rerun trained nothing; test done {time.monotonic() - started:.1f} s after the first submission")
