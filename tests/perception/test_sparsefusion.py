"""SparseFusion pieces checked against references: deformable attention against a naive
loop, the disentangled view transform against the data layer's LiDAR -> camera boxes and a
hand-computed case, the box coder, Hungarian-matched losses, the ResNet layout, the
transfer modules, checkpoints, and a tiny model that overfits one sample."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from perception.boxes import LidarBoxes
from perception.sparsefusion.box_coder import LidarBoxCoder, camera_encode
from perception.sparsefusion.config import (
    CameraConfig,
    LidarConfig,
    SparseFusionConfig,
    VoxelConfig,
    config_from_dict,
    config_to_dict,
    paper_preset,
    small_preset,
)
from perception.sparsefusion.data import Batch
from perception.sparsefusion.deformable_attention import (
    MSDeformAttn,
    ms_deform_attn,
    ms_deform_attn_naive,
)
from perception.sparsefusion.losses import (
    focal_cost,
    gaussian_focal_loss,
    set_loss,
    sigmoid_focal_loss,
)
from perception.sparsefusion.resnet import ResNet, load_resnet_weights
from perception.sparsefusion.transfer import GeometricTransfer, project_points
from perception.sparsefusion.view_transform import camera_to_lidar


def tiny_config(modality: str = "fusion") -> SparseFusionConfig:
    """A few thousand parameters' worth of every component (tests only)."""
    return SparseFusionConfig(
        modality=modality, hidden=32, heads=4, ffn=64, dropout=0.0,
        voxel=VoxelConfig(voxel_size=(0.8, 0.8, 1.0), point_range=(-12.8, -12.8, -4.0,
                                                                   12.8, 12.8, 2.0),
                          max_points=4, max_voxels=5000, sweeps=2),
        lidar=LidarConfig(encoder_channels=(8, 16), encoder_blocks=1, encoder_out=16,
                          neck_channels=(16, 32), neck_layers=(1, 1), neck_out=16,
                          num_queries=12),
        camera=CameraConfig(image_size=(64, 48), resnet_depth=18, resnet_width=8,
                            num_levels=3, num_points=2, num_queries=8),
    )


# ----------------------------------------------------------------------------- attention


def test_deformable_attention_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 7), (3, 4), (2, 2)]
    n, q, heads, dim, points = 2, 3, 2, 4, 3
    value = torch.randn(n, sum(h * w for h, w in shapes), heads, dim, generator=g,
                        dtype=torch.float64)
    # Locations partly outside [0, 1] exercise the zero padding.
    loc = torch.rand(n, q, heads, len(shapes), points, 2, generator=g, dtype=torch.float64)
    loc = loc * 1.4 - 0.2
    weights = torch.rand(n, q, heads, len(shapes), points, generator=g, dtype=torch.float64)
    fast = ms_deform_attn(value, shapes, loc, weights)
    slow = ms_deform_attn_naive(value, shapes, loc, weights)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)


def test_deformable_attention_module_gradcheck():
    torch.manual_seed(0)
    attn = MSDeformAttn(4, 2, 2, 2).double()
    shapes = [(3, 3), (1, 2)]
    query = torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True)
    value = torch.randn(1, 11, 4, dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[[0.3, 0.4], [0.61, 0.52]]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda qq, vv: attn(qq, ref, vv, shapes), (query, value))


# ----------------------------------------------------------------------------- view transform


def _random_boxes(n: int, seed: int) -> LidarBoxes:
    rng = np.random.default_rng(seed)
    return LidarBoxes(
        centers=np.stack([rng.uniform(-8, 8, n), rng.uniform(6, 30, n), rng.uniform(-1.5, 0.5,
                                                                                      n)], 1),
        sizes=rng.uniform(0.5, 5.0, (n, 3)), yaws=rng.uniform(-math.pi, math.pi, n),
        velocities=rng.normal(0, 3, (n, 2)), labels=rng.integers(0, 10, n),
        attributes=np.zeros(n, np.int64))


