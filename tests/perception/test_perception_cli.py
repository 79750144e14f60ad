"""``perception synth`` from the command line: it writes a dataset the devkit loads, and
refuses bad options and occupied folders with one line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perception.cli import main
from perception.data import open_nuscenes

TINY = ["--samples-per-scene", "1", "--sweeps-per-sample", "0", "--image-width", "64",
        "--image-height", "36", "--workers", "1"]


def test_synth_writes_a_loadable_dataset(tmp_path: Path, capsys) -> None:
    out = tmp_path / "synth"
    main(["synth", "--out", str(out), "--scenes", "1", "--seed", "3", *TINY])
    assert "wrote" in capsys.readouterr().out
    nusc = open_nuscenes(out, "v1.0-mini")
    assert [s["name"] for s in nusc.scene] == ["scene-0103"]
    assert len(nusc.sample) == 1
    assert not list(tmp_path.glob(".synth.*"))  # no temporary left behind


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scenes", "11"], "--scenes must be between 1 and 10"),
        (["--scenes", "0"], "--scenes must be between 1 and 10"),
        (["--samples-per-scene", "0"], "--samples-per-scene must be at least 1"),
        (["--image-width", "8"], "at least 16 pixels"),
    ],
)
def test_synth_rejects_bad_options(tmp_path: Path, capsys, args: list[str],
                                   message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--out", str(tmp_path / "x"), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "x").exists()


def test_synth_does_not_overwrite_without_asking(tmp_path: Path, capsys) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--out", str(out), "--scenes", "1", *TINY])
    assert exit_info.value.code == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    main(["synth", "--out", str(out), "--scenes", "1", "--overwrite", *TINY])
    assert not (out / "notes.txt").exists() and (out / "v1.0-mini" / "scene.json").is_file()


@pytest.mark.slow
def test_worker_processes_write_the_same_dataset(tmp_path: Path) -> None:
    """Scenes made in two spawned processes equal scenes made in-process."""
    for workers in ("1", "2"):
        main(["synth", "--out", str(tmp_path / workers), "--scenes", "2",
              "--samples-per-scene", "2", "--sweeps-per-sample", "1", "--image-width", "96",
              "--image-height", "54", "--workers", workers])
    for table in ("sample", "sample_annotation", "sample_data", "ego_pose", "instance"):
        a = json.loads((tmp_path / "1" / "v1.0-mini" / f"{table}.json").read_text())
        b = json.loads((tmp_path / "2" / "v1.0-mini" / f"{table}.json").read_text())
        assert a == b, table
