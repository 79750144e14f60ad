"""The native projection op (geometry.ops.projection) against the PyTorch reference
``project_gaussians``: outputs, radii, gradients to every input (Gaussians and cameras),
float64 gradcheck, determinism across thread counts and degenerate Gaussians."""

from __future__ import annotations

import pytest
import torch

from reconstruction.splatting._projection import project_gaussians

WIDTH, HEIGHT = 40, 30
KEYS = ("means", "quats", "scales", "opacities", "viewmats", "Ks")


def make_scene(n=200, cameras=3, seed=0, dtype=torch.float64):
    """Gaussians around the origin seen by cameras 4 m away: some behind every camera,
    some far off-screen (clamped Jacobian), some nearly flat."""
    from geometry.so3 import quat_to_matrix

    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    means = torch.randn(n, 3, generator=gen, dtype=f64)
    means[:5, 2] = -6.0
    means[5:10, 0] = 8.0
    quats = torch.randn(n, 4, generator=gen, dtype=f64)
    scales = 0.05 * torch.exp(1.5 * torch.randn(n, 3, generator=gen, dtype=f64))
    opacities = torch.rand(n, generator=gen, dtype=f64) * 0.9 + 0.05
    viewmats = torch.eye(4, dtype=f64).repeat(cameras, 1, 1)
    viewmats[:, :3, :3] = quat_to_matrix(torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=f64)
                                          + 0.2 * torch.randn(cameras, 4, generator=gen,
                                                              dtype=f64))
    viewmats[:, :3, 3] = torch.randn(cameras, 3, generator=gen, dtype=f64) * 0.3
    viewmats[:, 2, 3] += 4.0
    Ks = torch.tensor([[50.0, 0, 20.0], [0, 45.0, 15.0], [0, 0, 1]], dtype=f64).repeat(
        cameras, 1, 1)
    Ks[:, 0, 2] += torch.arange(cameras, dtype=f64)
    scene = dict(means=means, quats=quats, scales=scales, opacities=opacities,
                 viewmats=viewmats, Ks=Ks)
    return {k: v.to(dtype) for k, v in scene.items()}


def _run(scene, native, antialiased, weights=None, seed=1):
    inputs = {k: v.clone().requires_grad_() for k, v in scene.items()}
    proj = project_gaussians(**inputs, width=WIDTH, height=HEIGHT, antialiased=antialiased,
                             native=native)
    outputs = (proj.means2d, proj.conics, proj.depths, proj.opacities, proj.compensations)
    if weights is None:
        gen = torch.Generator().manual_seed(seed)
        weights = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outputs]
    loss = sum((o * w).sum() for o, w in zip(outputs, weights, strict=True))
    grads = torch.autograd.grad(loss, [inputs[k] for k in KEYS])
    return [o.detach() for o in outputs], proj.radii, grads, weights


# float64: the same formulas in another order agree to ~1e-14 relative; 1e-10 leaves room
# for the cancellation in flat Gaussians' 2D covariances. float32: ~1e-5 relative measured
# (the same cancellation at float32's epsilon), hence 1e-4.
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("antialiased", [False, True])
def test_native_matches_reference(dtype, rtol, antialiased):
    scene = make_scene(dtype=dtype)
    ref_out, ref_radii, ref_grads, weights = _run(scene, False, antialiased)
    out, radii, grads, _ = _run(scene, True, antialiased, weights)
    assert (ref_radii == 0).any() and (ref_radii > 0).any()  # culled and visible ones
    assert torch.equal(radii, ref_radii)
    for got, expected in zip(out, ref_out, strict=True):
        torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol * expected.abs().max())
    for name, got, expected in zip(KEYS, grads, ref_grads, strict=True):
        assert expected.abs().max() > 0, name
        torch.testing.assert_close(got, expected, rtol=rtol,
                                   atol=rtol * expected.abs().max(), msg=name)


@pytest.mark.parametrize("antialiased", [False, True])
def test_native_gradcheck_float64(antialiased):
    scene = make_scene(n=14, cameras=2, seed=3)

    def fn(*inputs):
        proj = project_gaussians(**dict(zip(KEYS, inputs, strict=True)), width=WIDTH,
                                 height=HEIGHT, antialiased=antialiased, native=True)
        return proj.means2d, proj.conics, proj.depths, proj.opacities, proj.compensations

    inputs = tuple(scene[k].clone().requires_grad_() for k in KEYS)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_native_is_deterministic_across_threads():
    scene = make_scene(n=5000, cameras=2, seed=4, dtype=torch.float32)
    threads = torch.get_num_threads()
    runs = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            runs.append(_run(scene, True, True))
    finally:
        torch.set_num_threads(threads)
    for out, radii, grads, _ in runs[1:]:
        assert torch.equal(radii, runs[0][1])
        assert all(torch.equal(a, b) for a, b in zip(out, runs[0][0], strict=True))
        assert all(torch.equal(a, b) for a, b in zip(grads, runs[0][2], strict=True))


def test_degenerate_gaussians_give_finite_values_and_gradients():
    scene = make_scene(n=20, cameras=1, seed=5)
    scene["quats"][0] = 0.0  # zero quaternion: stays zero, no NaN
    scene["scales"][1] = 0.0  # a point: compensation 0
    scene["scales"][2, 2] = 0.0  # flat
    scene["means"][3] = scene["viewmats"][0, :3, :3].T @ (
        torch.tensor([0.0, 0.0, 0.005], dtype=torch.float64) - scene["viewmats"][0, :3, 3])
    out, radii, grads, _ = _run(scene, True, True)
    assert all(torch.isfinite(o).all() for o in out)
    assert all(torch.isfinite(g).all() for g in grads)
    assert radii[0, 3].eq(0).all()  # nearer than the near plane: culled


def test_only_some_outputs_used():
    # Gradients flow when the rasterizer uses only a subset of the outputs.
    scene = make_scene(n=30, cameras=2, seed=6)
    results = []
    for native in (False, True):
        means = scene["means"].clone().requires_grad_()
        proj = project_gaussians(means, scene["quats"], scene["scales"], scene["opacities"],
                                 scene["viewmats"], scene["Ks"], WIDTH, HEIGHT, native=native)
        (grad,) = torch.autograd.grad(proj.means2d.sum(), [means])
        results.append(grad)
    torch.testing.assert_close(results[1], results[0], rtol=1e-10, atol=1e-12)
