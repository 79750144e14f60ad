"""``pose sparp --nocs``: cameras of a generated object from its NOCS maps (PNG or .npy),
the outputs it writes, and the inputs it refuses (one sentence, exit 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from geometry.io.images import write_png
from geometry.pose_metrics import pose_metrics

VIEWS = 3


@pytest.fixture(scope="module")
def object_folder(tmp_path_factory):
    """Photos and NOCS maps (8-bit PNG and float .npy) of one generated object, 64 px."""
    from reconstruction.procedural.objects import ObjectSequenceConfig, object_sequence

    seq = object_sequence(7, ObjectSequenceConfig(image_size=64, views=VIEWS))
    root = tmp_path_factory.mktemp("sparp")
    for sub in ("images", "nocs_png", "nocs_npy"):
        (root / sub).mkdir()
    for v in range(VIEWS):
        write_png(root / "images" / f"v{v}.png", seq.images[v])
        nocs = seq.nocs[v].numpy() * seq.masks[v].numpy()[..., None]
        write_png(root / "nocs_png" / f"v{v}.png", nocs)
        np.save(root / "nocs_npy" / f"v{v}.npy", nocs.astype(np.float32))
    return root, seq


def _run(args: list[str]) -> None:
    from pose.cli import main

    main(["sparp", *args])


@pytest.mark.parametrize("kind", ["png", "npy"])
def test_cli_solves_the_cameras_from_nocs_maps(object_folder, tmp_path: Path, kind: str):
    root, seq = object_folder
    out = tmp_path / "out"
    _run(["--images", str(root / "images"), "--nocs", str(root / f"nocs_{kind}"),
          "--out", str(out), "--fov-deg", "50", "--quiet"])
    for name in ("transforms.json", "poses.json", "cameras/cameras.txt", "cameras/images.txt",
                 "images/v0.png", "nocs/v2.png", ".pose-sparp"):
        assert (out / name).is_file(), name
    from geometry.io.transforms_json import read_transforms_json

    cams = read_transforms_json(out / "transforms.json", dtype=torch.float64).cameras
    assert torch.allclose(cams.K, seq.cameras.K.double(), atol=1e-9)  # 50 deg = the data's
    T = cams.T_world_cam
    assert torch.allclose(T[0], torch.eye(4, dtype=torch.float64), atol=1e-9)  # --frame first
    m = pose_metrics(T, seq.cameras.T_world_cam)
    # 8-bit PNG maps carry quantisation noise (1/255 NOCS units); .npy maps are float32.
    limit = 0.5 if kind == "png" else 1e-3
    assert float(m.rel_rot_err_deg.max()) < limit, m.rel_rot_err_deg
    assert m.scale == pytest.approx(seq.nocs_scale, rel=0.02)  # translations in NOCS units
    record = json.loads((out / "poses.json").read_text())
    assert [v["image"] for v in record["views"]] == [f"v{k}.png" for k in range(VIEWS)]
    for v, mask in zip(record["views"], seq.masks, strict=True):
        assert v["valid_pixels"] == int(mask.sum())
        assert v["inliers"] >= 0.9 * v["valid_pixels"]
    # The NOCS images written are the maps (PNG round trip within one 8-bit level).
    from PIL import Image

    written = np.asarray(Image.open(out / "nocs" / "v1.png"), dtype=np.float64) / 255
    expected = seq.nocs[1].numpy() * seq.masks[1].numpy()[..., None]
    assert np.abs(written - expected).max() <= 0.5 / 255 + 1e-6


def test_cli_object_frame_matches_the_objects_pose(object_folder, tmp_path: Path):
    root, seq = object_folder
    out = tmp_path / "out"
    _run(["--images", str(root / "images"), "--nocs", str(root / "nocs_npy"),
          "--out", str(out), "--frame", "object", "--quiet"])
    record = json.loads((out / "poses.json").read_text())
    T_obj_cam = torch.tensor([v["T_world_cam"] for v in record["views"]], dtype=torch.float64)
    # p_world = T_world_nocs (nocs): the true cameras in NOCS units, object-centred.
    S = seq.T_world_nocs.double()
    T_nocs_cam = torch.linalg.inv(S) @ seq.cameras.T_world_cam.double()
    centres_true = T_nocs_cam[:, :3, 3] - 0.5  # solver's frame: nocs - 0.5
    assert torch.allclose(T_obj_cam[:, :3, 3], centres_true, atol=1e-4)


def _expect_user_error(capsys, args: list[str], out: Path, words: str) -> None:
    with pytest.raises(SystemExit) as info:
        _run([*args, "--out", str(out), "--quiet"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("pose: error:"), err
    assert words in err, err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_without_nocs_the_model_needs_a_checkpoint(object_folder, tmp_path, capsys):
    root, _ = object_folder
    _expect_user_error(capsys, ["--images", str(root / "images")], tmp_path / "out",
                       "needs SpaRP's diffusion model: pass its --checkpoint")


def test_an_unreadable_map_is_refused(object_folder, tmp_path, capsys):
    root, _ = object_folder
    nocs = _copy(root / "nocs_png", tmp_path / "nocs")
    (nocs / "v1.png").write_bytes(b"not a png at all")
    _expect_user_error(capsys, ["--images", str(root / "images"), "--nocs", str(nocs)],
                       tmp_path / "out", "cannot read the NOCS map")


def test_a_map_without_enough_pixels_is_refused(object_folder, tmp_path, capsys):
    root, _ = object_folder
    nocs = _copy(root / "nocs_npy", tmp_path / "nocs")
    sparse = np.zeros((64, 64, 3), np.float32)
    sparse[30:32, 30:33] = 0.5
    np.save(nocs / "v2.npy", sparse)
    _expect_user_error(capsys, ["--images", str(root / "images"), "--nocs", str(nocs)],
                       tmp_path / "out", "has 6 object pixels")


def test_a_map_of_another_size_is_refused(object_folder, tmp_path, capsys):
    root, _ = object_folder
    nocs = _copy(root / "nocs_npy", tmp_path / "nocs")
    np.save(nocs / "v0.npy", np.full((48, 64, 3), 0.5, np.float32))
    _expect_user_error(capsys, ["--images", str(root / "images"), "--nocs", str(nocs)],
                       tmp_path / "out", "another aspect ratio")


def test_a_photo_without_a_map_is_refused(object_folder, tmp_path, capsys):
    root, _ = object_folder
    nocs = _copy(root / "nocs_png", tmp_path / "nocs")
    (nocs / "v1.png").unlink()
    _expect_user_error(capsys, ["--images", str(root / "images"), "--nocs", str(nocs)],
                       tmp_path / "out", "has no NOCS map for the photo v1.png")


def test_values_outside_the_unit_cube_are_refused(object_folder, tmp_path, capsys):
    root, _ = object_folder
    nocs = _copy(root / "nocs_npy", tmp_path / "nocs")
    bad = np.load(nocs / "v0.npy")
    bad[bad.any(-1)] *= 3.0
    np.save(nocs / "v0.npy", bad)
    _expect_user_error(capsys, ["--images", str(root / "images"), "--nocs", str(nocs)],
                       tmp_path / "out", "outside [0, 1]")
