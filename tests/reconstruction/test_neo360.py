"""NeO 360: encoder geometry, sampling, training, few-view inference; outdoor scenes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geometry.errors import UserError
from reconstruction.field.rays import Rays, intersect_sphere
from reconstruction.field.triplane import sample_triplanes
from reconstruction.neo360.config import tiny_config
from reconstruction.neo360.model import NeO360, Views, sample_views


@pytest.fixture(scope="module")
def outdoor_scenes():
    from reconstruction.neo360.data import SyntheticScenes, generate_scenes

    return generate_scenes(SyntheticScenes(num_scenes=2, views=6, size=24, supersample=1))


def _views(W=32, H=24, C=2):
    import numpy as _np

    from geometry.se3 import look_at

    T = torch.from_numpy(look_at(_np.array([0.3, -2.0, 0.4]), _np.zeros(3))).float()
    K = torch.tensor([[20.0, 0, W / 2], [0, 20.0, H / 2], [0, 0, 1]])
    h, w = H // 2, W // 2
    feats = torch.zeros(1, C, h, w)
    feats[0, 0] = ((torch.arange(w) + 0.5) * W / w)[None, :]  # = u of the texel centre
    feats[0, 1] = ((torch.arange(h) + 0.5) * H / h)[:, None]  # = v
    return Views(feats, K[None], torch.linalg.inv(T)[None], T[None, :3, 3], W, H), K, T


def test_sample_views_reads_features_where_points_project():
    views, K, T = _views()
    # points at pixels (u, v) = (13.0, 9.0), (20.0, 14.0) at depths 1.5 and 3
    uv = torch.tensor([[13.0, 9.0], [20.0, 14.0]])
    z = torch.tensor([1.5, 3.0])
    pts_cam = torch.cat((((uv - K[:2, 2]) / 20.0) * z[:, None], z[:, None]), -1)
    pts = pts_cam @ T[:3, :3].T + T[:3, 3]
    behind = (T[:3, 3] - 2.0 * T[:3, 2])[None]
    f, valid = sample_views(views, torch.cat((pts, behind)))
    assert valid[0].tolist() == [True, True, False]
    assert torch.allclose(f[0, :2], uv, atol=1e-4)  # linear maps are read exactly


def test_sample_visible_is_sample_views_at_the_visible_pairs():
    from reconstruction.neo360.model import sample_visible

    views, _, _ = _views(C=5)
    views.features = torch.randn(1, 5, 12, 16)
    views = Views(views.features.repeat(2, 1, 1, 1).contiguous(), views.K.repeat(2, 1, 1),
                  views.T_cam_world.repeat(2, 1, 1), views.centres.repeat(2, 1), 32, 24)
    views.features[1] *= -2.0
    views.T_cam_world[1, :3, 3] += torch.tensor([0.4, 0.0, 0.3])  # another viewpoint
    pts = torch.randn(400, 3)
    dense, valid = sample_views(views, pts)
    f, vi, pi = sample_visible(views, pts)
    assert 0 < len(f) < valid.numel() and bool((valid[0] != valid[1]).any())
    assert torch.equal(vi, valid.nonzero()[:, 0]) and torch.equal(pi, valid.nonzero()[:, 1])
    assert torch.allclose(f, dense[vi, pi], atol=1e-6)


def test_voxel_volume_matches_dense_pooling():
    """Pooling over the visible pairs only = the dense softmax over all views with the
    invisible ones masked (zero where no view sees a voxel)."""
    import torch.nn.functional as F

    from reconstruction.neo360.model import posenc

    torch.manual_seed(0)
    cfg = tiny_config(grid=7)
    model = NeO360(cfg)
    views, _, _ = _views(C=cfg.feature_dim)
    views = Views(torch.randn(2, cfg.feature_dim, 12, 16), views.K.repeat(2, 1, 1),
                  views.T_cam_world.repeat(2, 1, 1), views.centres.repeat(2, 1), 32, 24)
    views.T_cam_world[1, :3, 3] += torch.tensor([0.5, 0.1, 0.2])
    views.centres[1] = torch.linalg.inv(views.T_cam_world[1])[:3, 3]
    p, x = model.voxel_points()
    p, x = p.reshape(-1, 3), x.reshape(-1, 3)
    f, valid = sample_views(views, x)
    dirs = F.normalize(x[None] - views.centres[:, None], dim=-1)
    inp = torch.cat((f, posenc(p, cfg.pos_freqs)[None].expand(2, -1, -1),
                     posenc(dirs, cfg.dir_freqs)), -1)
    out = model.project(inp)
    w = torch.softmax(out[..., -1].masked_fill(~valid, -1e4), 0) * valid.any(0, keepdim=True)
    expected = (w[..., None] * out[..., :-1]).sum(0).reshape(7, 7, 7, -1)
    got = model.voxel_volume(views)
    assert 0 < int(valid.any(0).sum()) < len(p)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_voxel_grid_round_trips_through_the_contraction(norm):
    model = NeO360(tiny_config(grid=9, triplane_norm=norm))
    p, x = model.voxel_points()
    p, x = p.reshape(-1, 3), x.reshape(-1, 3)
    back = model.grid_coords(x)
    size = p.norm(dim=-1) if norm == "l2" else p.abs().amax(-1)
    inner = size < 0.97  # the outermost voxels (at infinity) are pulled in
    assert torch.allclose(back[inner], p[inner], atol=1e-5)
    assert (back.abs() <= 1.0).all()
    if norm == "linf":
        # the box fills the cube: only the outer shell is pulled in, the unit box (the
        # foreground) takes the inner half of each axis
        assert int((~inner).sum()) == 9 ** 3 - 7 ** 3
        unit_box = x.abs().amax(-1) <= 1.0 + 1e-6
        assert torch.equal(unit_box, p.abs().amax(-1) <= 0.5 + 1e-6)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_triplane_pooling_orientation(monkeypatch, norm):
    """Voxel features = their own grid position: each plane then holds its two coordinates
    where sample_triplanes reads them (xy: x, y; xz: x, z; yz: y, z)."""
    cfg = tiny_config(voxel_dim=3, refine_layers=0, grid=6, triplane_norm=norm)
    model = NeO360(cfg)
    C = cfg.feature_dim

    class PositionOut(torch.nn.Module):
        def forward(self, inp):
            p = inp[..., C:C + 3]  # posenc starts with the position itself
            return torch.cat((p, torch.zeros_like(p[..., :1])), -1)

    model.project = PositionOut()
    import reconstruction.neo360.model as neo_model

    def all_visible(views, pts):  # every voxel seen (the pooling, not the visibility)
        return torch.zeros(len(pts), C), torch.zeros(len(pts), dtype=torch.long), \
            torch.arange(len(pts))

    monkeypatch.setattr(neo_model, "sample_visible", all_visible)
    views, _, _ = _views(C=C)
    views.features = torch.rand(1, C, 12, 16)
    planes = model._triplanes(views)
    pts = torch.tensor([[[0.2, -0.6, 0.6], [-1.0, 0.2, -0.2]]])  # on voxel rows (grid 6)
    got = sample_triplanes(planes[None], pts, "concat")[0].reshape(2, 3, 3)
    for n in range(2):
        x, y, z = pts[0, n].tolist()
        assert got[n, 0, :2].tolist() == pytest.approx([x, y], abs=1e-5)  # xy plane
        assert got[n, 1, [0, 2]].tolist() == pytest.approx([x, z], abs=1e-5)  # xz plane
        assert got[n, 2, 1:].tolist() == pytest.approx([y, z], abs=1e-5)  # yz plane


def test_coarse_bins_split_at_the_unit_sphere():
    model = NeO360(tiny_config())
    o = torch.tensor([[0.0, -2.0, 0.3], [0.0, -2.0, 0.3]])
    d = torch.nn.functional.normalize(torch.tensor([[0.0, 1.0, -0.1], [1.0, 0.2, 0.5]]), dim=-1)
    rays = Rays(o, d, torch.ones(2))
    edges, split = model.coarse_edges(rays)
    c = model.config
    assert edges.shape == (2, c.num_fg + c.num_bg + 1)
    assert (edges[:, 1:] > edges[:, :-1]).all()
    assert edges[:, 0].tolist() == pytest.approx([c.near] * 2)
    assert edges[:, -1].tolist() == pytest.approx([c.far] * 2, rel=1e-4)  # float32
    _, t_out = intersect_sphere(o, d, 1.0)
    assert float(split[0]) == pytest.approx(float(t_out[0]))  # the ray through the sphere
    assert float(edges[0, c.num_fg]) == pytest.approx(float(t_out[0]))
    s = model.normalised_distance(edges, split)
    assert s[:, 0].tolist() == pytest.approx([0, 0], abs=1e-6)
    assert s[:, c.num_fg].tolist() == pytest.approx([0.5, 0.5])
    assert s[:, -1].tolist() == pytest.approx([1, 1], abs=1e-5)
    assert (s[:, 1:] > s[:, :-1]).all()


@pytest.mark.parametrize("options", [{}, {"use_pixel": False}, {"use_triplane": False},
                                     {"triplane_reduce": "concat", "plane_upsample": 2,
                                      "voxel_rgb": True}])
def test_gradients_reach_the_encoder(options):
    torch.manual_seed(0)
    model = NeO360(tiny_config(**options))
    images = torch.rand(2, 16, 16, 3)
    K = torch.tensor([[14.0, 0, 8], [0, 14.0, 8], [0, 0, 1]]).expand(2, 3, 3)
    import numpy as _np

    from geometry.se3 import look_at
    T = torch.stack([torch.from_numpy(look_at(_np.array(e), _np.zeros(3))).float()
                     for e in ([0.0, -2.0, 0.5], [2.0, 0.0, 0.5])])
    enc = model.encode(images, K, T)
    d = torch.nn.functional.normalize(-T[:, :3, 3], dim=-1)
    out = model.render_rays(enc, Rays(T[:, :3, 3], d, torch.ones(2)))
    out["rgb"].sum().backward()
    assert float(model.encoder.conv1.weight.grad.abs().sum()) > 0
    assert out["alpha"].max() <= 1.0 + 1e-6
    c = model.config
    assert enc.planes.shape == (3, c.voxel_dim, c.grid * c.plane_upsample,
                                c.grid * c.plane_upsample)
    if c.use_triplane:
        assert float(model.project[0].weight.grad.abs().sum()) > 0
        assert enc.views.images is None  # the colours are only for the voxel projection


def test_voxel_rgb_reads_the_source_colours():
    from reconstruction.neo360.model import sample_visible

    views, _, _ = _views(C=2)
    rgb = torch.rand(1, 3, 24, 32)
    pts = torch.randn(300, 3)
    f, vi, pi = sample_visible(views, pts)
    views.images = rgb
    g, vi2, pi2 = sample_visible(views, pts)
    colours, _ = sample_views(Views(rgb, views.K, views.T_cam_world, views.centres, 32, 24),
                              pts)
    assert torch.equal(vi, vi2) and torch.equal(pi, pi2) and len(vi) > 0
    assert torch.equal(g[:, :2], f)
    assert torch.allclose(g[:, 2:], colours[vi, pi], atol=1e-6)


def test_triplane_learning_rate_groups_split_the_parameters():
    from reconstruction.neo360.train import param_groups

    model = NeO360(tiny_config())
    groups = param_groups(model, 1e-3, 3.0)
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 3e-3])
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each once
    tri = {id(p) for p in groups[1]["params"]}
    assert id(model.project[0].weight) in tri and id(model.refine[0].weight) in tri
    assert id(model.encoder.conv1.weight) not in tri


def test_config_rejects_bad_triplane_options():
    for bad in ({"triplane_reduce": "max"}, {"plane_upsample": 0}, {"triplane_norm": "l1"}):
        with pytest.raises(UserError):
            tiny_config(**bad)


def test_training_fits_decreases_loss_checkpoints_and_resumes(outdoor_scenes, tmp_path):
    from reconstruction.neo360.data import make_batch
    from reconstruction.neo360.train import TrainOptions, evaluate, load_model, loss_terms, train

    torch.manual_seed(0)
    cfg = tiny_config()
    # overfitting one batch: the loss must fall
    model = NeO360(cfg)
    batch = make_batch(outdoor_scenes, np.random.default_rng(0), 3, 128)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        terms = loss_terms(model, batch, TrainOptions())
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(float(terms["mse"].detach()))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    # the training loop writes a checkpoint that loads back and resumes
    out = tmp_path / "ckpt"
    opts = TrainOptions(steps=4, num_rays=64, log_every=2, warmup_steps=0)
    trained, result = train(outdoor_scenes, cfg, opts, out, quiet=True)
    assert result.step == 4 and (out / "model.safetensors").is_file()
    loaded = load_model(out)
    for (k, a), (_, b) in zip(trained.state_dict().items(), loaded.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), k
    opts.steps = 6
    _, again = train(outdoor_scenes, cfg, opts, out, resume=True, quiet=True)
    assert again.step == 6
    score = evaluate(loaded, outdoor_scenes[:1], num_sources=3, num_targets=1)
    assert math.isfinite(score["psnr"]) and score["views"] == 1


def test_fit_renders_through_the_scene_model(outdoor_scenes, tmp_path):
    from PIL import Image

    from geometry.io.transforms_json import write_transforms_json
    from reconstruction.engine.config import FitConfig
    from reconstruction.methods import fit, get_method
    from reconstruction.neo360.config import NeO360Options
    from reconstruction.neo360.train import TrainOptions, train

    torch.manual_seed(0)
    cfg = tiny_config()
    ckpt = tmp_path / "ckpt"
    train(outdoor_scenes, cfg, TrainOptions(steps=2, num_rays=32, warmup_steps=0), ckpt,
          quiet=True)
    # three photos in a world frame: the field frame scaled up 3x and shifted
    scene = outdoor_scenes[0]
    src = [0, 2, 4]
    cams = scene.cameras[src].to(dtype=torch.float64)
    T = cams.T_world_cam.clone()
    shift = torch.tensor([5.0, -1.0, 2.0], dtype=torch.float64)
    T[:, :3, 3] = T[:, :3, 3] * 3.0 + shift
    from geometry.cameras import Cameras
    world = Cameras(K=cams.K, T_world_cam=T, width=cams.width, height=cams.height)
    images = tmp_path / "images"
    images.mkdir()
    names = []
    for k, v in enumerate(src):
        names.append(f"view_{k}.png")
        Image.fromarray((scene.images[v].numpy() * 255).round().astype(np.uint8)).save(
            images / names[-1])
    write_transforms_json(tmp_path / "transforms.json", world, file_paths=names)
    out = tmp_path / "out"
    config = FitConfig(images=images, out=out, method="neo360", poses=tmp_path / "transforms.json",
                       quiet=True, options=NeO360Options(checkpoint=ckpt, finetune_steps=2,
                                                         finetune_rays=32))
    metrics = fit(config)
    assert math.isfinite(metrics["training_psnr_db"]) and metrics["num_views"] == 3
    model = get_method("neo360").load(out, "cpu")
    assert model.scale == pytest.approx(1.0 / 3.0, rel=0.05)  # undoes the 3x
    # the recovered centre is the rig target (the field frame's origin) in the world frame
    assert torch.allclose(model.centre(), shift, atol=0.15)
    rendered = model.render(world[[1]])
    assert rendered.rgb.shape == (1, 24, 24, 3) and rendered.depth.shape == (1, 24, 24)
    # the world-frame render equals the network's field-frame render, depth scaled by 3
    from reconstruction.field.rays import camera_rays
    field = model.field
    frays = camera_rays(scene.cameras[[2]]).reshape(-1)
    with torch.no_grad():
        direct = field.render_rays(frays)
    assert torch.allclose(rendered.rgb.reshape(-1, 3), direct["rgb"].clamp(0, 1), atol=2e-3)
    z = direct["depth"] * frays.z_per_t * 3.0
    assert torch.allclose(rendered.depth.reshape(-1), z, rtol=0.02, atol=0.05)
    # recon view reads the folder: cameras and points sampled from the rendered depth
    from viewer.data import load_scene

    shown = load_scene(out)
    assert len(shown.cameras) == 3 and shown.points_world is not None


def test_fit_refuses_missing_checkpoint_and_poses(tmp_path):
    from reconstruction.neo360.cli import NeO360Train
    from reconstruction.neo360.config import NeO360Options
    from reconstruction.neo360.fit import check_inputs

    with pytest.raises(UserError, match="checkpoint"):
        check_inputs(NeO360Options(), [])
    with pytest.raises(UserError, match="--synthetic"):
        NeO360Train(out=tmp_path / "x").run()
    with pytest.raises(UserError, match="NeRDS360"):
        NeO360Train(out=tmp_path / "x", nerds360=tmp_path).run()  # no scene in it
    with pytest.raises(UserError, match="one of them"):
        NeO360Train(out=tmp_path / "x", nerds360=tmp_path, synthetic=True).run()
    from reconstruction.neo360.train import load_model
    with pytest.raises(UserError, match="checkpoint"):
        load_model(tmp_path)


def test_outdoor_scene_content_and_rig():
    from reconstruction.procedural.scene import SceneConfig, camera_poses, render

    config = SceneConfig(kind="outdoor", num_views=8, width=32, height=32, seed=4,
                         elevation_deg=10.0, supersample=1)
    scene = render(config)
    again = render(config)
    assert np.array_equal(scene.images, again.images)  # reproducible bit for bit
    world = scene.world
    assert len(world.objects) == 5 and len(world.buildings) == 10
    sky = scene.depth == 0
    assert sky[:, :4].mean() > 0.3  # low cameras: sky at the top of the images
    assert sky[:, -4:].mean() == 0  # ground at the bottom
    assert scene.masks.any() and not scene.masks.all()
    far = scene.depth > 6.0  # buildings / far ground are background
    assert far.any() and (scene.object_ids[far] == 0).all()
    # sky pixels: the gradient colour (bluish: blue above red)
    px = scene.images[sky].astype(float)
    assert (px[:, 2] > px[:, 0]).mean() > 0.9
    # a full circle: azimuths spaced by 45 degrees
    eye = camera_poses(config.resolved())[:, :3, 3]
    az = np.degrees(np.arctan2(eye[:, 1], eye[:, 0]))
    steps = np.diff(np.unwrap(np.radians(az)))
    assert np.degrees(steps) == pytest.approx([45.0] * 7, abs=1e-6)


def test_train_command_end_to_end(tmp_path, capsys):
    from reconstruction.neo360.cli import NeO360Eval, NeO360Train
    from reconstruction.neo360.data import SyntheticScenes
    from reconstruction.neo360.train import TrainOptions

    data = SyntheticScenes(num_scenes=1, views=4, size=16, supersample=1)
    cmd = NeO360Train(out=tmp_path / "ckpt", synthetic=True, quiet=True, eval_scenes=1,
                      model=tiny_config(), train=TrainOptions(steps=2, num_rays=16),
                      data=data)
    report = cmd.run()
    assert report["steps"] == 2 and math.isfinite(report["held_out"]["psnr"])
    assert "held-out PSNR" in capsys.readouterr().out
    # a non-empty folder that is no checkpoint is not replaced without --overwrite
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="overwrite"):
        NeO360Train(out=other, synthetic=True, quiet=True, model=tiny_config(),
                    train=TrainOptions(steps=1, num_rays=8), data=data).run()
    with pytest.raises(UserError, match="--device gpu is not a device"):
        NeO360Train(out=tmp_path / "new", synthetic=True, quiet=True, device="gpu",
                    model=tiny_config(), train=TrainOptions(steps=1, num_rays=8),
                    data=data).run()
    assert not (tmp_path / "new").exists()
    score = NeO360Eval(checkpoint=tmp_path / "ckpt", scenes=1,
                       data=SyntheticScenes(views=4, size=16, supersample=1, seed=7)).run()
    assert score["views"] == 1  # 4 views: 3 sources, 1 target


def test_nerds360_reader_converts_poses_once(outdoor_scenes, tmp_path):
    """A scene written in the NeRDS360 layout (Parallel Domain axes) reads back as the
    OpenCV cameras it came from; the training CLI and eval take the folder."""
    import json

    from PIL import Image

    from reconstruction.field.rays import camera_rays
    from reconstruction.neo360.cli import NeO360Eval, NeO360Train
    from reconstruction.neo360.data import SyntheticScenes
    from reconstruction.neo360.nerds360 import PD_TO_OPENCV, load_scene_views, read_split
    from reconstruction.neo360.train import TrainOptions

    src = outdoor_scenes[0]
    cams = src.cameras.to(dtype=torch.float64)
    centre = np.array([10.0, -3.0, 1.0])
    for split, views in (("train", range(0, 6)), ("val", range(4, 6))):
        (tmp_path / "s0" / split / "rgb").mkdir(parents=True)
        (tmp_path / "s0" / split / "pose").mkdir()
        transform = {}
        for v in views:
            T = cams.T_world_cam[v].numpy().copy()
            T[:3, 3] = T[:3, 3] * 4.0 + centre  # metres, another origin
            T[:3, :3] = T[:3, :3] @ PD_TO_OPENCV.T  # OpenCV -> Parallel Domain axes
            transform[f"{v:05d}"] = T.tolist()
            Image.fromarray((src.images[v].numpy() * 255).round().astype(np.uint8)).save(
                tmp_path / "s0" / split / "rgb" / f"{v:05d}.png")
        W = int(cams.width[0])
        pose = {"focal": float(cams.K[0, 0, 0]), "img_size": [W, W], "fov": 60.0,
                "obj_location": centre.tolist(), "transform": transform}
        (tmp_path / "s0" / split / "pose" / "pose.json").write_text(json.dumps(pose))
    split = read_split(tmp_path / "s0")
    assert [p.name for p in split.image_paths][:2] == ["00000.png", "00001.png"]
    back = split.cameras.T_world_cam.clone()
    back[:, :3, 3] = (back[:, :3, 3] - torch.from_numpy(centre)) / 4.0
    assert torch.allclose(back, cams.T_world_cam, atol=1e-6)
    assert torch.allclose(split.cameras.K, cams.K, atol=1e-6)
    views = load_scene_views(tmp_path / "s0", size=int(cams.width[0]))
    a = camera_rays(views.cameras[[3]])
    b = camera_rays(src.cameras[[3]])
    assert torch.allclose(a.directions, b.directions, atol=1e-5)
    assert torch.allclose(a.origins, b.origins, atol=1e-3)  # same field frame (radius 2)
    assert torch.allclose(views.images, src.images, atol=1 / 255)
    data = SyntheticScenes(size=16, views=5)
    NeO360Train(out=tmp_path / "ckpt", nerds360=tmp_path, quiet=True, model=tiny_config(),
                train=TrainOptions(steps=1, num_rays=8), data=data).run()
    score = NeO360Eval(checkpoint=tmp_path / "ckpt", nerds360=tmp_path / "s0", data=data).run()
    assert score["views"] == 2


def _tiny_lpips_file(tmp_path):
    """A tiny VGG-architecture LPIPS (random weights) saved as a full state dict."""
    from safetensors.torch import save_file

    from reconstruction.eval.lpips import LPIPS

    torch.manual_seed(3)
    net = LPIPS("vgg", widths=(4, 4, 8, 8, 8))
    for p in net.parameters():
        p.data.normal_(0.0, 0.3).abs_()  # positive heads: a distance that grows
    path = tmp_path / "lpips_tiny.safetensors"
    save_file({k: v.clone().contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_patch_batch_holds_whole_patches_of_target_views(outdoor_scenes):
    from reconstruction.neo360.data import make_patch_batch

    p = 8
    batch = make_patch_batch(outdoor_scenes, np.random.default_rng(5), 3, 3, p)
    assert batch.patch == p and len(batch.rgb) == 3 * p * p
    # which scene: the source images are its views
    scene = next(s for s in outdoor_scenes
                 if any(torch.equal(batch.images[0], im) for im in s.images))
    sources = [int(k) for k in range(len(scene.images))
               if any(torch.equal(scene.images[k], im) for im in batch.images)]
    centres = scene.cameras.centers
    origins = batch.rays.origins.reshape(3, p, p, 3)
    dirs = batch.rays.directions.reshape(3, p, p, 3)
    rgb = batch.rgb.reshape(3, p, p, 3)
    for k in range(3):
        view = int((centres - origins[k, 0, 0]).norm(dim=-1).argmin())
        assert view not in sources
        full = scene.rays(view)
        # the patch's top-left ray is the image's pixel (top, left)
        err = (full.directions - dirs[k, 0, 0]).norm(dim=-1)
        top, left = divmod(int(err.argmin()), err.shape[1])
        assert float(err.min()) < 1e-6
        assert torch.allclose(dirs[k], full.directions[top:top + p, left:left + p], atol=1e-6)
        assert torch.allclose(batch.rays.z_per_t.reshape(3, p, p)[k],
                              full.z_per_t[top:top + p, left:left + p], atol=1e-6)
        assert torch.equal(rgb[k], scene.images[view, top:top + p, left:left + p])
    with pytest.raises(ValueError, match="does not fit"):
        make_patch_batch(outdoor_scenes, np.random.default_rng(0), 3, 1, 64)


def test_lpips_stage_adds_the_patch_lpips_from_its_start(outdoor_scenes, tmp_path):
    from reconstruction.eval.lpips import load_lpips
    from reconstruction.neo360.data import make_patch_batch
    from reconstruction.neo360.train import TrainOptions, load_stage_lpips, loss_terms, train

    weights = _tiny_lpips_file(tmp_path)
    assert load_stage_lpips(TrainOptions()) is None  # no weights: no second stage
    opts = TrainOptions(lpips_weights=weights, patch_size=16, lpips_weight=0.5)
    lpips = load_stage_lpips(opts, (24, 24))
    with pytest.raises(UserError, match="too small"):
        load_stage_lpips(TrainOptions(lpips_weights=weights, patch_size=8), (24, 24))
    with pytest.raises(UserError, match="does not fit"):
        load_stage_lpips(TrainOptions(lpips_weights=weights, patch_size=32), (24, 24))
    with pytest.raises(UserError):
        load_stage_lpips(TrainOptions(lpips_weights=tmp_path / "missing.pth"), (24, 24))
    # the term: the LPIPS of the fine render's patches, weighted into the loss
    torch.manual_seed(0)
    model = NeO360(tiny_config())
    batch = make_patch_batch(outdoor_scenes, np.random.default_rng(1), 3, 2, 16)
    terms = loss_terms(model, batch, opts, torch.Generator().manual_seed(7), lpips)
    enc = model.encode(batch.images, batch.K, batch.T_world_cam)
    out = model.render_rays(enc, batch.rays, perturb=True,
                            generator=torch.Generator().manual_seed(7))
    reference = load_lpips(weights)(out["rgb"].reshape(2, 16, 16, 3),
                                    batch.rgb.reshape(2, 16, 16, 3)).mean()
    assert float(reference.detach()) > 0
    assert torch.allclose(terms["lpips"], reference, rtol=1e-5)
    plain = loss_terms(model, batch, opts, torch.Generator().manual_seed(7))
    assert "lpips" not in plain
    assert torch.allclose(terms["loss"], plain["loss"] + 0.5 * reference, rtol=1e-5)
    # training: random rays before lpips_start, patches with the LPIPS term from it on
    opts = TrainOptions(steps=4, num_rays=300, log_every=1, warmup_steps=0,
                        lpips_weights=weights, patch_size=16, lpips_start=2)
    _, result = train(outdoor_scenes, tiny_config(), opts, None, quiet=True)
    assert [("lpips" in row) for row in result.history] == [False, False, True, True]
    assert all(math.isfinite(row["loss"]) for row in result.history)


def test_train_command_refuses_bad_lpips_options_before_writing(tmp_path):
    from reconstruction.neo360.cli import NeO360Train
    from reconstruction.neo360.data import SyntheticScenes
    from reconstruction.neo360.train import TrainOptions

    data = SyntheticScenes(num_scenes=1, views=4, size=16, supersample=1)
    weights = _tiny_lpips_file(tmp_path)
    for bad, match in (({"lpips_weights": tmp_path / "none.pth"}, "none.pth"),
                       ({"lpips_weights": weights, "patch_size": 24}, "does not fit"),
                       ({"lpips_weights": weights, "lpips_weight": -1.0}, "negative")):
        out = tmp_path / "ckpt"
        with pytest.raises(UserError, match=match):
            NeO360Train(out=out, synthetic=True, quiet=True, model=tiny_config(),
                        train=TrainOptions(steps=1, num_rays=8, **bad), data=data).run()
        assert not out.exists()


def test_pixel_regions_follow_the_scene_geometry():
    """Sky where nothing is hit, the objects inside the unit sphere (the foreground
    decoders' region) and the buildings beyond it, from the generator's depth in field
    units."""
    from reconstruction.neo360.data import (
        RIG_TARGET,
        SyntheticScenes,
        generate_scenes,
        pixel_regions,
    )
    from reconstruction.procedural.scene import SceneConfig, render

    opts = SyntheticScenes(num_scenes=1, views=4, size=32, seed=4, supersample=1)
    scene = generate_scenes(opts)[0]
    ref = render(SceneConfig(kind="outdoor", num_views=4, width=32, height=32, seed=4,
                             elevation_deg=opts.elevation_deg, supersample=1))
    scale = 2.0 / ref.config.radius
    assert torch.allclose(scene.depth, torch.from_numpy(ref.depth) * scale)
    for v in range(4):
        labels = pixel_regions(scene, v).numpy()
        assert (labels == 0).tolist() == (ref.depth[v] == 0).tolist()
        assert (labels[ref.object_ids[v] > 0] == 1).all()  # every object pixel: foreground
        # buildings and the far ground (over 6 m away): background
        far = ref.depth[v] > 6.0
        assert far.any() and (labels[far] == 2).all()
        # the label agrees with the hit point's distance from the target in metres
        hit_m = _hit_points_m(ref, v)
        inside = np.linalg.norm(hit_m - np.array(RIG_TARGET), axis=-1) < 1.0 / scale
        hits = ref.depth[v] > 0
        assert ((labels == 1) == (inside & hits)).mean() > 0.99  # (float32 at the sphere)
    plain = scene.__class__(scene.images, scene.cameras, scene.name)  # no depth
    with pytest.raises(ValueError, match="no depth"):
        pixel_regions(plain, 0)


def _hit_points_m(ref, v):
    from reconstruction.field.rays import camera_rays

    rays = camera_rays(ref.cameras[[v]].to(dtype=torch.float64)).reshape(32, 32)
    t = torch.from_numpy(ref.depth[v]).double() / rays.z_per_t
    return (rays.origins + t[..., None] * rays.directions).numpy()


def test_evaluate_splits_the_error_by_region(outdoor_scenes):
    from reconstruction.neo360.data import REGIONS, pixel_regions
    from reconstruction.neo360.train import evaluate, evaluation_views

    torch.manual_seed(0)
    model = NeO360(tiny_config())
    score = evaluate(model, outdoor_scenes, num_sources=3, num_targets=1)
    regions = score["regions"]
    assert set(regions) <= set(REGIONS) and len(regions) >= 2
    assert sum(r["pixels"] for r in regions.values()) == pytest.approx(1.0)
    assert sum(r["error"] for r in regions.values()) == pytest.approx(1.0)
    # recompute one region's PSNR by hand from the same renders
    sse, count = 0.0, 0
    for k, scene in enumerate(outdoor_scenes):
        src = evaluation_views(scene, k, 3, 0)
        t = [v for v in range(len(scene.images)) if v not in src][0]
        cams = scene.cameras[src]
        with torch.no_grad():
            enc = model.encode(scene.images[src], cams.K, cams.T_world_cam)
            rgb = model.render_rays(enc, scene.rays(t).reshape(-1))["rgb"].clamp(0, 1)
        err = ((rgb.double() - scene.images[t].reshape(-1, 3).double()) ** 2).mean(-1)
        sel = pixel_regions(scene, t).reshape(-1) == 2
        sse, count = sse + float(err[sel].sum()), count + int(sel.sum())
    assert regions["background"]["psnr"] == pytest.approx(10 * math.log10(count / sse),
                                                          rel=1e-6)
    # without depth maps there is no split
    plain = [s.__class__(s.images, s.cameras, s.name) for s in outdoor_scenes]
    assert "regions" not in evaluate(model, plain, num_sources=3, num_targets=1)



def _reprojected_colour_error(scene, i: int, j: int) -> float:
    """Median colour difference between view j's surface pixels and where their depth and
    the cameras put them in view i."""
    from reconstruction.field.rays import camera_rays

    rays = camera_rays(scene.cameras[[j]]).reshape(*scene.images.shape[1:3])
    z = scene.depth[j]
    ok = z > 0
    x = rays.origins[ok] + (z[ok] / rays.z_per_t[ok])[:, None] * rays.directions[ok]
    T_cam_world = torch.linalg.inv(scene.cameras.T_world_cam[i])
    xc = x @ T_cam_world[:3, :3].T + T_cam_world[:3, 3]
    uv = xc @ scene.cameras.K[i].T
    u, v = (uv[:, 0] / uv[:, 2]).floor().long(), (uv[:, 1] / uv[:, 2]).floor().long()
    H, W = z.shape
    inside = (xc[:, 2] > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
    diff = scene.images[i][v[inside], u[inside]] - scene.images[j][ok][inside]
    return float(diff.abs().sum(-1).median())


def test_augmented_scene_is_the_same_scene_in_another_frame(outdoor_scenes) -> None:
    # A random yaw and a left-right mirror: the flipped views stay consistent with the moved
    # cameras (each surface pixel of view 1, moved by its depth into view 0, lands on its
    # colour), the up axis stays z, and the mirror is drawn about half the time.
    from reconstruction.neo360.data import augment_scene

    scene = outdoor_scenes[0]
    W = scene.images.shape[2]
    assert float(scene.cameras.K[0, 0, 2]) == pytest.approx(W / 2)  # the flip: about cx
    base = _reprojected_colour_error(scene, 0, 1)
    rng = np.random.default_rng(0)
    mirrored = 0
    for _ in range(6):
        moved = augment_scene(scene, rng)
        flipped = not torch.equal(moved.images, scene.images)
        mirrored += flipped
        assert _reprojected_colour_error(moved, 0, 1) == pytest.approx(base, abs=0.02)
        # the cameras' heights and their distances from the centre are kept
        t0, t1 = scene.cameras.T_world_cam[:, :3, 3], moved.cameras.T_world_cam[:, :3, 3]
        assert torch.allclose(t0[:, 2], t1[:, 2], atol=1e-5)
        assert torch.allclose(t0.norm(dim=-1), t1.norm(dim=-1), atol=1e-5)
        assert torch.linalg.det(moved.cameras.T_world_cam[:, :3, :3]).allclose(
            torch.ones(len(scene.images)), atol=1e-5)
        if flipped:  # flipped images with unmirrored cameras are not consistent
            from reconstruction.neo360.data import SceneViews

            wrong = SceneViews(moved.images, scene.cameras, depth=moved.depth)
            assert _reprojected_colour_error(wrong, 0, 1) > base + 0.1
    assert 0 < mirrored < 6
