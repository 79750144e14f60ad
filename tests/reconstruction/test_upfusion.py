"""UpSRT / UpFusion: rays and encodings against hand values, the set-latent model's symmetry,
the official key mapping, training (overfitting one scene), checkpoints, the method pieces."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geometry.cameras import Cameras
from geometry.errors import UserError
from reconstruction.upfusion import rays as R
from reconstruction.upfusion.upsrt import UpSRT, preset

torch.set_num_threads(1)


def _camera(T_world_cam, f=10.0, size=8):
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], dtype=torch.float64)
    return Cameras(K=K[None], T_world_cam=torch.as_tensor(T_world_cam, dtype=torch.float64)[None],
                   width=size, height=size)


FIRST = torch.tensor([[-1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, 1, -1], [0, 0, 0, 1]],
                     dtype=torch.float64)


# ---------------------------------------------------------------------- rays


def test_plucker_of_known_rays():
    o = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    d = torch.tensor([[0.0, 0.0, 2.0], [3.0, 0.0, 0.0]])
    p = R.plucker(o, d)
    # d normalised; moment o x d: (1,0,0)x(0,0,1) = (0,-1,0); (0,2,0)x(1,0,0) = (0,0,-2)
    assert torch.allclose(p, torch.tensor([[0.0, 0, 1, 0, -1, 0], [1.0, 0, 0, 0, 0, -2]]))
    # any point on the ray gives the same coordinates
    assert torch.allclose(R.plucker(o + 5 * d, d), p, atol=1e-5)


def test_reference_frame_of_first_camera_is_identity_and_scales_distance():
    assert torch.allclose(R.reference_frame(_camera(FIRST), torch.zeros(3)),
                          torch.eye(4, dtype=torch.float64), atol=1e-12)
    # the same camera twice as far from the centre: distances are halved
    far = FIRST.clone()
    far[2, 3] = -2.0
    T = R.reference_frame(_camera(far), torch.zeros(3))
    centre_ref = T[:3, :3] @ far[:3, 3] + T[:3, 3]
    assert torch.allclose(centre_ref, torch.tensor([0.0, 0, -1], dtype=torch.float64))
    assert torch.allclose(T[:3, :3] @ torch.tensor([0.0, 0, 1], dtype=torch.float64),
                          torch.tensor([0.0, 0, 0.5], dtype=torch.float64))


def test_query_rays_of_known_cameras():
    # first camera, principal-point pixel: along +z from (0, 0, -1), moment 0
    uv = torch.tensor([[4.0, 4.0], [14.0, 4.0]], dtype=torch.float64)
    rays = R.query_rays(_camera(FIRST), torch.eye(4, dtype=torch.float64), uv)[0]
    assert torch.allclose(rays[0], torch.tensor([0.0, 0, 1, 0, 0, 0], dtype=torch.float64))
    # 10 px right of the centre (f = 10): OpenCV x = 1 -> reference -x (x points left)
    d = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64) / math.sqrt(2)
    m = torch.linalg.cross(torch.tensor([0.0, 0, -1], dtype=torch.float64), d)
    assert torch.allclose(rays[1], torch.cat((d, m)), atol=1e-12)
    # a camera on +x of the reference frame looking at the origin: centre ray (-1, 0, 0)
    from geometry.se3 import look_at

    side = torch.from_numpy(look_at(np.array([1.0, 0, 0]), np.zeros(3), up=(0.0, 1.0, 0.0)))
    ray = R.query_rays(_camera(side), torch.eye(4, dtype=torch.float64), uv[:1])[0, 0]
    assert torch.allclose(ray, torch.tensor([-1.0, 0, 0, 0, 0, 0], dtype=torch.float64),
                          atol=1e-12)


def test_input_patch_rays_are_identity_camera_corner_rays():
    K = torch.tensor([[[20.0, 0, 16], [0, 20.0, 16], [0, 0, 1]]], dtype=torch.float64)
    rays = R.input_patch_rays(K, 32, 32, 4, 4)  # [1, 16, 6]
    # patch (row 0, col 0): top-left corner pixel (0, 0); patch (1, 2): pixel (16, 8)
    for index, (u, v) in ((0, (0.0, 0.0)), (6, (16.0, 8.0))):
        d = torch.tensor([(16 - u) / 20, (16 - v) / 20, 1.0], dtype=torch.float64)
        assert torch.allclose(rays[0, index, :3], d / d.norm())
    assert torch.all(rays[..., 3:] == 0)  # origins at 0: no moment


def test_harmonic_encoding_is_the_official_layout():
    x = torch.tensor([[0.3, -0.7]])
    enc = R.harmonic(x, num_freqs=3, start_freq=-1)
    # official: cat([sin(x * f) for f] + [cos(x * f) for f]), f = 2^k * pi, k = -1, 0, 1
    bands = [0.5 * math.pi, math.pi, 2 * math.pi]
    ref = torch.cat([torch.sin(x * f) for f in bands] + [torch.cos(x * f) for f in bands], -1)
    assert torch.allclose(enc, ref)


def test_patch_and_camera_ids():
    ids = R.camera_id_encoding(3, 2, num_freqs=1, start_freq=0)  # sin(pi x), cos(pi x)
    first = 1 / 3 + 0.05
    other = 2 / 3 + 0.05
    assert torch.allclose(ids[0, 0], torch.tensor([math.sin(math.pi * first),
                                                   math.cos(math.pi * first)]))
    assert torch.allclose(ids[2, 1], torch.tensor([math.sin(math.pi * other),
                                                   math.cos(math.pi * other)]))
    patches = R.patch_id_encoding(1, 4, num_freqs=1, start_freq=0)
    assert torch.allclose(patches[0, :, 0], torch.sin(math.pi * torch.tensor([0.25, 0.5, 0.75,
                                                                              1.0])), atol=1e-6)


# ---------------------------------------------------------------------- the model


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return UpSRT(preset("test", **overrides)).eval()


def _inputs(v=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(1, v, size, size, 3, generator=g)
    K = torch.tensor([[20.0, 0, size / 2], [0, 20.0, size / 2], [0, 0, 1]]).expand(1, v, 3, 3)
    rays = R.plucker(torch.randn(1, 50, 3, generator=g), torch.randn(1, 50, 3, generator=g))
    return images, K, rays


def test_outputs_do_not_depend_on_the_order_of_the_other_views():
    model = _model()
    images, K, rays = _inputs(v=4)
    p = model.config.num_patches
    with torch.no_grad():
        slt = model.encode(images, K, (16, 16))
        order = [0, 3, 1, 2]
        swapped = model.encode(images[:, order], K, (16, 16))
        # a set: the tokens of views 2..V are permuted with them, nothing else changes
        by_view = slt.reshape(1, 4, p, -1)
        assert torch.allclose(swapped.reshape(1, 4, p, -1), by_view[:, order], atol=1e-5)
        assert torch.allclose(model.decode(swapped, rays), model.decode(slt, rays), atol=1e-6)
        # the first view is the reference: making view 1 the first changes its tokens
        new_first = model.encode(images[:, [1, 0, 2, 3]], K, (16, 16)).reshape(1, 4, p, -1)
        change = (new_first[:, 0] - by_view[:, 1]).abs().max() / by_view.abs().max()
        assert change > 1e-2
        assert torch.all((model.decode(slt, rays) > 0) & (model.decode(slt, rays) < 1))


def test_decoding_in_chunks_equals_one_chunk():
    images, K, rays = _inputs()
    model = _model()
    small = _model(num_pixel_queries=7)
    small.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(model(images, K, (16, 16), rays), small(images, K, (16, 16), rays),
                              atol=1e-6)


def test_query_features_are_the_rgb_mlp_input():
    images, K, rays = _inputs()
    model = _model()
    with torch.no_grad():
        slt = model.encode(images, K, (16, 16))
        feats = model.decode(slt, rays, "features")
        assert feats.shape == (1, 50, model.config.transformer_dim)
        assert torch.allclose(model.ray_decoder.rgb_mlp(feats), model.decode(slt, rays))


def test_key_features_are_the_keys_of_the_chosen_block():
    model = _model()
    enc = model.encoder
    x = torch.randn(2, 3, 32, 32)
    tokens = enc.vit.prepare_tokens(x)
    tokens = enc.vit.blocks[0](tokens)
    block = enc.vit.blocks[1]
    qkv = torch.nn.functional.linear(block.norm1(tokens), block.attn.qkv.weight,
                                     block.attn.qkv.bias)
    dim = qkv.shape[-1] // 3
    assert torch.allclose(enc(x), qkv[:, 1:, dim:2 * dim], atol=1e-6)


# ---------------------------------------------------------------------- official weights


def test_official_upsrt_and_dinov2_key_lists_fill_every_parameter():
    from reconstruction.upfusion.official import convert_official_upsrt, read_key_list

    with torch.device("meta"):
        model = UpSRT(preset("official"))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    upsrt, dino = read_key_list("upsrt"), read_key_list("dinov2_vitb14")
    fake = {k: torch.empty(s, device="meta") for k, s in upsrt.items()}
    fake_dino = {k: torch.empty(s, device="meta") for k, s in dino.items()}
    state, skipped = convert_official_upsrt({"model_state_dict": {f"module.{k}": v
                                                                  for k, v in fake.items()}},
                                            fake_dino)
    assert set(state) == set(ours)  # every official key used, every parameter filled
    assert all(tuple(state[k].shape) == ours[k] for k in ours)
    # what is skipped is exactly what never runs: blocks after 8, block 8 past its qkv,
    # the final norm and the mask token
    assert "blocks.8.attn.qkv.weight" not in skipped and "blocks.7.mlp.fc2.bias" not in skipped
    assert {"norm.weight", "mask_token", "blocks.11.attn.qkv.weight", "blocks.8.mlp.fc1.weight",
            "blocks.8.attn.proj.weight"} <= set(skipped)
    assert len(skipped) == 3 * 14 + 10 + 3  # 3 whole blocks, 10 of block 8, norm (2), mask


def test_official_layout_numbers():
    config = preset("official")
    assert config.num_patches == 256  # 224 / 14 squared, official 16 x 16
    assert config.encoder_dim + config.ray_dim + 4 * config.num_freqs == 1008
    assert config.ray_dim == 180


def test_wrong_weights_are_one_sentence():
    from reconstruction.upfusion.official import check_and_load

    model = _model()
    state = model.state_dict()
    state.pop("linear_scene.bias")
    with pytest.raises(UserError, match="1 missing"):
        check_and_load(model, state, "weights.pt")


# ---------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def scene():
    from reconstruction.upfusion.data import synthetic_sequence

    return synthetic_sequence(seed=5, num_views=8, size=16, supersample=1)


def test_synthetic_sequence_is_an_object_on_white(scene):
    assert scene.images.shape == (8, 16, 16, 3)
    assert 0.02 < scene.masks.float().mean() < 0.8
    assert torch.all(scene.images[~scene.masks] == 1.0)
    # the reference frame puts the first camera at (0, 0, -1)
    from reconstruction.upfusion.data import view_set

    views = view_set(scene, [0, 3])
    c = views.cameras.T_world_cam[0, :3, 3]
    T = views.T_ref_world
    assert torch.allclose(T[:3, :3] @ c + T[:3, 3], torch.tensor([0.0, 0, -1],
                                                                 dtype=torch.float64), atol=1e-9)


def test_overfitting_one_scene_drives_the_loss_down(scene):
    from reconstruction.upfusion.data import sample_batch
    from reconstruction.upfusion.train import upsrt_loss

    model = _model(seed=1).train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    fixed = sample_batch([scene], 2, 2, 128, torch.Generator().manual_seed(0))
    with torch.no_grad():
        start = float(upsrt_loss(model, fixed)["loss"])
    for _ in range(80):
        loss = upsrt_loss(model, fixed)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = float(upsrt_loss(model, fixed)["loss"])
    # measured: 0.209 -> 0.030 (7x); 4x leaves room for thread-count differences
    assert end < start / 4, (start, end)


def test_train_checkpoint_resume_and_load(tmp_path, scene):
    from reconstruction.upfusion import train as T

    options = T.UpSRTTrainOptions(steps=3, batch_size=1, queries=16, views="1-2", scenes=2,
                                  frames=4, size=16, warmup_steps=0)
    out = tmp_path / "ckpt"
    model, result = T.run_train(out, True, None, preset("test"), options, quiet=True)
    assert result.step == 3 and (out / "model.safetensors").is_file()
    loaded = T.load_upsrt(out)
    images, K, rays = _inputs()
    with torch.no_grad():
        assert torch.allclose(loaded(images, K, (16, 16), rays), model(images, K, (16, 16), rays))
    options.steps = 5
    _, again = T.run_train(out, True, None, preset("test"), options, resume=True, quiet=True)
    assert again.step == 5
    with pytest.raises(UserError, match="holds a checkpoint"):
        T.run_train(out, True, None, preset("test"), options, quiet=True)
    # --overwrite replaces a checkpoint, never a folder of something else (or a file)
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.png").write_bytes(b"x")
    with pytest.raises(UserError, match="not a checkpoint"):
        T.run_train(other, True, None, preset("test"), options, overwrite=True, quiet=True)
    assert sorted(p.name for p in other.iterdir()) == ["a.png"]
    with pytest.raises(UserError):
        T.run_train(other / "a.png", True, None, preset("test"), options, quiet=True)
    with pytest.raises(UserError, match="exactly one"):
        T.run_train(tmp_path / "x", False, None, preset("test"), options, quiet=True)
    with pytest.raises(UserError, match="view count"):
        T.parse_views("6-1")
    with pytest.raises(UserError, match="not an upsrt checkpoint"):
        T.load_upsrt(tmp_path)


def test_foreground_queries_land_on_the_object(scene):
    """A foreground fraction of the query pixels is drawn on the object's mask: their
    colours are the object's, not the white background's; the rest stays uniform."""
    from reconstruction.upfusion.data import sample_batch

    gen = torch.Generator().manual_seed(0)
    batch = sample_batch([scene], 4, 2, 200, gen, foreground_fraction=0.5)
    on_object = (batch.colours < 1.0).any(-1)  # [4, 200]
    assert on_object[:, :100].all()
    uniform = on_object[:, 100:].float().mean()
    assert abs(float(uniform) - float(scene.masks.float().mean())) < 0.12
    plain = sample_batch([scene], 4, 2, 200, torch.Generator().manual_seed(0))
    assert (plain.colours < 1.0).any(-1).float().mean() < 0.6


def test_evaluation_views_are_nested_and_held_out():
    from reconstruction.upfusion.train import heldout_indices, input_indices

    six = input_indices(24, 6)
    assert input_indices(24, 1) == [0] and set(input_indices(24, 3)) <= set(six)
    assert input_indices(24, 3) == [0, 8, 16]
    assert not set(heldout_indices(24)) & set(six)
    assert len(heldout_indices(24)) == 18 and heldout_indices(24)[:4] == [1, 2, 3, 5]


# ---------------------------------------------------------------------- UpFusion pieces


def test_distillation_schedule_is_high_noise_first():
    from reconstruction.upfusion.method import UpFusionTimesteps

    sampler = UpFusionTimesteps(30, bootstrap_fraction=0.1)
    g = torch.Generator().manual_seed(0)
    early = sampler.indices(2000, 0.05, g)
    late = sampler.indices(2000, 0.5, g)
    assert early.min() >= 25 and early.max() <= 28  # official t_start = 25, t_end = 29
    assert late.min() == 1 and late.max() == 28
    assert torch.allclose(sampler.fraction(1, 0.0, torch.Generator().manual_seed(1)) * 30,
                          sampler.indices(1, 0.0, torch.Generator().manual_seed(1)).double())


def test_pose_search_finds_the_viewpoint_of_a_consistent_renderer():
    """With a renderer that is exact (the procedural world seen from the reference frame),
    the search places each photo at its grid viewpoint."""
    from reconstruction.upfusion.config import UpFusionOptions
    from reconstruction.upfusion.data import object_cluster_world, render_sequence
    from reconstruction.upfusion.method import T_WORLD_FIRST, search_poses, sphere_candidates

    world = object_cluster_world(3)
    centre = torch.tensor([0.0, 0.0, 0.3], dtype=torch.float64)
    # reference frame -> procedural world: the first camera 2.5 m from the centre
    M = torch.eye(4, dtype=torch.float64)
    M[:3, :3] = 2.5 * torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=torch.float64)
    M[:3, 3] = centre

    class Exact:
        def encode_views(self, views):
            return None

        def render(self, views, cams, slt=None):
            T = cams.T_world_cam.clone()
            T = M @ T
            T[:, :3, :3] /= 2.5
            c = Cameras(K=cams.K, T_world_cam=T, width=cams.width, height=cams.height)
            return render_sequence(world, c, supersample=1)[0]

    options = UpFusionOptions(search_size=16, search_azimuths=8,
                              search_elevations=(0.0, 30.0))
    grid = sphere_candidates(8, (0.0, 30.0))
    truth = torch.stack([T_WORLD_FIRST, grid[3], grid[8 + 5]])
    f = 0.5 * 16 / math.tan(math.radians(22.5))
    K = torch.tensor([[f, 0, 8], [0, f, 8], [0, 0, 1]], dtype=torch.float64).expand(3, 3, 3)
    T = M @ truth
    T[:, :3, :3] /= 2.5
    photos = render_sequence(world, Cameras(K=K, T_world_cam=T, width=16, height=16), 1)[0]
    found = search_poses(Exact(), photos, K, options)
    assert torch.allclose(found, truth, atol=1e-9)

    class ExactPosed(Exact):
        """A posed model (input_rays="relative"): encodes only the views placed so far."""

        config = preset("test", input_rays="relative")
        encoded: list = []

        def encode_views(self, views):
            self.encoded.append(views.cameras.T_world_cam.clone())

    posed = ExactPosed()
    assert torch.allclose(search_poses(posed, photos, K, options), truth, atol=1e-9)
    assert [len(T) for T in posed.encoded] == [3, 1, 2]  # all (unused), then those placed
    assert torch.allclose(posed.encoded[2], truth[:2], atol=1e-9)


def test_visual_hull_keeps_the_object():
    from reconstruction.upfusion.data import synthetic_sequence
    from reconstruction.upfusion.method import visual_hull

    seq = synthetic_sequence(seed=2, num_views=6, size=24, supersample=1)
    pts, cols = visual_hull(seq.images, seq.cameras.K, seq.cameras.T_world_cam, count=4000,
                            radius=1.2, centre=seq.centre)
    assert 100 <= len(pts) < 4000
    # every kept point projects onto the object mask in every view that sees it
    T_cam_world = torch.linalg.inv(seq.cameras.T_world_cam)
    p = torch.from_numpy(pts)
    for k in range(6):
        pc = p @ T_cam_world[k, :3, :3].T + T_cam_world[k, :3, 3]
        uv = pc @ seq.cameras.K[k].T
        u, v = (uv[:, 0] / uv[:, 2]).long(), (uv[:, 1] / uv[:, 2]).long()
        inside = (u >= 0) & (u < 24) & (v >= 0) & (v < 24)
        on = seq.masks[k][v[inside], u[inside]]
        assert on.float().mean() > 0.97
    assert cols.min() >= 0 and cols.max() <= 1


def test_upsrt_denoiser_renders_at_the_novel_camera(scene):
    from reconstruction.generative.sds import NovelCameras
    from reconstruction.upfusion.data import view_set
    from reconstruction.upfusion.method import UpSRTDenoiser

    model = _model()
    views = view_set(scene, [0, 2])
    denoiser = UpSRTDenoiser(model, views, views.T_ref_world)
    cams = scene.cameras[[4]]
    novel = NovelCameras(torch.linalg.inv(cams.T_world_cam).float(), cams.K.float(), 16, 16)
    out = denoiser(torch.zeros(1, 16, 16, 3), novel, torch.tensor([0.5]),
                   torch.Generator())
    assert torch.allclose(out, model.render(views, cams), atol=1e-5)


def test_recon_fit_method_upfusion_end_to_end(tmp_path):
    """``recon fit --method upfusion`` on two generated photos with a tiny random UpSRT:
    the poses are searched, the splats distilled, the outputs written."""
    import json

    from geometry.io.images import write_png
    from geometry.training import save_checkpoint
    from reconstruction.engine.config import FitConfig
    from reconstruction.methods import fit
    from reconstruction.upfusion.config import UpFusionOptions
    from reconstruction.upfusion.data import synthetic_sequence
    from reconstruction.upfusion.train import KIND

    model = _model()
    save_checkpoint(tmp_path / "upsrt", model, KIND, model.config.to_json())
    seq = synthetic_sequence(seed=9, num_views=4, size=32, supersample=1)
    photos = tmp_path / "photos"
    photos.mkdir()
    for k in (0, 2):
        write_png(photos / f"{k:03d}.png", seq.images[k])
    options = UpFusionOptions(upsrt=tmp_path / "upsrt", fov_deg=45.0, render_size=32,
                              search_azimuths=8, search_elevations=(0.0, 30.0), search_size=16)
    config = FitConfig(images=photos, out=tmp_path / "out", iterations=12, method="upfusion",
                       options=options, threads=1, quiet=True)
    metrics = fit(config)
    out = tmp_path / "out"
    assert (out / "splats.ply").is_file() and (out / "transforms.json").is_file()
    assert metrics["num_gaussians"] > 100
    frames = json.loads((out / "transforms.json").read_text())["frames"]
    assert len(frames) == 2
    with pytest.raises(UserError, match="needs an UpSRT"):
        fit(FitConfig(images=photos, out=tmp_path / "out2", method="upfusion",
                      options=UpFusionOptions(), threads=1, quiet=True))
    # one photo (min_images=1): the first camera of the reference frame, nothing searched
    (photos / "002.png").unlink()
    metrics = fit(FitConfig(images=photos, out=tmp_path / "one", iterations=12,
                            method="upfusion", options=options, threads=1, quiet=True))
    assert (tmp_path / "one" / "splats.ply").is_file() and metrics["num_gaussians"] > 100


def test_co3d_sequences_crop_to_square_and_keep_the_rays(tmp_path):
    """A CO3D-style folder (gt_cameras.npz in PyTorch3D NDC + frames): photos centre-cropped
    and resized, intrinsics following, the object centre from the optical axes."""
    from geometry.conventions import opencv_to_pytorch3d
    from geometry.io.images import write_png
    from reconstruction.upfusion.data import co3d_sequences, ring_cameras

    cams = ring_cameras(5, 32, seed=1, centre=(0.0, 0.0, 0.3))
    # 48 x 32 frames: the cameras widened by 8 px on each side
    K = cams.K.clone()
    K[:, 0, 2] += 8
    T = cams.T_world_cam
    R_, T_, focal, pp = opencv_to_pytorch3d(K, T, torch.tensor([[32.0, 48.0]]).expand(5, 2))
    seq_dir = tmp_path / "apple" / "seq1"
    seq_dir.mkdir(parents=True)
    np.savez(seq_dir / "gt_cameras.npz", gtR=R_.numpy(), gtT=T_.numpy(), gtFL=focal.numpy(),
             gtPP=pp.numpy())
    for k in range(5):
        image = torch.zeros(32, 48, 3)
        image[:, 8:40] = k / 5.0
        write_png(seq_dir / f"frame{k:06d}.png", image)
    seqs = co3d_sequences(tmp_path, size=16, max_frames=5)
    assert len(seqs) == 1 and seqs[0].images.shape == (5, 16, 16, 3)
    expected = cams.K[0].clone()
    expected[:2] /= 2  # 32 px crop -> 16 px
    assert torch.allclose(seqs[0].cameras.K[0], expected, atol=1e-6)
    assert torch.allclose(seqs[0].centre, torch.tensor([0.0, 0.0, 0.3], dtype=torch.float64),
                          atol=1e-6)
    assert abs(float(seqs[0].images[3].mean()) - 0.6) < 0.01
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no CO3D sequence"):
        co3d_sequences(tmp_path / "empty", size=16)
