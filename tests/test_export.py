"""ONNX export: graphs equal to the torch front-end and model, OnnxPredictor equal to Predictor, no torch needed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("onnx", reason="ONNX export needs the `export` extra (onnx, onnxruntime)")
ort = pytest.importorskip("onnxruntime", reason="ONNX export needs the `export` extra (onnx, onnxruntime)")

from ser_dist.audio import load_audio  # noqa: E402
from ser_dist.cli import main as cli_main  # noqa: E402
from ser_dist.errors import ConfigError, ModelLoadError  # noqa: E402
from ser_dist.export import OnnxPredictor, onnx_predictor  # noqa: E402
from ser_dist.export.onnx_export import EnsembleGraph, ExportConfig, LogMelGraph, _export, export_onnx  # noqa: E402
from ser_dist.features import compute  # noqa: E402
from ser_dist.features.compute import FeatureComputer  # noqa: E402
from ser_dist.features.config import FeatureConfig, FeatureType, MfccConfig, SSLConfig  # noqa: E402
from ser_dist.model.timnet import TimNet, TimNetConfig  # noqa: E402
from ser_dist.prediction import Predictor  # noqa: E402
from ser_dist.training.checkpoint import save_checkpoint  # noqa: E402
from ser_dist.training.data import Standardizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_predict import train_tiny_checkpoint  # noqa: E402

PARITY = 1e-4  # probabilities, ONNX vs torch


def probs(prediction) -> np.ndarray:
    return np.array(list(prediction.probabilities.values()))


@pytest.fixture(scope="module")
def emodb_files(emodb_root: Path) -> list[Path]:
    files = sorted((emodb_root / "wav").glob("*.wav"))
    return files[:: len(files) // 30][:30]


@pytest.fixture(scope="module")
def run_dir(emodb_files, tmp_path_factory) -> Path:
    """A two-fold run folder: fold 1 trained with per-speaker normalisation, with the run's summary.json."""
    run = tmp_path_factory.mktemp("runs") / "EMODB_LOGMEL_tiny"
    train_tiny_checkpoint(emodb_files, run / "fold_0" / "checkpoint", seed=0)
    second = train_tiny_checkpoint(emodb_files, run / "fold_1" / "checkpoint", seed=1)
    meta = json.loads((second / "checkpoint.json").read_text())
    (second / "checkpoint.json").write_text(json.dumps(meta | {"normalization": "per_speaker"}))
    (run / "summary.json").write_text(json.dumps({"protocol": {"protocol": "loso", "n_folds": 2}, "uar": 0.5, "war": 0.6}))
    return run


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory) -> Path:
    return export_onnx(ExportConfig(model=str(run_dir), out=str(tmp_path_factory.mktemp("export"))))


def test_exported_run_matches_predictor_on_emodb(run_dir, exported, emodb_files):
    torch_predictor = Predictor.from_dir(run_dir, normalization="utterance")  # the export scores a per-speaker member per utterance
    onnx = OnnxPredictor.from_dir(exported)
    assert onnx.labels == torch_predictor.labels
    expected = torch_predictor.predict_files(emodb_files)
    got = onnx.predict_files(emodb_files)
    for a, b in zip(expected, got, strict=True):
        assert (a.path, a.emotion, a.duration_s) == (b.path, b.emotion, b.duration_s)
        np.testing.assert_allclose(probs(b), probs(a), rtol=0, atol=PARITY)
    one = onnx.predict_file(emodb_files[3])
    np.testing.assert_allclose(probs(one), probs(expected[3]), atol=PARITY)
    samples, rate = sf.read(str(emodb_files[0]), dtype="float32")
    stereo = np.stack([samples, samples], axis=1)
    np.testing.assert_allclose(probs(onnx.predict_signal(stereo, rate)), probs(torch_predictor.predict_signal(stereo, rate)), atol=PARITY)


def test_export_json_describes_the_run(exported, run_dir):
    spec = json.loads((exported / "export.json").read_text())
    assert spec["labels"] == Predictor.from_dir(run_dir).labels
    assert spec["feature_spec"]["feature_type"] == "LOGMEL" and spec["feature_spec"]["dim"] == 128
    assert spec["frontend"]["file"] == "frontend.onnx" and spec["encoder"] is None
    assert spec["model"]["ensemble"]["members"] == 2
    assert spec["normalization"]["mode"] == "mixed"
    assert spec["normalization"]["per_member"] == ["train_global", "per_speaker"]
    assert len(spec["normalization"]["statistics"][0]["mean"]) == 128
    assert spec["protocol"] == {"protocol": "loso", "n_folds": 2}
    assert spec["scores"] == {"uar": 0.5, "war": 0.6}
    model = ort.InferenceSession(str(exported / "model.onnx"))
    assert [i.name for i in model.get_inputs()] == ["features", "lengths"]
    assert model.get_inputs()[0].shape[:2] == ["batch", "frames"]  # dynamic batch and time