def test_view_transform_inverts_the_data_layer_projection():
    """LidarBoxes.to_camera (the data layer) then camera_to_lidar gives the boxes back."""
    boxes = _random_boxes(20, seed=1)
    # A camera 1.5 m up looking along LiDAR +y, yawed by 0.3 rad, with some roll.
    c, s = math.cos(0.3), math.sin(0.3)
    R_lidar_cam = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array(
        [[1, 0, 0], [0, 0, 1], [0, -1, 0]])
    roll = np.array([[math.cos(0.05), -math.sin(0.05), 0], [math.sin(0.05), math.cos(0.05), 0],
                     [0, 0, 1]])
    T_lidar_cam = np.eye(4)
    T_lidar_cam[:3, :3] = R_lidar_cam @ roll
    T_lidar_cam[:3, 3] = [0.2, 0.5, 1.5]
    T_cam_lidar = np.linalg.inv(T_lidar_cam)
    K = np.array([[800.0, 0, 640], [0, 790.0, 360], [0, 0, 1]])
    cam = boxes.to_camera(T_cam_lidar, K, (1280, 720))
    assert len(cam) >= 5
    n = len(cam)
    t = torch.from_numpy
    centers, yaw, vel = camera_to_lidar(
        t(cam.centers_2d), t(cam.depths), t(np.stack([np.sin(cam.yaws), np.cos(cam.yaws)], 1)),
        t(cam.velocities), t(K).expand(n, 3, 3), t(T_lidar_cam).expand(n, 4, 4))
    ref = boxes.select(cam.box_index)
    np.testing.assert_allclose(centers.numpy(), ref.centers, atol=1e-9)
    yaw_rad = np.arctan2(yaw[:, 0].numpy(), yaw[:, 1].numpy())
    # The camera rolls by 0.05 rad, so the heading's tilt leaves the yaw only approximate
    # in general; the data layer and the transform use the same projection, so compare
    # against the heading of the box's x axis re-projected (exact for upright cameras).
    diff = np.angle(np.exp(1j * (yaw_rad - ref.yaws)))
    assert np.abs(diff).max() < 0.06
    # Velocity: (vx, vz) keeps the camera-plane part; with roll a little leaks into y.
    np.testing.assert_allclose(vel.numpy(), ref.velocities, atol=0.05 * np.abs(
        ref.velocities).max() + 1e-9)


