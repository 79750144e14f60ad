"""GaussianScene and the 3DGS PLY: round trips and hand-built files with known layouts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from geometry.errors import UserError
from reconstruction.gaussians import GaussianScene, ply_property_names, read_ply, write_ply
from reconstruction.splatting.sh import SH_C0, rgb_to_sh


def _random_scene(n: int, degree: int, seed: int = 0) -> GaussianScene:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return GaussianScene(
        means=torch.randn(n, 3, generator=g),
        quats=torch.randn(n, 4, generator=g),
        log_scales=torch.randn(n, 3, generator=g) - 3,
        logit_opacities=torch.randn(n, generator=g),
        sh0=torch.randn(n, 1, 3, generator=g),
        shN=torch.randn(n, k - 1, 3, generator=g),
    )


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_round_trip_is_exact_in_float32(tmp_path, degree):
    scene = _random_scene(50, degree)
    write_ply(tmp_path / "s.ply", scene)
    back = read_ply(tmp_path / "s.ply")
    assert back.sh_degree == degree
    for name, value in scene.tensors().items():
        torch.testing.assert_close(getattr(back, name), value, rtol=0, atol=0)
    assert not list(tmp_path.glob(".*tmp*")), "atomic write left a temporary behind"


def test_written_layout_is_the_original_3dgs_one(tmp_path):
    scene = _random_scene(7, 3)
    write_ply(tmp_path / "s.ply", scene)
    ply = PlyData.read(str(tmp_path / "s.ply"))
    assert ply.header.splitlines()[1] == "format binary_little_endian 1.0"
    vertex = ply["vertex"]
    names = [p.name for p in vertex.properties]
    assert names == ply_property_names(3)
    assert len(names) == 62  # 3 + 3 + 3 + 45 + 1 + 3 + 4: the well-known degree-3 count
    assert all(p.val_dtype in ("f4", "float32", "float") for p in vertex.properties)
    # Channel-major f_rest: coefficient j of channel c lives at f_rest_{c*15 + j}.
    for c in range(3):
        for j in range(15):
            np.testing.assert_array_equal(vertex[f"f_rest_{c * 15 + j}"],
                                          scene.shN[:, j, c].numpy())
    np.testing.assert_array_equal(vertex["rot_0"], scene.quats[:, 0].numpy())  # w first
    np.testing.assert_array_equal(vertex["opacity"], scene.logit_opacities.numpy())
    np.testing.assert_array_equal(vertex["scale_2"], scene.log_scales[:, 2].numpy())
    np.testing.assert_array_equal(vertex["nx"], np.zeros(7, np.float32))


def _hand_built(path, names, rows, text):
    vertex = np.empty(len(rows), dtype=[(n, "<f4") for n in names])
    for i, n in enumerate(names):
        vertex[n] = [r[i] for r in rows]
    PlyData([PlyElement.describe(vertex, "vertex")], text=text).write(str(path))


def test_reads_nerfstudio_style_ascii_without_normals_or_rest(tmp_path):
    # nerfstudio's exporter: no normals, degree 0 when the model has no SH, other order.
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    rows = [
        [1, 2, 3, 0.1, 0.2, 0.3, -1.0, -2, -3, -4, 1, 0, 0, 0],
        [4, 5, 6, -0.5, 0.0, 0.5, 2.0, -5, -6, -7, 0, 1, 0, 0],
    ]
    _hand_built(tmp_path / "ns.ply", names, rows, text=True)
    scene = read_ply(tmp_path / "ns.ply")
    assert scene.sh_degree == 0 and scene.num_gaussians == 2
    torch.testing.assert_close(scene.means, torch.tensor([[1.0, 2, 3], [4, 5, 6]]))
    torch.testing.assert_close(scene.sh0[:, 0], torch.tensor([[0.1, 0.2, 0.3], [-0.5, 0, 0.5]]))
    torch.testing.assert_close(scene.quats, torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0]]))
    torch.testing.assert_close(scene.logit_opacities, torch.tensor([-1.0, 2.0]))
    torch.testing.assert_close(scene.opacities, torch.sigmoid(torch.tensor([-1.0, 2.0])))
    torch.testing.assert_close(scene.scales[1], torch.exp(torch.tensor([-5.0, -6, -7])))


def test_reads_shuffled_order_degree_one_binary(tmp_path):
    # gsplat-style order (f_rest after opacity/scales), degree 1: 9 f_rest values.
    rest = [f"f_rest_{i}" for i in range(9)]
    names = (["x", "y", "z", "opacity", "scale_0", "scale_1", "scale_2",
              "rot_0", "rot_1", "rot_2", "rot_3", "f_dc_0", "f_dc_1", "f_dc_2"]
             + rest[::-1] + ["nx", "ny", "nz"])
    values = {n: float(i) for i, n in enumerate(names)}
    values.update({f"f_rest_{i}": 100.0 + i for i in range(9)})
    _hand_built(tmp_path / "g.ply", names, [[values[n] for n in names]], text=False)
    scene = read_ply(tmp_path / "g.ply")
    assert scene.sh_degree == 1
    # f_rest_{c*3 + j} -> shN[:, j, c]
    expected = torch.tensor([[[100.0, 103, 106], [101, 104, 107], [102, 105, 108]]])
    torch.testing.assert_close(scene.shN, expected)
    torch.testing.assert_close(scene.means, torch.tensor([[0.0, 1, 2]]))
    torch.testing.assert_close(scene.quats, torch.tensor([[7.0, 8, 9, 10]]))


def test_bad_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_ply(tmp_path / "missing.ply")
    (tmp_path / "junk.ply").write_bytes(b"not a ply at all")
    with pytest.raises(UserError, match="not a readable PLY"):
        read_ply(tmp_path / "junk.ply")
    _hand_built(tmp_path / "cloud.ply", ["x", "y", "z"], [[0, 0, 0]], text=True)
    with pytest.raises(UserError, match="lacks the 3DGS properties"):
        read_ply(tmp_path / "cloud.ply")
    names = ply_property_names(0) + ["f_rest_0", "f_rest_1"]
    _hand_built(tmp_path / "rest.ply", names, [[0.0] * len(names)], text=True)
    with pytest.raises(UserError, match="f_rest"):
        read_ply(tmp_path / "rest.ply")


def test_from_points_sizes_by_neighbour_spacing():
    # A 3x3 grid with spacing 0.5: the corner's 3 nearest neighbours are at 0.5, 0.5, 0.707.
    xs, ys = torch.meshgrid(torch.arange(3.0), torch.arange(3.0), indexing="ij")
    pts = torch.stack([xs.flatten() * 0.5, ys.flatten() * 0.5, torch.zeros(9)], dim=1)
    colors = torch.full((9, 3), 0.25)
    scene = GaussianScene.from_points(pts, colors, sh_degree=2, initial_opacity=0.1)
    corner = math.sqrt((0.25 + 0.25 + 0.5) / 3)
    torch.testing.assert_close(scene.scales[0], torch.full((3,), corner))
    torch.testing.assert_close(scene.scales[4], torch.full((3,), 0.5))  # centre: 4 at 0.5
    torch.testing.assert_close(scene.opacities, torch.full((9,), 0.1))
    torch.testing.assert_close(scene.sh0[:, 0] * SH_C0 + 0.5, colors)
    assert scene.shN.shape == (9, 8, 3) and scene.shN.abs().max() == 0
    torch.testing.assert_close(scene.quats[:, 0], torch.ones(9))
    torch.testing.assert_close(rgb_to_sh(torch.tensor([0.5 + SH_C0])), torch.tensor([1.0]))
