"""Opening what the suite writes: 3DGS PLYs in the three common layouts, a recon-fit OUT
folder, an original-3DGS output folder, and the errors for everything else."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from geometry.errors import UserError
from reconstruction.gaussians import write_ply
from viewer.data import load_scene, read_3dgs_cameras_json
from viewer.server import splats_for_viser


def _scene(helpers, sh_degree: int):
    splats = helpers.make_splats(50, centre=(0.5, 1.0, -2.0), sh_degree=sh_degree, seed=4)
    g = torch.Generator().manual_seed(5)
    splats.quats = torch.randn(50, 4, generator=g)
    splats.log_scales = torch.randn(50, 3, generator=g) * 0.3 - 3.0
    splats.shN = torch.randn_like(splats.shN) * 0.1
    return splats


def _write_layout(path, splats, names, ascii_format: bool = False, double: bool = False):
    """A PLY with exactly the properties ``names`` in that order (as another exporter)."""
    from plyfile import PlyData, PlyElement

    n = splats.num_gaussians
    f_rest = splats.shN.transpose(1, 2).reshape(n, -1)
    values = {
        "x": splats.means[:, 0], "y": splats.means[:, 1], "z": splats.means[:, 2],
        "nx": torch.zeros(n), "ny": torch.zeros(n), "nz": torch.zeros(n),
        "opacity": splats.logit_opacities,
    }
    for i in range(3):
        values[f"f_dc_{i}"] = splats.sh0[:, 0, i]
        values[f"scale_{i}"] = splats.log_scales[:, i]
    for i in range(4):
        values[f"rot_{i}"] = splats.quats[:, i]
    for i in range(f_rest.shape[1]):
        values[f"f_rest_{i}"] = f_rest[:, i]
    dtype = "<f8" if double else "<f4"
    vertex = np.empty(n, dtype=[(name, dtype) for name in names])
    for name in names:
        vertex[name] = values[name].numpy()
    PlyData([PlyElement.describe(vertex, "vertex")], text=ascii_format).write(str(path))


def _gsplat_names(k_rest: int) -> list[str]:
    # gsplat's exporter: no normals, x y z f_dc f_rest opacity scale rot
    return (["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(k_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def _nerfstudio_names(k_rest: int) -> list[str]:
    # nerfstudio's ns-export gaussian-splat: normals first, then as the original
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(k_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


@pytest.mark.parametrize("layout,sh_degree", [("3dgs", 3), ("nerfstudio", 0),
                                              ("nerfstudio-ascii-double", 1), ("gsplat", 1),
                                              ("shuffled", 2)])
def test_the_viewer_opens_3dgs_plys_of_every_layout(helpers, tmp_path, layout, sh_degree):
    splats = _scene(helpers, sh_degree)
    path = tmp_path / "scene.ply"
    k_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    if layout == "3dgs":
        write_ply(path, splats)
    elif layout == "nerfstudio":
        _write_layout(path, splats, _nerfstudio_names(k_rest))
    elif layout == "nerfstudio-ascii-double":
        _write_layout(path, splats, _nerfstudio_names(k_rest), ascii_format=True, double=True)
    elif layout == "gsplat":
        _write_layout(path, splats, _gsplat_names(k_rest))
    else:
        names = _nerfstudio_names(k_rest)
        np.random.default_rng(0).shuffle(names)
        _write_layout(path, splats, names)
    scene = load_scene(path)
    assert scene.cameras is None and scene.points_world is None
    loaded = scene.splats
    assert loaded.sh_degree == sh_degree
    for name, value in splats.tensors().items():
        torch.testing.assert_close(getattr(loaded, name), value, rtol=0, atol=1e-6)


def test_viser_arrays_are_the_activated_gaussians():
    """Covariance R diag(s^2) R^T, degree-0 colour, sigmoid opacity: by hand."""
    from reconstruction.gaussians import GaussianScene

    half = math.sqrt(0.5)
    scene = GaussianScene(  # 90 degrees about z (wxyz), unnormalised on purpose
        means=torch.tensor([[1.0, 2.0, 3.0]]), quats=torch.tensor([[2 * half, 0, 0, 2 * half]]),
        log_scales=torch.log(torch.tensor([[1.0, 2.0, 3.0]])),
        logit_opacities=torch.tensor([0.0]),
        sh0=torch.tensor([[[0.0, 1.0, -1.0]]]), shN=torch.zeros(1, 0, 3))
    arrays = splats_for_viser(scene, scale_modifier=0.5)
    # rotating x onto y swaps the first two variances; the modifier halves the scales
    np.testing.assert_allclose(arrays["covariances"][0], np.diag([1.0, 0.25, 2.25]),
                               atol=1e-6)
    c0 = 0.28209479177387814
    np.testing.assert_allclose(arrays["rgbs"][0], [0.5, 0.5 + c0, 0.5 - c0], atol=1e-6)
    np.testing.assert_allclose(arrays["opacities"], [[0.5]])
    np.testing.assert_allclose(arrays["centers"], [[1.0, 2.0, 3.0]])


def test_an_out_dir_brings_cameras_photos_points_and_metrics(out_dir, helpers):
    scene = load_scene(out_dir)
    assert scene.splats.num_gaussians == 300
    cams = scene.cameras
    expected = helpers.ring_cameras(6, centre=(1.0, -2.0, 3.0), arc_deg=150.0)
    assert len(cams) == 6
    torch.testing.assert_close(cams.T_world_cam.double(), expected.T_world_cam, atol=1e-6,
                               rtol=0)
    torch.testing.assert_close(cams.K.double(), expected.K, atol=1e-6, rtol=0)
    assert all(p.endswith(f"view_{i:02d}.png") for i, p in enumerate(cams.image_paths))
    assert scene.points_world.shape == (100, 3)
    np.testing.assert_allclose(scene.points_world,
                               scene.splats.means.double().numpy()[::3], atol=1e-6)
    assert scene.stats["training PSNR"] == "31.25 dB"
    # the bare PLY of the same folder: splats only
    bare = load_scene(out_dir / "splats.ply")
    assert bare.cameras is None and bare.points_world is None and not bare.stats
    torch.testing.assert_close(bare.splats.means, scene.splats.means)


def test_an_out_dir_without_transforms_json_falls_back_to_the_colmap_model(out_dir, tmp_path):
    import shutil

    copy = tmp_path / "out"
    shutil.copytree(out_dir, copy)
    (copy / "transforms.json").unlink()
    scene = load_scene(copy)
    ref = load_scene(out_dir)
    torch.testing.assert_close(scene.cameras.T_world_cam, ref.cameras.T_world_cam, atol=1e-5,
                               rtol=0)
    assert scene.cameras.image_paths[0] == str(copy / "images" / "view_00.png")


def test_an_original_3dgs_output_folder(helpers, tmp_path):
    """point_cloud/iteration_N (the last N), cameras.json as the 3DGS code writes it."""
    from plyfile import PlyData, PlyElement

    model = tmp_path / "output" / "run"
    early = helpers.make_splats(10, seed=1)
    final = helpers.make_splats(20, seed=2)
    write_ply(model / "point_cloud" / "iteration_7000" / "point_cloud.ply", early)
    write_ply(model / "point_cloud" / "iteration_30000" / "point_cloud.ply", final)
    cams = helpers.ring_cameras(3, arc_deg=60.0, width=80, height_px=60)
    entries = []
    for i in range(3):
        # camera_to_JSON of the 3DGS code: R = R_cw^T (stored transposed), T = t_cw,
        # Rt = [R^T | T] is world-to-camera and its inverse gives position and rotation
        T_cw = torch.linalg.inv(cams.T_world_cam[i]).numpy()
        R, t = T_cw[:3, :3].T, T_cw[:3, 3]
        Rt = np.eye(4)
        Rt[:3, :3], Rt[:3, 3] = R.T, t
        C2W = np.linalg.inv(Rt)
        entries.append({"id": i, "img_name": f"im{i}", "width": 80, "height": 60,
                        "position": C2W[:3, 3].tolist(), "rotation": C2W[:3, :3].tolist(),
                        "fy": float(cams.K[i, 1, 1]), "fx": float(cams.K[i, 0, 0])})
    (model / "cameras.json").write_text(json.dumps(entries))
    rgb = np.zeros(4, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"),
                             ("green", "u1"), ("blue", "u1")])
    rgb["x"], rgb["red"] = [1, 2, 3, 4], [10, 20, 30, 40]
    PlyData([PlyElement.describe(rgb, "vertex")]).write(str(model / "input.ply"))

    scene = load_scene(model)
    assert scene.splats.num_gaussians == 20
    torch.testing.assert_close(scene.cameras.T_world_cam.double(), cams.T_world_cam,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(scene.cameras.K.double(), cams.K, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(scene.point_colors[:, 0], [10, 20, 30, 40])
    direct = read_3dgs_cameras_json(model / "cameras.json")
    assert direct.names == ["im0", "im1", "im2"]


def test_bad_paths_are_one_sentence_user_errors(tmp_path):
    from plyfile import PlyData, PlyElement

    with pytest.raises(UserError, match="does not exist"):
        load_scene(tmp_path / "missing")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(UserError, match="is not a .ply file"):
        load_scene(text)
    fake = tmp_path / "fake.ply"
    fake.write_text("not a ply at all")
    with pytest.raises(UserError, match="not a readable PLY"):
        load_scene(fake)
    cloud = np.zeros(3, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"),
                               ("green", "u1"), ("blue", "u1")])
    PlyData([PlyElement.describe(cloud, "vertex")]).write(str(tmp_path / "cloud.ply"))
    with pytest.raises(UserError, match="lacks the 3DGS properties"):
        load_scene(tmp_path / "cloud.ply")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="found nothing to show"):
        load_scene(tmp_path / "empty")
