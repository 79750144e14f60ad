"""The splatting API (native CPU compositing) against the pure-PyTorch reference and against
closed forms. The compositing op alone is tested in tests/geometry/test_ops_rasterize.py."""

from __future__ import annotations

import math

import pytest
import torch

from geometry.ops.rasterize import rasterize_to_pixels_native
from reconstruction.splatting import rasterization, sh_to_color
from reconstruction.splatting.rasterization import rasterization_reference
from reconstruction.splatting.sh import sh_basis

# float32 tolerances: the native kernel accumulates in the same order as the reference,
# so forward values agree to a few ulps of the largest term; gradients sum many terms in
# a different order (per tile vs. autograd's matrix products), so they get a relative
# tolerance of 1e-4 of the gradient's scale.
FWD_ATOL = 1e-5
GRAD_RTOL = 1e-4


def make_scene(n=200, cameras=2, width=40, height=30, dtype=torch.float32, seed=0, channels=3,
               sh_degree=None):
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=gen, dtype=dtype) * 0.7
    quats = torch.randn(n, 4, generator=gen, dtype=dtype)
    scales = torch.rand(n, 3, generator=gen, dtype=dtype) * 0.12 + 0.02
    opacities = torch.rand(n, generator=gen, dtype=dtype) * 0.9 + 0.05
    if sh_degree is None:
        colors = torch.rand(n, channels, generator=gen, dtype=dtype)
    else:
        colors = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=gen, dtype=dtype) * 0.3
    viewmats = torch.eye(4, dtype=dtype).repeat(cameras, 1, 1)
    viewmats[:, 2, 3] = 4.0
    viewmats[:, 0, 3] = torch.linspace(-0.4, 0.4, cameras, dtype=dtype)
    angle = torch.linspace(-0.2, 0.2, cameras, dtype=dtype)
    viewmats[:, 0, 0] = torch.cos(angle)
    viewmats[:, 0, 2] = torch.sin(angle)
    viewmats[:, 2, 0] = -torch.sin(angle)
    viewmats[:, 2, 2] = torch.cos(angle)
    Ks = torch.tensor(
        [[1.2 * width, 0, width / 2], [0, 1.2 * width, height / 2], [0, 0, 1]], dtype=dtype
    ).repeat(cameras, 1, 1)
    return dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors,
                viewmats=viewmats, Ks=Ks, width=width, height=height)


DIFF_KEYS = ("means", "quats", "scales", "opacities", "colors", "viewmats")


def render_both(scene, **kwargs):
    """Render with native and reference; returns outputs and gradients of both."""
    results = []
    gen = torch.Generator().manual_seed(123)
    cot = None
    for fn in (rasterization, rasterization_reference):
        inputs = {k: (v.clone().requires_grad_() if k in DIFF_KEYS else v)
                  for k, v in scene.items()}
        colors, alphas, meta = fn(**inputs, **kwargs)
        if cot is None:
            cot = (torch.randn(colors.shape, generator=gen, dtype=colors.dtype),
                   torch.randn(alphas.shape, generator=gen, dtype=alphas.dtype))
        loss = (colors * cot[0]).sum() + (alphas * cot[1]).sum()
        grads = torch.autograd.grad(loss, [inputs[k] for k in DIFF_KEYS], allow_unused=True)
        grads = [torch.zeros_like(inputs[k]) if g is None else g
                 for k, g in zip(DIFF_KEYS, grads, strict=True)]
        grads = dict(zip(DIFF_KEYS, grads, strict=True))
        results.append((colors.detach(), alphas.detach(), meta, grads))
    return results


def assert_grads_close(native, reference):
    for key in DIFF_KEYS:
        scale = reference[key].abs().max().item() + 1e-6
        err = (native[key] - reference[key]).abs().max().item()
        assert err <= GRAD_RTOL * scale + 1e-6, f"{key}: max err {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("render_mode", ["RGB", "D", "ED", "RGB+D", "RGB+ED"])
