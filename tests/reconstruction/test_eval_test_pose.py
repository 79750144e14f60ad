"""recon eval's test-pose stage: test views optimised in batches (one render call per step)
give the poses of the per-view path, the batches group views by size and by neighbourhood,
and eval's early-stopping schedule lands where the full schedule does."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from geometry.cameras import Cameras
from geometry.pose_metrics import rotation_angle_deg
from geometry.se3 import invert_T, make_T
from geometry.so3 import axis_angle_to_matrix
from reconstruction.eval import protocol as P
from reconstruction.eval.config import EvalConfig, eval_test_pose_options
from reconstruction.eval.splits import Split
from reconstruction.gaussians import GaussianScene
from reconstruction.pose_opt import PoseOptConfig
from reconstruction.scene_model import GaussianSceneModel
from reconstruction.splatting import rgb_to_sh

W, H = 64, 48
NUM_VIEWS = 5


def _scene(n: int = 1500) -> GaussianScene:
    """Opaque Gaussians filling a box around the origin with a smooth colour field."""
    gen = torch.Generator().manual_seed(0)
    means = (torch.rand(n, 3, generator=gen) - 0.5) * torch.tensor([3.0, 2.4, 2.0])
    x, y, z = means.unbind(-1)
    colours = 0.5 + 0.45 * torch.stack([torch.sin(3 * x + 1), torch.cos(2.5 * y),
                                        torch.sin(2 * z + x)], -1)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    return GaussianScene(means=means, quats=quats, log_scales=torch.full((n, 3), math.log(0.06)),
                         logit_opacities=torch.full((n,), 3.0),
                         sh0=rgb_to_sh(colours)[:, None, :], shN=torch.zeros(n, 0, 3))


def _look_at(centre: torch.Tensor) -> torch.Tensor:
    """Camera-to-world pose at ``centre`` looking at the origin (OpenCV: z forward, y down)."""
    z = torch.nn.functional.normalize(-centre, dim=0)
    x = torch.nn.functional.normalize(torch.linalg.cross(torch.tensor([0.0, -1.0, 0.0]), z),
                                      dim=0)
    y = torch.linalg.cross(z, x)
    return make_T(torch.stack([x, y, z], -1), centre)


def _cameras(T_world_cam: torch.Tensor) -> Cameras:
    K = torch.tensor([[60.0, 0.0, W / 2], [0.0, 60.0, H / 2], [0.0, 0.0, 1.0]])
    return Cameras(K=K.expand(len(T_world_cam), 3, 3), T_world_cam=T_world_cam, width=W,
                   height=H)


@dataclass
class _Dataset:
    """What the test-pose stage reads of an evaluation dataset."""

    cameras: Cameras
    images: torch.Tensor

    def load_image(self, index: int) -> torch.Tensor:
        return self.images[index]


def _perturbations() -> torch.Tensor:
    """``[NUM_VIEWS, 4, 4]`` world-to-camera offsets: 1-2 degrees and a few centimetres."""
    gen = torch.Generator().manual_seed(1)
    out = []
    for k in range(NUM_VIEWS):
        axis = torch.nn.functional.normalize(torch.randn(3, generator=gen), dim=0)
        angle = math.radians(1.0 + 0.25 * k)
        out.append(make_T(axis_angle_to_matrix(axis * angle),
                          0.04 * torch.nn.functional.normalize(torch.randn(3, generator=gen),
                                                               dim=0)))
    return torch.stack(out)


@pytest.fixture(scope="module")
def setup():
    """A Gaussian scene, its renders from 5 cameras on an arc 3.2 m out (the 'dataset'),
    and the test poses the alignment would hand over: the true ones perturbed."""
    angles = torch.linspace(-0.6, 0.6, NUM_VIEWS)
    centres = torch.stack([3.2 * torch.sin(angles), torch.full_like(angles, -0.5),
                           -3.2 * torch.cos(angles)], -1)
    T_true = torch.stack([_look_at(c) for c in centres])
    model = GaussianSceneModel(_scene(), _cameras(T_true[:1]))
    with torch.no_grad():
        images = model.render(_cameras(T_true), ("rgb",)).rgb
    T_init = invert_T(_perturbations() @ invert_T(T_true))
    return model, _Dataset(_cameras(T_true), images), T_true, T_init


def _run(setup, batch: int, options: PoseOptConfig) -> tuple[torch.Tensor, list[dict]]:
    model, dataset, _, T_init = setup
    config = EvalConfig(dataset=None, out=None, quiet=True, test_pose_batch=batch,
                        test_pose_options=options)
    ev = P._Eval(config=config, dataset=dataset, split=Split([], list(range(NUM_VIEWS)), "test"),
                 extent=1.0, extent_source="test", lpips=None, lpips_missing=None)
    frame = P._Frame(poses=None, T_world_cam_test=T_init.double(),
                     K_test=dataset.cameras.K.double(), to_gt=1.0, scene_scale=3.2)
    return P._optimise_test_poses(ev, model, frame, True)


def _errors(T_a: torch.Tensor, T_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation (degrees) and centre distance of each pair of camera-to-world poses."""
    rot = torch.stack([rotation_angle_deg(T_a[k, :3, :3].double(), T_b[k, :3, :3].double())
                       for k in range(len(T_a))])
    return rot, (T_a[:, :3, 3].double() - T_b[:, :3, 3].double()).norm(dim=-1)


