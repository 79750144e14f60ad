"""Every malformed results file gets its own one-line error and exit code 2 through the
CLI, before the devkit runs (the devkit would stop at the first bare assert)."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from perception.cli import main
from perception.data import NuScenesDataset
from perception.detectors import OracleDetector, run_detector


@pytest.fixture(scope="module")
def valid_results(synth_root: Path) -> dict:
    dataset = NuScenesDataset(synth_root, "v1.0-mini", "mini_val", load_points=False,
                              load_images=False)
    results = run_detector(OracleDetector(), (dataset[i] for i in range(len(dataset))))
    meta = {"use_camera": True, "use_lidar": True, "use_radar": False, "use_map": False,
            "use_external": False}
    return {"meta": meta, "results": results}


def _first(data: dict) -> str:
    return next(iter(data["results"]))


def _set(field: str, value) -> Callable[[dict], str]:
    def mutate(data: dict) -> str:
        token = _first(data)
        data["results"][token][0][field] = value
        return token
    return mutate


def _drop_meta(data: dict) -> str:
    del data["meta"]
    return ""


def _bad_meta(data: dict) -> str:
    data["meta"]["use_camera"] = "yes"
    return ""


def _drop_sample(data: dict) -> str:
    token = _first(data)
    del data["results"][token]
    return token


def _extra_sample(data: dict) -> str:
    data["results"]["0123456789abcdef0123456789abcdef"] = []
    return "0123456789abcdef0123456789abcdef"


def _too_many(data: dict) -> str:
    token = _first(data)
    data["results"][token] = [copy.deepcopy(data["results"][token][0]) for _ in range(501)]
    return token


def _drop_velocity(data: dict) -> str:
    token = _first(data)
    del data["results"][token][0]["velocity"]
    return token


def _not_a_box(data: dict) -> str:
    token = _first(data)
    data["results"][token][0] = "car"
    return token


def _results_list(data: dict) -> str:
    data["results"] = list(data["results"].values())
    return ""


CASES = {
    "missing meta": (_drop_meta, "meta: missing"),
    "meta not boolean": (_bad_meta, "meta: use_camera: must be true or false"),
    "missing sample token": (_drop_sample, "sample {token}: missing from results"),
    "sample not in split": (_extra_sample, "sample {token}: not a sample of split 'mini_val'"),
    "more than 500 boxes": (_too_many, "sample {token}: has 501 boxes, at most 500"),
    "unknown class": (_set("detection_name", "lorry"),
                      "sample {token}: box 0: detection_name: unknown class 'lorry'"),
    "unknown attribute": (_set("attribute_name", "vehicle.flying"),
                          "sample {token}: box 0: attribute_name: unknown attribute"),
    "NaN score": (_set("detection_score", math.nan),
                  "sample {token}: box 0: detection_score: is nan"),
    "infinite score": (_set("detection_score", math.inf),
                       "sample {token}: box 0: detection_score: is inf"),
    "score is a string": (_set("detection_score", "0.9"),
                          "sample {token}: box 0: detection_score: must be a number"),
    "non-unit quaternion": (_set("rotation", [1.0, 1.0, 0.0, 0.0]),
                            "sample {token}: box 0: rotation: not a unit quaternion (norm 1.4142)"),
    "rotation of 3 numbers": (_set("rotation", [1.0, 0.0, 0.0]),
                              "sample {token}: box 0: rotation: must have 4 numbers, got 3"),
    "size of 2 numbers": (_set("size", [1.0, 2.0]),
                          "sample {token}: box 0: size: must have 3 numbers, got 2"),
    "negative size": (_set("size", [1.0, -2.0, 1.5]),
                      "sample {token}: box 0: size: must be positive"),
    "infinite translation": (_set("translation", [1.0, math.inf, 0.0]),
                             "sample {token}: box 0: translation: holds NaN or infinity"),
    "NaN velocity": (_set("velocity", [math.nan, 0.0]),
                     "sample {token}: box 0: velocity: holds NaN or infinity"),
    "missing velocity": (_drop_velocity, "sample {token}: box 0: velocity: missing"),
    "wrong sample_token in box": (_set("sample_token", "abc"),
                                  "sample {token}: box 0: sample_token: is 'abc'"),
    "box not an object": (_not_a_box, "sample {token}: box 0: must be an object"),
    "results not an object": (_results_list, "results: must be an object keyed by sample token"),
}


def _run_eval(synth_root: Path, results: Path, out: Path, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--dataroot", str(synth_root), "--results", str(results),
              "--out", str(out), "--no-plots"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    # Stage lines ("loading the tables", "checking the results") come before the error.
    first = next((i for i, line in enumerate(lines) if line.startswith("perception: error:")),
                 0)
    assert all(line.startswith(("loading the ", "checking ")) for line in lines[:first]), lines
    return exit_info.value.code, lines[first:]


@pytest.mark.parametrize("case", list(CASES))
def test_each_malformed_results_file_gets_its_error(case: str, synth_root: Path,
                                                    valid_results: dict, tmp_path: Path,
                                                    capsys) -> None:
    mutate, expected = CASES[case]
    data = copy.deepcopy(valid_results)
    token = mutate(data)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))  # NaN/Infinity written as JSON's NaN/Infinity
    code, lines = _run_eval(synth_root, path, tmp_path / "eval", capsys)
    assert code == 2
    assert len(lines) == 1, lines  # one problem, one line, no traceback
    assert lines[0].startswith(f"perception: error: {path}: ")
    assert expected.format(token=token) in lines[0]
    assert not (tmp_path / "eval").exists()  # nothing written


def test_unreadable_results_files(synth_root: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "results.json"
    path.write_text('{"meta": {"use_camera": true,')
    code, lines = _run_eval(synth_root, path, tmp_path / "eval", capsys)
    assert code == 2 and len(lines) == 1 and "is not valid JSON (line 1" in lines[0]
    code, lines = _run_eval(synth_root, tmp_path / "missing.json", tmp_path / "eval", capsys)
    assert code == 2 and len(lines) == 1 and "does not exist" in lines[0]
    # A folder is not "missing": say it is a folder and that the JSON file is needed.
    (tmp_path / "detections").mkdir()
    code, lines = _run_eval(synth_root, tmp_path / "detections", tmp_path / "eval", capsys)
    assert code == 2 and len(lines) == 1 and "does not exist" not in lines[0]
    assert "is a folder; pass the results JSON file" in lines[0]


def test_all_problems_are_listed_one_per_line(synth_root: Path, valid_results: dict,
                                              tmp_path: Path, capsys) -> None:
    data = copy.deepcopy(valid_results)
    token = _first(data)
    del data["meta"]
    data["results"][token][0]["detection_name"] = "lorry"
    data["results"][token][1]["rotation"] = [2.0, 0.0, 0.0, 0.0]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    code, lines = _run_eval(synth_root, path, tmp_path / "eval", capsys)
    assert code == 2 and len(lines) == 3
    assert "meta: missing" in lines[0]
    assert f"sample {token}: box 0: detection_name" in lines[1]
    assert f"sample {token}: box 1: rotation" in lines[2]


def test_console_script_exits_2_without_traceback(synth_root: Path, valid_results: dict,
                                                  tmp_path: Path) -> None:
    data = copy.deepcopy(valid_results)
    del data["meta"]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    script = Path(sys.executable).with_name("perception")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "perception.cli"]
    proc = subprocess.run(
        [*command, "eval", "--dataroot", str(synth_root), "--results", str(path),
         "--out", str(tmp_path / "eval")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    stages, error = proc.stderr.split("perception: error:", 1)
    assert [line.split(" ")[0] for line in stages.strip().splitlines()] == ["loading", "checking"]
    assert len(error.strip().splitlines()) == 1
    assert "meta: missing" in proc.stderr
