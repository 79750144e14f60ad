"""End to end through the official devkit: ``perception detect`` then ``perception eval``.
The oracle scores mAP = NDS = 1 (exactly: every TP error is 0); the noisy oracle less."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from perception.cli import main


@pytest.fixture(scope="module")
def evaluated(synth_root: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("eval")
    summaries = {}
    for detector in ("oracle", "noisy-oracle"):
        results = out / f"{detector}.json"
        main(["detect", "--dataroot", str(synth_root), "--version", "v1.0-mini",
              "--split", "mini_val", "--detector", detector, "--out", str(results)])
        metrics_dir = out / f"{detector}-metrics"
        args = ["eval", "--dataroot", str(synth_root), "--version", "v1.0-mini", "--split",
                "mini_val", "--results", str(results), "--out", str(metrics_dir)]
        if detector != "oracle":
            args.append("--no-plots")  # plots once is enough (matplotlib is slow)
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            main(args)
        summaries[detector] = (json.loads((metrics_dir / "metrics.json").read_text()),
                               metrics_dir)
        summaries[f"{detector}-output"] = (stdout.getvalue(), stderr.getvalue())
    return summaries


def _strict_json(path: Path):
    """Parse as standard JSON: NaN/Infinity are not JSON and are refused."""
    def refuse(constant: str):
        raise AssertionError(f"{path.name} holds {constant}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_metrics_files_are_standard_json_with_null_for_undefined(evaluated) -> None:
    metrics, out = evaluated["oracle"]
    strict = _strict_json(out / "metrics.json")
    # Barriers and cones have no attributes or velocities: the devkit's NaN becomes null.
    assert strict["label_tp_errors"]["barrier"]["attr_err"] is None
    assert strict["label_tp_errors"]["traffic_cone"]["vel_err"] is None
    assert strict["mean_ap"] == pytest.approx(1.0, abs=1e-6)
    assert strict["label_tp_errors"]["car"]["trans_err"] == metrics["label_tp_errors"]["car"][
        "trans_err"]
    for name in ("metrics_summary.json", "metrics_details.json"):
        _strict_json(out / name)


def test_eval_says_what_it_does_and_names_png_plots(evaluated) -> None:
    _, out = evaluated["oracle"]
    stdout, stderr = evaluated["oracle-output"]
    for stage in ("loading the v1.0-mini tables", "checking", "scoring with the nuScenes devkit",
                  "rendering the PR and TP curves"):
        assert stage in stderr, stderr
    pngs = {p.name for p in (out / "plots").glob("*.png")}
    pdfs = {p.name for p in (out / "plots").glob("*.pdf")}
    assert {"summary.png", "car_pr.png", "dist_pr_2.0.png"} <= pngs
    assert {p.removesuffix(".png") for p in pngs} == {p.removesuffix(".pdf") for p in pdfs}
    from PIL import Image

    with Image.open(out / "plots" / "summary.png") as image:
        assert image.format == "PNG" and min(image.size) >= 200
    assert f"plots: {out / 'plots' / 'summary.png'}" in stdout
    assert f"and {len(pngs) - 1} more" in stdout
    # Without plots: no plot line.
    assert "plots:" not in evaluated["noisy-oracle-output"][0]


def test_oracle_scores_one(evaluated) -> None:
    metrics, out = evaluated["oracle"]
    assert metrics["mean_ap"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["nd_score"] == pytest.approx(1.0, abs=1e-6)
    for name, ap in metrics["mean_dist_aps"].items():
        assert ap == pytest.approx(1.0, abs=1e-6), name
    for error in metrics["tp_errors"].values():
        assert error == pytest.approx(0.0, abs=1e-6)
    # The devkit's own files and its PR-curve plots.
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["mean_ap"] == metrics["mean_ap"] and summary["meta"]["use_lidar"] is True
    assert (out / "metrics_details.json").is_file()
    plots = {p.name for p in (out / "plots").iterdir()}
    assert {"summary.pdf", "car_pr.pdf", "barrier_pr.pdf", "dist_pr_2.0.pdf"} <= plots


def test_noisy_oracle_scores_measurably_lower(evaluated) -> None:
    oracle, _ = evaluated["oracle"]
    noisy, _ = evaluated["noisy-oracle"]
    assert 0.3 < noisy["mean_ap"] < oracle["mean_ap"] - 0.1
    assert 0.3 < noisy["nd_score"] < oracle["nd_score"] - 0.1
    # Centre noise of 0.3 m per axis shows up as the translation error.
    assert 0.15 < noisy["tp_errors"]["trans_err"] < 0.6
    assert noisy["tp_errors"]["orient_err"] > 0.05


def test_eval_prints_the_headline_and_per_class_table(synth_root: Path, evaluated,
                                                      tmp_path: Path, capsys) -> None:
    results = next(Path(evaluated["oracle"][1]).parent.glob("oracle.json"))
    capsys.readouterr()
    main(["eval", "--dataroot", str(synth_root), "--results", str(results),
          "--out", str(tmp_path / "m"), "--no-plots"])
    out = capsys.readouterr().out
    assert "mAP: 1.0000" in out and "NDS: 1.0000" in out and "mATE: 0.0000" in out
    assert "traffic_cone" in out and "construction_vehicle" in out


def test_eval_refuses_to_replace_a_folder_that_is_not_its_own(synth_root: Path, evaluated,
                                                              tmp_path: Path, capsys) -> None:
    results = next(Path(evaluated["oracle"][1]).parent.glob("oracle.json"))
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--dataroot", str(synth_root), "--results", str(results),
              "--out", str(tmp_path), "--no-plots"])
    assert exit_info.value.code == 2
    assert "is not an earlier evaluation folder" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_custom_split_from_splits_json(synth_root: Path, tmp_path: Path) -> None:
    """A split that is not the devkit's comes from {dataroot}/{version}/splits.json, in the
    dataset and in the devkit's evaluation alike."""
    from perception.data import NuScenesDataset

    splits = synth_root / "v1.0-mini" / "splits.json"
    splits.write_text(json.dumps({"synth_all": ["scene-0103", "scene-0061"]}))
    try:
        dataset = NuScenesDataset(synth_root, "v1.0-mini", "synth_all", load_points=False,
                                  load_images=False)
        assert len(dataset) == len(dataset.nusc.sample)
        results = tmp_path / "oracle.json"
        main(["detect", "--dataroot", str(synth_root), "--split", "synth_all",
              "--out", str(results)])
        main(["eval", "--dataroot", str(synth_root), "--split", "synth_all", "--results",
              str(results), "--out", str(tmp_path / "metrics"), "--no-plots"])
        metrics = json.loads((tmp_path / "metrics" / "metrics.json").read_text())
        assert metrics["mean_ap"] == pytest.approx(1.0) and metrics["split"] == "synth_all"
    finally:
        splits.unlink()