def test_native_matches_reference_render_modes(render_mode):
    scene = make_scene()
    backgrounds = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.3]])
    native, ref = render_both(scene, render_mode=render_mode, backgrounds=backgrounds)
    assert native[0].shape == ref[0].shape
    assert torch.allclose(native[0], ref[0], atol=FWD_ATOL, rtol=1e-5)
    assert torch.allclose(native[1], ref[1], atol=FWD_ATOL)
    assert native[1].max() > 0.5, "scene should cover part of the image"
    assert_grads_close(native[3], ref[3])


@pytest.mark.parametrize("channels", [1, 2, 5, 32])
def test_any_channel_count(channels):
    scene = make_scene(n=120, channels=channels, seed=1)
    native, ref = render_both(scene)
    assert native[0].shape[-1] == channels
    assert torch.allclose(native[0], ref[0], atol=FWD_ATOL)
    assert_grads_close(native[3], ref[3])


@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
def test_spherical_harmonics_colours(sh_degree):
    scene = make_scene(n=150, sh_degree=sh_degree, seed=2)
    native, ref = render_both(scene, sh_degree=sh_degree)
    assert torch.allclose(native[0], ref[0], atol=FWD_ATOL)
    assert_grads_close(native[3], ref[3])


def test_antialiased_mode_and_odd_image_size():
    # 37x23 is not a multiple of the tile size: partial tiles on both borders.
    scene = make_scene(n=150, width=37, height=23, seed=3, cameras=3)
    native, ref = render_both(scene, rasterize_mode="antialiased", tile_size=8)
    assert torch.allclose(native[0], ref[0], atol=FWD_ATOL)
    assert_grads_close(native[3], ref[3])


def test_single_gaussian_matches_closed_form():
    """An isotropic Gaussian facing the camera: alpha(pixel) = o exp(-d^2 / (2 var)),
    var = (f s / z)^2 + eps2d; expected depth equals z. Independent of the reference."""
    f, s, z, o, eps2d = 50.0, 0.05, 2.0, 0.8, 0.3
    width = height = 21
    cx = cy = 10.5  # the Gaussian projects onto the centre of pixel (10, 10)
    colors, alphas, meta = rasterization(
        means=torch.tensor([[0.0, 0.0, z]]), quats=torch.tensor([[1.0, 0, 0, 0]]),
        scales=torch.full((1, 3), s), opacities=torch.tensor([o]),
        colors=torch.tensor([[0.2, 0.4, 0.6]]), viewmats=torch.eye(4)[None],
        Ks=torch.tensor([[[f, 0, cx], [0, f, cy], [0, 0, 1]]]), width=width, height=height,
        render_mode="RGB+ED", eps2d=eps2d,
    )
    var = (f * s / z) ** 2 + eps2d
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5,
                            indexing="ij")
    expected = o * torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * var))
    expected = torch.where(expected >= 1 / 255, expected, torch.zeros_like(expected))
    assert torch.allclose(alphas[0, ..., 0], expected, atol=1e-6)
    assert torch.allclose(colors[0, 10, 10, :3], o * torch.tensor([0.2, 0.4, 0.6]), atol=1e-6)
    covered = alphas[0, ..., 0] > 0
    depth = colors[0, ..., 3][covered]
    assert torch.allclose(depth, torch.full_like(depth, z), atol=1e-5)
    assert meta["radii"][0, 0].tolist() == [math.ceil(math.sqrt(2 * math.log(o * 255) * var))] * 2


def test_early_termination_matches_reference():
    # 40 nearly opaque Gaussians stacked on the optical axis: pixels saturate after a few.
    n = 40
    scene = dict(
        means=torch.stack([torch.zeros(n), torch.zeros(n), torch.linspace(2, 6, n)], -1),
        quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
        scales=torch.full((n, 3), 0.3), opacities=torch.full((n,), 0.95),
        colors=torch.rand(n, 3, generator=torch.Generator().manual_seed(4)),
        viewmats=torch.eye(4)[None], Ks=torch.tensor([[[30.0, 0, 16], [0, 30.0, 16], [0, 0, 1]]]),
        width=32, height=32,
    )
    native, ref = render_both(scene)
    # Compositing stops before T reaches 1e-4, so alpha saturates just under 0.9999.
    assert native[1].max() > 0.999
    assert torch.allclose(native[0], ref[0], atol=FWD_ATOL)
    assert_grads_close(native[3], ref[3])
    # Pixels terminate long before the back of the stack: it gets almost no gradient.
    v_colors = native[3]["colors"].abs().amax(-1)
    assert v_colors[-1] < 1e-3 * v_colors[0]