@pytest.mark.parametrize("model_config", [
    dict(time_pool=1),
    dict(time_pool=3, bidirectional=False),
    dict(time_pool=4, input_projection=False, width=16),
], ids=["bidirectional", "pooled-forward", "no-projection"])
def test_model_graph_equals_timnet_on_padded_batches(model_config, tmp_path):
    torch.manual_seed(0)
    config = TimNetConfig(**({"input_dim": 16, "n_classes": 4, "width": 8, "n_blocks": 3} | model_config))
    model = TimNet(config).eval()
    for module in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    standardizer = Standardizer(np.linspace(-1, 1, 16).astype(np.float32), np.linspace(0.5, 2, 16).astype(np.float32))
    members = [SimpleNamespace(name="a", model=model, standardizer=standardizer, per_utterance_norm=False),
               SimpleNamespace(name="b", model=model, standardizer=standardizer, per_utterance_norm=True)]
    fake = type("P", (), {"members": members, "feature_config": FeatureConfig(storage_dtype="float16")})()
    path = tmp_path / "model.onnx"
    _export(EnsembleGraph(fake).eval(), (torch.zeros(2, 11, 16), torch.tensor([11, 5])), path, opset=17,
            inputs=["features", "lengths"], outputs=["probabilities"],
            dynamic={"features": {0: "batch", 1: "frames"}, "lengths": {0: "batch"}})
    session = ort.InferenceSession(str(path))
    rng = np.random.default_rng(1)
    for lengths in ([40, 40], [57, 9, 1, 30], [3]):
        x = rng.standard_normal((len(lengths), max(lengths), 16)).astype(np.float32)
        got = session.run(None, {"features": x, "lengths": np.array(lengths, np.int64)})[0]
        rounded = [x[i, :n].astype(np.float16).astype(np.float32) for i, n in enumerate(lengths)]
        expected = []
        for i in range(len(lengths)):
            a = model(torch.from_numpy(standardizer.apply(rounded[i]))[None], torch.tensor([lengths[i]]))
            b = model(torch.from_numpy(Standardizer.fit([rounded[i]]).apply(rounded[i]))[None], torch.tensor([lengths[i]]))
            expected.append(((torch.softmax(a, -1) + torch.softmax(b, -1)) / 2)[0].detach().numpy())
        np.testing.assert_allclose(got, np.stack(expected), atol=1e-5)


@pytest.mark.parametrize("feature_config", [
    FeatureConfig(),
    FeatureConfig(feature_type=FeatureType.MFCC, mfcc=MfccConfig(n_mfcc=20), deltas=2),
    FeatureConfig(deltas=1),
], ids=["logmel", "mfcc-deltas", "logmel-deltas"])
def test_frontend_graph_equals_feature_computer(feature_config, emodb_files, tmp_path):
    path = tmp_path / "frontend.onnx"
    _export(LogMelGraph(feature_config).eval(), (torch.zeros(1, 16_000),), path, opset=17, inputs=["waveform"],
            outputs=["features"], dynamic={"waveform": {1: "samples"}, "features": {1: "frames"}})
    session = ort.InferenceSession(str(path))
    signal = load_audio(emodb_files[5])
    scale = compute.DB_PER_NEPER if feature_config.feature_type is FeatureType.MFCC else 1.0
    for piece in (signal, signal[:1200], signal[:400]):  # 1200 and 400 samples: fewer frames than the delta window
        expected = FeatureComputer(feature_config).compute([piece])[0]
        got = session.run(None, {"waveform": piece[None]})[0][0]
        assert got.shape == expected.shape
        # log of float32 DFT vs FFT power: ~1e-4 in log units where the power is near its floor
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-3 * scale)


def test_signal_preprocessing_equals_feature_computer(emodb_files):
    signal = np.concatenate([np.zeros(8000, np.float32), load_audio(emodb_files[2]), 1e-4 * np.ones(8000, np.float32)])
    np.testing.assert_array_equal(onnx_predictor.trim_silence(signal, 30.0), compute.trim_silence(signal, 30.0))
    for n in (1000, len(signal), len(signal) + 333):
        np.testing.assert_array_equal(onnx_predictor.fix_length_centred(signal, n), compute.fix_length_centred(signal, n))


