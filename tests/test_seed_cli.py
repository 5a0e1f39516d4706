"""The seed's command line in its three forms (plus train-lmmd) on a tiny subset, on a local Ray cluster."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from ser_dist.corpora import prepare
from ser_dist.main import build_parser, main
from ser_dist.runs import RunFolder

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TO_EMODB = {"calm": "neutral", "surprise": "neutral"}  # RAVDESS classes EMODB lacks, as the default mapping merges them


@pytest.fixture(scope="module")
def tiny_data_root(tmp_path_factory, emodb_root, ravdess_root):
    """EMODB: 4 speakers x one file per class; RAVDESS: 2 actors x one file per class (symlinks)."""
    root = tmp_path_factory.mktemp("data")
    emodb = prepare("EMODB", emodb_root)
    emodb = emodb[emodb["speaker"].isin(["EMODB_03", "EMODB_08", "EMODB_11", "EMODB_14"])].groupby(["speaker", "label"]).head(1)
    (root / "emodb" / "wav").mkdir(parents=True)
    for path in emodb["path"]:
        (root / "emodb" / "wav" / path.split("/")[-1]).symlink_to(path)
    ravdess = prepare("RAVDESS", ravdess_root)
    ravdess = ravdess[ravdess["speaker"].isin(["RAVDESS_01", "RAVDESS_02"])].groupby(["speaker", "label"]).head(1)
    for path in ravdess["path"]:
        actor = path.split("/")[-2]
        (root / "ravdess" / actor).mkdir(parents=True, exist_ok=True)
        (root / "ravdess" / actor / path.split("/")[-1]).symlink_to(path)
    return root


def test_parser_accepts_the_seed_forms():
    parser = build_parser()
    args = parser.parse_args(["--mode", "train", "--data", "EMODB", "--feature_type", "FUSION", "--epoch", "50", "--batch_size", "32"])
    assert (args.mode, args.feature_type, args.epoch, args.batch_size) == ("train", "FUSION", 50, 32)
    args = parser.parse_args(["--mode", "test", "--data", "IEMOCAP", "--test_path", "runs/x", "--source_data", "EMODB"])
    assert (args.source_data, args.test_path) == ("EMODB", "runs/x")
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "fly", "--data", "EMODB"])


def test_seed_cli_train_test_and_cross_corpus(ray_cluster, tiny_data_root, tmp_path, capsys):
    common = ["--data_root", str(tiny_data_root), "--features_dir", str(tmp_path / "features"), "--runs_dir", str(tmp_path / "runs"),
              "--feature_type", "LOGMEL", "--epoch", "1", "--batch_size", "8"]
    assert main(["--mode", "train", "--data", "EMODB", "--protocol", "speaker_kfold", "--folds", "2", *common]) == 0
    run = tmp_path / "runs" / "EMODB_LOGMEL_speaker_kfold"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_test"] == len(prepare("EMODB", tiny_data_root / "emodb")) and (run / "report.xlsx").is_file()

    # in-corpus test: the run's own test folds, re-reported
    assert main(["--mode", "test", "--data", "EMODB", "--test_path", str(run), *common]) == 0
    # cross-corpus test (the seed spells RAVDESS as RAVDE)
    assert main(["--mode", "test", "--data", "RAVDE", "--test_path", str(run), "--source_data", "EMODB", *common]) == 0
    (report_file,) = run.glob("cross_RAVDESS*/report.json")
    report = json.loads(report_file.read_text())
    # every target utterance of the subset is scored once: calm and surprise map to neutral, nothing is dropped
    ravdess = prepare("RAVDESS", tiny_data_root / "ravdess")
    expected = Counter(TO_EMODB.get(label, label) for label in ravdess["label"])
    assert report["protocol"] and report["summary"]["n"] == len(ravdess) == 16 and report["summary"]["n_removed"] == 0
    assert {label: row["support"] for label, row in report["per_class"].items() if row["support"]} == dict(expected)

    # domain adaptation: both models on the same split, scored on the same target utterances
    assert main(["--mode", "train-lmmd", "--data", "EMODB", "--target_data", "RAVDESS", "--lmmd_weight", "0.5", *common]) == 0
    out = capsys.readouterr().out
    scores = json.loads(out[out.rindex('{\n  "source"'):])["cross_corpus_uar"]
    assert set(scores) == {"without_lmmd", "with_lmmd"}
    for label, weight in (("without_lmmd", 0.0), ("with_lmmd", 0.5)):
        run = RunFolder(tmp_path / "runs" / (f"EMODB_to_RAVDESS_LOGMEL_{label}" + ("_w0.5" if weight else "")))
        kfold = run.read_run_config()["kfold"]
        assert kfold["train"]["lmmd_weight"] == weight and bool(kfold["adapt_to"]) == bool(weight)
        (report_file,) = run.fold_dir(0).local_path.glob("cross_RAVDESS*/report.json")
        cross = json.loads(report_file.read_text())["summary"]
        assert cross["uar"] == scores[label] and cross["n"] == len(ravdess)

    # bad input: unknown corpus gives a clear error, exit code 2
    assert main(["--mode", "train", "--data", "EMODB2", *common]) == 2
    assert "expected one of EMODB, IEMOCAP, RAVDESS" in capsys.readouterr().err