def test_degenerate_inputs():
    base = make_scene(n=6, cameras=1, width=16, height=12, seed=5)
    # Zero Gaussians: nothing drawn, background everywhere, gradients flow to nothing.
    empty = {k: (v[:0] if k in ("means", "quats", "scales", "opacities", "colors") else v)
             for k, v in base.items()}
    bg = torch.tensor([[0.1, 0.2, 0.3]])
    colors, alphas, meta = rasterization(**empty, backgrounds=bg)
    assert torch.all(alphas == 0)
    assert torch.allclose(colors, bg.view(1, 1, 1, 3).expand_as(colors))
    assert meta["radii"].shape == (1, 0, 2)

    # Behind the camera (z_cam = z + 4 <= 0), outside the image, fully transparent: all
    # culled, no NaNs.
    culled = dict(base)
    culled["means"] = torch.tensor(
        [[0, 0, -5.0], [0, 0, -4.0], [50, 0, 0.0], [0, -40, 0.0], [0, 0, 0.0], [0.1, 0, 0.0]]
    )
    culled["opacities"] = torch.tensor([0.9, 0.9, 0.9, 0.9, 0.0, 0.001])
    inputs = {k: (v.clone().requires_grad_() if k in DIFF_KEYS else v) for k, v in culled.items()}
    colors, alphas, meta = rasterization(**inputs)
    assert torch.all(meta["radii"] == 0)
    assert torch.all(alphas == 0)
    grads = torch.autograd.grad(colors.sum() + alphas.sum(), [inputs[k] for k in DIFF_KEYS],
                                allow_unused=True)
    for g in grads:
        assert g is None or (torch.isfinite(g).all() and g.abs().max() == 0)

    # Huge and tiny scales, and a single-pixel image.
    odd = dict(base)
    odd["scales"] = torch.tensor([[50.0, 50, 50], [1e-6, 1e-6, 1e-6], [0.1, 1e-5, 3.0],
                                  [0.05, 0.05, 0.05], [2.0, 0.01, 0.01], [1e-3, 1e-3, 1e-3]])
    for width, height in ((16, 12), (1, 1)):
        odd["width"], odd["height"] = width, height
        odd["Ks"] = torch.tensor([[[20.0, 0, width / 2], [0, 20.0, height / 2], [0, 0, 1]]])
        native, ref = render_both(odd)
        assert torch.isfinite(native[0]).all() and torch.isfinite(native[1]).all()
        assert torch.allclose(native[0], ref[0], atol=FWD_ATOL)
        assert_grads_close(native[3], ref[3])


def test_gradcheck_full_rasterization_float64():
    """Through projection too: gradients w.r.t. Gaussians and the camera pose."""
    scene = make_scene(n=5, cameras=1, width=12, height=10, dtype=torch.float64, seed=6)
    scene["scales"] = scene["scales"] * 3
    keys = ("means", "scales", "opacities", "colors", "viewmats")

    def fn(*tensors):
        inputs = dict(scene)
        inputs.update(zip(keys, tensors, strict=True))
        colors, alphas, _ = rasterization(**inputs, render_mode="RGB+D", tile_size=4)
        return colors, alphas

    inputs = tuple(scene[k].clone().requires_grad_() for k in keys)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_native_gradients_are_deterministic_across_threads():
    """The kernel reduces per-intersection gradients in a fixed order: bit-identical
    results for 1 and 2 threads (the PyTorch projection around it is not part of this)."""
    scene = make_scene(n=300, seed=7)
    from reconstruction.splatting._projection import project_gaussians

    proj = project_gaussians(scene["means"], scene["quats"], scene["scales"],
                             scene["opacities"], scene["viewmats"], scene["Ks"], 40, 30)
    colors = scene["colors"][None].expand(2, -1, -1)
    grads = []
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2, 2):
            torch.set_num_threads(n_threads)
            inputs = [t.detach().clone().requires_grad_()
                      for t in (proj.means2d, proj.conics, colors, proj.opacities)]
            img, alpha = rasterize_to_pixels_native(*inputs, proj.depths, proj.radii, 40, 30)
            grads.append(torch.autograd.grad(img.square().sum() + alpha.sum(), inputs))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(grads[0] + grads[1], grads[1] + grads[2], strict=True):
        assert torch.equal(a, b)