def test_batched_test_poses_match_the_per_view_path(setup):
    _, _, T_true, T_init = setup
    options = PoseOptConfig(iterations=40)
    per_view, info_1 = _run(setup, 1, options)
    batched, info_3 = _run(setup, 3, options)  # batches of 3 and 2 views
    rot, centre = _errors(batched, per_view)
    # The same path up to float rounding (degree-0 colours: the baked colours agree).
    assert float(rot.max()) < 2e-3 and float(centre.max()) < 2e-4, (rot, centre)
    for a, b in zip(info_1, info_3, strict=True):
        assert a["final_loss"] == pytest.approx(b["final_loss"], rel=1e-3)
        assert a["steps"] == b["steps"] == 40
    # And the optimisation did its job (40 steps: part of the way out of the 1-2 degrees).
    rot0, centre0 = _errors(T_init, T_true)
    rot1, centre1 = _errors(per_view, T_true)
    assert float(rot1.mean()) < 0.5 * float(rot0.mean()), (rot0, rot1)
    assert float(centre1.mean()) < 0.7 * float(centre0.mean()), (centre0, centre1)
    assert all(v["final_loss"] < 0.5 * v["initial_loss"] for v in info_1)


def test_eval_schedule_lands_where_the_full_schedule_does(setup):
    _, _, T_true, T_init = setup
    full, full_info = _run(setup, 1, PoseOptConfig())
    fast, fast_info = _run(setup, 8, eval_test_pose_options())
    rot_init, centre_init = _errors(T_init, T_true)
    rot_full, centre_full = _errors(full, T_true)
    rot_fast, centre_fast = _errors(fast, T_true)
    # Fewer steps, and errors close to the full schedule's. This smooth synthetic scene is
    # the hard case for early stopping: its loss goes to zero, and the last, small steps of
    # the full schedule still gain while Adam's oscillation hides it. Measured here: mean
    # errors 14 % larger (0.46 against 0.40 degrees; 100 steps would give 0.14), hence the
    # 25 % bound; on DTU the poses land within 0.05 degrees of the full schedule's.
    assert sum(v["steps"] for v in fast_info) < sum(v["steps"] for v in full_info)
    assert float(rot_fast.mean()) < 1.25 * float(rot_full.mean()) + 0.01, (rot_fast, rot_full)
    assert float(centre_fast.mean()) < 1.25 * float(centre_full.mean()) + 1e-3
    assert bool((rot_fast < 0.7 * rot_init).all()), (rot_fast, rot_init)
    for a, b in zip(full_info, fast_info, strict=True):
        assert b["final_loss"] <= b["initial_loss"]
        assert b["final_loss"] == pytest.approx(a["final_loss"], rel=0.5, abs=2e-3)


def _frame_at(centres: list[float], sizes: list[tuple[int, int]], batch: int):
    T = torch.eye(4, dtype=torch.float64).repeat(len(centres), 1, 1)
    T[:, 0, 3] = torch.tensor(centres, dtype=torch.float64)
    cameras = Cameras(K=torch.eye(3).expand(len(centres), 3, 3), T_world_cam=T.float(),
                      width=torch.tensor([s[0] for s in sizes]),
                      height=torch.tensor([s[1] for s in sizes]))
    config = EvalConfig(dataset=None, out=None, test_pose_batch=batch)
    ev = P._Eval(config=config, dataset=_Dataset(cameras, torch.zeros(0)),
                 split=Split([], list(range(len(centres))), "test"), extent=1.0,
                 extent_source="test", lpips=None, lpips_missing=None)
    frame = P._Frame(poses=None, T_world_cam_test=T, K_test=cameras.K.double(), to_gt=1.0,
                     scene_scale=1.0)
    return ev, frame


def test_batches_hold_one_size_and_neighbours():
    # Two clusters of three cameras, shuffled, and one view of another size.
    centres = [10.0, 0.0, 11.0, 1.0, 12.0, 2.0, 5.0]
    sizes = [(64, 48)] * 6 + [(48, 64)]
    ev, frame = _frame_at(centres, sizes, batch=3)
    batches = P._test_pose_batches(ev, frame)
    assert sorted(sorted(b) for b in batches) == [[0, 2, 4], [1, 3, 5], [6]]
    ev, frame = _frame_at(centres, sizes, batch=4)  # 6 views of one size: two batches of 3
    assert sorted(len(b) for b in P._test_pose_batches(ev, frame)) == [1, 3, 3]
    ev, frame = _frame_at(centres, sizes, batch=1)
    assert P._test_pose_batches(ev, frame) == [[k] for k in range(7)]


def test_a_batch_below_one_is_a_user_error(run_recon, tmp_path):
    code, err = run_recon("eval", "--dataset", str(tmp_path / "scene"), "--out",
                          str(tmp_path / "out"), "--test-pose-batch", "0")
    assert code == 2 and "--test-pose-batch 0 must be at least 1" in err, err
    assert not (tmp_path / "out").exists()