def test_trimmed_fixed_length_mfcc_run_matches_predictor(emodb_files, tmp_path):
    """Preprocessing and MFCC deltas through the whole path: a random model over MFCC+deltas features."""
    config = FeatureConfig(feature_type=FeatureType.MFCC, mfcc=MfccConfig(n_mfcc=13), deltas=1, trim_db=30.0, fixed_seconds=2.0)
    torch.manual_seed(0)
    model_config = TimNetConfig(input_dim=26, n_classes=3, width=8, n_blocks=2, time_pool=2)
    features = FeatureComputer(config).compute([load_audio(f) for f in emodb_files[:8]])
    checkpoint = save_checkpoint(tmp_path / "ckpt", model_config=model_config, state_dict=TimNet(model_config).state_dict(),
                                 standardizer=Standardizer.fit(features), labels=["a", "b", "c"],
                                 feature_config=config.to_dict(), extra={"normalization": "train_global"})
    out = export_onnx(ExportConfig(model=str(checkpoint), out=str(tmp_path / "export")))
    spec = json.loads((out / "export.json").read_text())
    assert spec["preprocessing"]["trim_db"] == 30.0 and spec["preprocessing"]["fixed_seconds"] == 2.0
    expected = Predictor.from_dir(checkpoint).predict_files(emodb_files[:8])
    got = OnnxPredictor.from_dir(out).predict_files(emodb_files[:8])
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_allclose(probs(b), probs(a), atol=PARITY)


def test_encoder_features_export_only_the_model(whisper_tiny, emodb_files, tmp_path):
    config = FeatureConfig(feature_type=FeatureType.FUSION, ssl=SSLConfig(model=str(whisper_tiny)))
    computer = FeatureComputer(config)
    torch.manual_seed(0)
    model_config = TimNetConfig(input_dim=computer.dim, n_classes=3, width=8, n_blocks=2)
    features = computer.compute([load_audio(f) for f in emodb_files[:4]])
    checkpoint = save_checkpoint(tmp_path / "ckpt", model_config=model_config, state_dict=TimNet(model_config).state_dict(),
                                 standardizer=Standardizer.fit(features), labels=["a", "b", "c"],
                                 feature_config=config.to_dict() | {"encoder": computer.encoder_metadata()},
                                 extra={"normalization": "train_global"})
    out = export_onnx(ExportConfig(model=str(checkpoint), out=str(tmp_path / "export")))
    spec = json.loads((out / "export.json").read_text())
    assert spec["frontend"] is None and not (out / "frontend.onnx").exists()
    assert spec["encoder"]["separate"] is True and spec["encoder"]["weight_hash"] == computer.encoder_metadata()["weight_hash"]
    onnx = OnnxPredictor.from_dir(out)
    with pytest.raises(ConfigError, match="FUSION features need the encoder .*whisper-tiny.en.*predict_features"):
        onnx.predict_file(emodb_files[0])
    expected = Predictor.from_dir(checkpoint).probabilities([load_audio(f) for f in emodb_files[:4]])
    np.testing.assert_allclose(onnx.predict_features(features), expected, atol=PARITY)


def test_onnx_predictor_runs_without_torch_or_ray(exported, emodb_files, run_dir):
    """A fresh interpreter where importing torch or ray fails: the exported folder still predicts."""
    script = (
        "import sys, json\n"
        "for name in ('torch', 'ray', 'librosa', 'transformers'):\n"
        "    sys.modules[name] = None  # import fails\n"
        "from ser_dist.export import OnnxPredictor\n"
        f"p = OnnxPredictor.from_dir({str(exported)!r}).predict_file({str(emodb_files[7])!r})\n"
        "assert not any(m.split('.')[0] in ('torch', 'ray') and sys.modules[m] is not None for m in sys.modules)\n"
        "print(json.dumps(p.probabilities))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = np.array(list(json.loads(done.stdout.strip().splitlines()[-1]).values()))
    np.testing.assert_allclose(got, probs(Predictor.from_dir(run_dir, normalization="utterance").predict_file(emodb_files[7])), atol=PARITY)


def test_cli_export_and_bad_inputs(run_dir, tmp_path, capsys):
    out = tmp_path / "cli_export"
    assert cli_main(["export", "--model", str(run_dir / "fold_0" / "checkpoint"), "--format", "onnx", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"frontend.onnx", "model.onnx", "export.json"}
    spec = json.loads((out / "export.json").read_text())
    assert spec["model"]["ensemble"]["members"] == 1 and spec["protocol"] == {"protocol": "loso", "n_folds": 2}
    with pytest.raises(SystemExit):
        cli_main(["export", "--model", str(run_dir), "--format", "tflite", "--out", str(out)])
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown export format 'tflite'; expected one of onnx"):
        ExportConfig(model=str(run_dir), out=str(out), format="tflite")
    with pytest.raises(ModelLoadError, match="not an ONNX export: no export.json"):
        OnnxPredictor.from_dir(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "frontend.onnx").unlink()
    with pytest.raises(ModelLoadError, match="frontend.onnx, which is missing"):
        OnnxPredictor.from_dir(broken)