def test_view_transform_hand_computed():
    # Camera at the LiDAR origin looking along LiDAR +y (x right, y down = -z).
    T_lidar_cam = torch.eye(4, dtype=torch.float64)
    T_lidar_cam[:3, :3] = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])
    K = torch.tensor([[100.0, 0, 50], [0, 100.0, 40], [0, 0, 1]], dtype=torch.float64)
    uv = torch.tensor([[150.0, 40.0]], dtype=torch.float64)  # 1 focal right of centre
    depth = torch.tensor([10.0], dtype=torch.float64)
    # yaw_cam = 0: heading along camera +x = LiDAR +x (yaw 0); velocity (vx=1, vz=2).
    centers, yaw, vel = camera_to_lidar(uv, depth, torch.tensor([[0.0, 1.0]],
                                                                dtype=torch.float64),
                                        torch.tensor([[1.0, 2.0]], dtype=torch.float64),
                                        K[None], T_lidar_cam[None])
    torch.testing.assert_close(centers, torch.tensor([[10.0, 10.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(yaw, torch.tensor([[0.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(vel, torch.tensor([[1.0, 2.0]], dtype=torch.float64))
    # yaw_cam = -pi/2: heading along camera +z = LiDAR +y (yaw pi/2).
    _, yaw, _ = camera_to_lidar(uv, depth, torch.tensor([[-1.0, 0.0]], dtype=torch.float64),
                                torch.zeros(1, 2, dtype=torch.float64), K[None],
                                T_lidar_cam[None])
    torch.testing.assert_close(yaw, torch.tensor([[1.0, 0.0]], dtype=torch.float64))


def test_project_points_matches_camera_data():
    from perception.data.sample import CameraData

    rng = np.random.default_rng(0)
    T = np.eye(4)
    T[:3, :3] = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    T[:3, 3] = [0.1, -0.2, 0.3]
    K = np.array([[500.0, 0, 320], [0, 480, 180], [0, 0, 1]])
    cam = CameraData("CAM_FRONT", None, (640, 360), K, T, 0.0)
    pts = rng.uniform(-10, 10, (50, 3)) + [0, 15, 0]
    uv_ref, depth_ref = cam.project(pts)
    uv, depth = project_points(torch.from_numpy(pts)[None], torch.from_numpy(T)[None, None],
                               torch.from_numpy(K)[None, None])
    np.testing.assert_allclose(uv[0, 0].numpy(), uv_ref, rtol=1e-12)
    np.testing.assert_allclose(depth[0, 0].numpy(), depth_ref, rtol=1e-12)


def test_geometric_transfer_depth_map_keeps_nearest_point():
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] = torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    K = torch.tensor([[10.0, 0, 8], [0, 10.0, 6], [0, 0, 1]], dtype=torch.float64)
    # Two points on the optical axis (pixel (8, 6)), one off-axis, one behind.
    pts = torch.tensor([[0.0, 5.0, 0.0], [0.0, 3.0, 0.0], [3.0, 6.0, 0.0], [0.0, -4.0, 0.0]],
                       dtype=torch.float64)
    depth = GeometricTransfer.depth_maps([pts], T[None, None], K[None, None], (16, 12),
                                         [(6, 8)])[0]
    expected = torch.zeros(6, 8, dtype=torch.float64)
    expected[3, 4] = 3.0  # pixel (8, 6) -> cell (row 6 / 2, col 8 / 2), nearest of 5 and 3 m
    expected[3, 6] = 6.0  # x = 3 at 6 m: u = 8 + 10 * 0.5 = 13 -> col 6
    torch.testing.assert_close(depth[0, 0], expected)


# ----------------------------------------------------------------------------- coder, losses


def test_box_coder_round_trip_and_grid_units():
    coder = LidarBoxCoder((-54.0, -54.0, -5.0, 54.0, 54.0, 3.0), (0.6, 0.6))
    centers = torch.tensor([[-54.0, -54.0, 0.5], [0.3, 0.9, -1.0]], dtype=torch.float64)
    sizes = torch.tensor([[1.0, 2.0, 3.0], [0.5, 4.0, 1.5]], dtype=torch.float64)
    yaws = torch.tensor([0.5, -2.5], dtype=torch.float64)
    vels = torch.tensor([[1.0, -1.0], [0.0, 2.0]], dtype=torch.float64)
    code = coder.encode(centers, sizes, yaws, vels)
    assert code[0, :2].tolist() == [0.0, 0.0]
    torch.testing.assert_close(code[1, :2], torch.tensor([90.5, 91.5], dtype=torch.float64))
    out = coder.decode(code)
    for a, b in zip(out, (centers, sizes, yaws, vels), strict=True):
        torch.testing.assert_close(a, b)


def test_focal_loss_value():
    logits = torch.tensor([[2.0, -1.0]])
    targets = torch.tensor([[1.0, 0.0]])
    p = torch.sigmoid(logits)
    expected = (0.25 * (1 - p[0, 0]) ** 2 * -torch.log(p[0, 0])
                + 0.75 * p[0, 1] ** 2 * -torch.log(1 - p[0, 1]))
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets), expected)
    cost = focal_cost(logits, torch.tensor([0, 1]))
    assert cost.shape == (1, 2) and cost[0, 0] < 0 < cost[0, 1]


def test_gaussian_focal_loss_zero_for_perfect_heatmap():
    target = torch.zeros(1, 1, 5, 5)
    target[0, 0, 2, 2] = 1.0
    logits = torch.where(target > 0, torch.tensor(30.0), torch.tensor(-30.0))
    assert float(gaussian_focal_loss(logits, target)) < 1e-9
    assert float(gaussian_focal_loss(torch.zeros(1, 1, 5, 5), target)) > 0.1


def test_hungarian_loss_is_zero_for_perfect_predictions():
    g = torch.Generator().manual_seed(0)
    m, q, k = 4, 9, 10
    gt_codes = torch.randn(m, 10, generator=g)
    gt_labels = torch.tensor([0, 3, 3, 7])
    gt_centers = torch.rand(m, 2, generator=g)
    perm = torch.tensor([5, 1, 8, 2])  # where each ground truth sits among the predictions
    logits = torch.full((q, k), -40.0)
    logits[perm, gt_labels] = 40.0
    codes = torch.randn(q, 10, generator=g) * 5
    codes[perm] = gt_codes
    centers = torch.rand(q, 2, generator=g) + 3.0
    centers[perm] = gt_centers
    cls, box = set_loss(logits, codes, centers, gt_labels, gt_codes, gt_centers, torch.ones(10))
    assert float(cls) < 1e-12 and float(box) == 0.0
    # Moving one prediction by 1 in one entry costs bbox_weight * 1 / M.
    codes[perm[2], 4] += 1.0
    _, box = set_loss(logits, codes, centers, gt_labels, gt_codes, gt_centers, torch.ones(10))
    assert float(box) == pytest.approx(0.25 / m)


def test_camera_code():
    code = camera_encode(torch.tensor([[32.0, 12.0]]), torch.tensor([math.e]),
                         torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([0.0]),
                         torch.tensor([[1.0, 2.0]]), (64, 48))
    torch.testing.assert_close(code, torch.tensor([[0.5, 0.25, 1.0, 0, 0, 0, 0, 1, 1, 2]]))


# ----------------------------------------------------------------------------- backbone


def test_resnet_matches_torchvision_layout(tmp_path):
    net50 = ResNet(50)
    # torchvision's resnet50 has 25,557,032 parameters, 2,049,000 of them in fc.
    assert sum(p.numel() for p in net50.parameters()) == 25_557_032 - 2_049_000
    net18 = ResNet(18)
    assert sum(p.numel() for p in net18.parameters()) == 11_689_512 - 513_000
    keys = set(net50.state_dict())
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight",
                "layer1.0.downsample.1.num_batches_tracked", "layer4.2.conv3.weight",
                "layer3.5.bn2.bias"):
        assert key in keys
    feats = net18(torch.zeros(1, 3, 64, 96))
    assert [f.shape[1:] for f in feats] == [(128, 8, 12), (256, 4, 6), (512, 2, 3)]
    # A torchvision-style checkpoint (with the classifier) loads and sets the weights.
    state = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in net18.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    torch.save(state, tmp_path / "resnet18.pth")
    fresh = ResNet(18)
    load_resnet_weights(fresh, tmp_path / "resnet18.pth")
    assert torch.equal(fresh.layer2[1].conv1.weight,
                       state["layer2.1.conv1.weight"])
    from geometry.errors import UserError

    with pytest.raises(UserError):
        load_resnet_weights(ResNet(50), tmp_path / "resnet18.pth")


# ----------------------------------------------------------------------------- whole model


def _tiny_batch(config: SparseFusionConfig, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    W, H = config.camera.image_size
    # A ground plane and a car-sized block of points at (3, 6), a pedestrian at (-4, 8).
    ground = torch.cat([torch.rand(800, 2, generator=g) * 24 - 12, torch.full((800, 1), -1.8)],
                       1)
    car = torch.rand(300, 3, generator=g) * torch.tensor([1.8, 4.4, 1.5]) + torch.tensor(
        [2.1, 3.8, -1.8])
    ped = torch.rand(80, 3, generator=g) * torch.tensor([0.5, 0.5, 1.7]) + torch.tensor(
        [-4.25, 7.75, -1.8])
    xyz = torch.cat([ground, car, ped])
    pts = torch.cat([xyz, torch.rand(xyz.shape[0], 1, generator=g), torch.zeros(xyz.shape[0],
                                                                                1)], 1)
    T = torch.eye(4).repeat(1, 6, 1, 1)
    T[:, :, :3, :3] = torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    T[:, :, 1, 3] = 1.0
    K = torch.tensor([[40.0, 0, W / 2], [0, 40.0, H / 2], [0, 0, 1]]).repeat(1, 6, 1, 1)
    gt = [{"centers": torch.tensor([[3.0, 6.0, -1.05], [-4.0, 8.0, -0.95]]),
           "sizes": torch.tensor([[1.8, 4.4, 1.5], [0.5, 0.5, 1.7]]),
           "yaws": torch.tensor([math.pi / 2, 0.0]),
           "velocities": torch.tensor([[0.0, 3.0], [0.0, 0.0]]),
           "labels": torch.tensor([0, 7]), "code_mask": torch.ones(2, 10)}]
    cgt = [{"view": torch.tensor([0, 0]),
            "centers_2d": torch.tensor([[W / 2 + 40 * 3 / 6, H / 2 + 40 * 0.05 / 6],
                                        [W / 2 - 40 * 4 / 8, H / 2 - 40 * 0.05 / 8]]),
            "depths": torch.tensor([6.0, 8.0]), "sizes": gt[0]["sizes"],
            "yaws": torch.tensor([-math.pi / 2, 0.0]), "velocities": torch.tensor([[0.0, 3.0],
                                                                                   [0.0, 0.0]]),
            "labels": torch.tensor([0, 7]),
            "bboxes_2d": torch.tensor([[40.0, 18, 56, 30], [26.0, 16, 30, 30]]),
            "code_mask": torch.ones(2, 10)}]
    images = torch.randn(1, 6, 3, H, W, generator=g) * 0.1
    images[:, 0, :, 18:30, 40:56] += 1.0
    mask = torch.zeros(1, 6, dtype=torch.bool)
    mask[0, :2] = True
    return Batch([pts], images, K, T, mask, (W, H), gt, cgt)


@pytest.mark.parametrize("modality", ["lidar", "camera", "fusion"])
def test_forward_backward_reaches_every_branch(modality):
    from perception.sparsefusion.model import SparseFusion

    torch.manual_seed(0)
    config = tiny_config(modality)
    model = SparseFusion(config)
    batch = _tiny_batch(config)
    out = model(batch)
    queries = (config.lidar.num_queries if config.use_lidar else 0) + (
        config.camera.num_queries if config.use_camera else 0)
    assert out["logits"].shape == (1, queries, 10) and out["code"].shape == (1, queries, 10)
    losses = model.loss(out, batch)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    groups = {"fusion_head": True, "encoder": config.use_lidar, "lidar_head": config.use_lidar,
              "camera.backbone": config.use_camera, "refine": config.use_camera,
              "semantic": modality == "fusion", "geometric": modality == "fusion"}
    for prefix, expected in groups.items():
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix)]
        assert bool(grads) == expected, prefix
        if expected:
            assert any(g is not None and g.abs().sum() > 0 for g in grads), prefix
    boxes = model.eval().predict(model(batch))[0]
    assert len(boxes) == queries and np.all(np.diff(boxes.scores) <= 0)


def test_transfer_switches():
    from perception.sparsefusion.model import SparseFusion

    config = tiny_config("fusion")
    config.transfer.semantic = False
    model = SparseFusion(config)
    assert not hasattr(model, "semantic") and hasattr(model, "geometric")
    config.transfer.geometric = False
    assert not hasattr(SparseFusion(config), "geometric")


@pytest.mark.slow
def test_overfits_one_sample():
    """The tiny fusion model learns one sample: the best two boxes are the car and the
    pedestrian, within half a metre."""
    from perception.sparsefusion.model import SparseFusion

    torch.manual_seed(0)
    config = tiny_config("fusion")
    model = SparseFusion(config)
    batch = _tiny_batch(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = None
    for _ in range(120):
        losses = model.loss(model(batch), batch)
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()
        first = first if first is not None else float(losses["total"].detach())
    assert float(losses["total"]) < 0.25 * first
    boxes = model.eval().predict(model(batch))[0]
    top = boxes.select(slice(0, 2))
    assert sorted(top.labels.tolist()) == [0, 7]
    for label, center in ((0, (3.0, 6.0)), (7, (-4.0, 8.0))):
        found = top.centers[top.labels == label][0, :2]
        assert np.linalg.norm(found - np.array(center)) < 0.5


def test_checkpoint_round_trip(tmp_path):
    from perception.sparsefusion.checkpoint import load_model, save_checkpoint
    from perception.sparsefusion.model import SparseFusion

    torch.manual_seed(0)
    config = tiny_config("fusion")
    model = SparseFusion(config).eval()
    save_checkpoint(tmp_path / "ckpt", model, config)
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.config == config
    saved, restored = model.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys()
    assert all(torch.equal(saved[k], restored[k]) for k in saved)
    # Outputs compared on the camera-only model: spconv's CPU scatter-add sums in a
    # thread-dependent order (~1e-5 noise), which can swap tied BEV heatmap cells.
    camera = tiny_config("camera")
    model = SparseFusion(camera).eval()
    save_checkpoint(tmp_path / "camera", model, camera)
    batch = _tiny_batch(camera)
    with torch.no_grad():
        a, b = model(batch), load_model(tmp_path / "camera")(batch)
    torch.testing.assert_close(a["logits"], b["logits"], rtol=0, atol=0)
    torch.testing.assert_close(a["code"], b["code"], rtol=0, atol=0)


def test_presets_and_config_json():
    paper = paper_preset()
    assert (paper.lidar.num_queries, paper.camera.num_queries, paper.hidden, paper.heads) == (
        200, 200, 128, 8)
    assert paper.voxel.voxel_size == (0.075, 0.075, 0.2)
    assert paper.voxel.point_range == (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0)
    assert paper.bev_shape == (180, 180) and paper.camera.resnet_depth == 50
    small = small_preset("camera")
    assert config_from_dict(config_to_dict(small)) == small
    with pytest.raises(ValueError):
        config_from_dict({**config_to_dict(small), "bogus": 1})