def test_means2d_gradient_for_densification():
    scene = make_scene(n=50, seed=8)
    colors, alphas, meta = rasterization(**scene)
    scene_means = scene["means"].requires_grad_()
    colors, alphas, meta = rasterization(**{**scene, "means": scene_means})
    meta["means2d"].retain_grad()
    colors.sum().backward()
    grad2d = meta["means2d"].grad
    assert grad2d.shape == (2, 50, 2)
    visible = (meta["radii"] > 0).all(-1)
    assert grad2d[~visible].abs().max() == 0
    assert grad2d[visible].abs().sum() > 0


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("means", torch.zeros(10, 2), "means must have shape"),
        ("quats", torch.zeros(9, 4), "quats must have shape"),
        ("scales", torch.zeros(10, 3, dtype=torch.float64), "scales must be torch.float32"),
        ("opacities", torch.full((10,), float("nan")), "opacities contains NaN"),
        ("opacities", torch.full((10,), 1.5), "opacities must lie in"),
        ("scales", -torch.ones(10, 3), "scales must be non-negative"),
        ("colors", torch.zeros(10, 3, 3), "colors must have shape"),
        ("viewmats", torch.zeros(1, 3, 4), "viewmats must have shape"),
        ("Ks", torch.zeros(2, 3, 3), "Ks must have shape"),
        ("means", torch.full((10, 3), float("inf")), "means contains NaN or Inf"),
        ("width", 0, "width must be a positive int"),
        ("height", 2.5, "height must be a positive int"),
        ("viewmats", torch.eye(4)[None].to("meta"), "viewmats is on meta"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(field, value, message):
    scene = make_scene(n=10, cameras=1)
    scene[field] = value
    with pytest.raises(ValueError, match=message):
        rasterization(**scene)


def test_bad_modes_raise():
    scene = make_scene(n=10, cameras=1)
    with pytest.raises(ValueError, match="render_mode"):
        rasterization(**scene, render_mode="RGBD")
    with pytest.raises(ValueError, match="sh_degree"):
        rasterization(**scene, sh_degree=4)
    with pytest.raises(ValueError, match="backgrounds must have shape"):
        rasterization(**scene, backgrounds=torch.zeros(1, 4))


def test_sh_basis_is_orthonormal():
    """Real SH up to degree 3 integrate to the identity over the sphere (Fibonacci grid)."""
    n = 20000
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + 5**0.5) * i
    r = torch.sqrt(1 - z * z)
    dirs = torch.stack((r * torch.cos(phi), r * torch.sin(phi), z), -1)
    basis = sh_basis(3, dirs)  # [n, 16]
    gram = basis.T @ basis * (4 * math.pi / n)
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=2e-3)


def test_sh_degree0_colour():
    coeffs = torch.tensor([[[1.0, -0.5, 0.0]]])
    rgb = sh_to_color(0, torch.tensor([[0.0, 0.0, 1.0]]), coeffs)
    assert torch.allclose(rgb, torch.tensor([[0.28209479 + 0.5, 0.5 - 0.14104740, 0.5]]))


@pytest.mark.cuda
def test_cuda_matches_cpu_via_gsplat():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("gsplat")
    scene = make_scene(n=300, seed=9)
    cpu_colors, cpu_alphas, _ = rasterization(**scene)
    gpu = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in scene.items()}
    gpu_colors, gpu_alphas, _ = rasterization(**gpu)
    assert torch.allclose(gpu_colors.cpu(), cpu_colors, atol=1e-4)
    assert torch.allclose(gpu_alphas.cpu(), cpu_alphas, atol=1e-4)
