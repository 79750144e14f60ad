"""The projection's covariance products, written out element by element for speed, against
the plain matrix-product formulas (R S S^T R^T, W Σ W^T, J Σ_cam J^T) in float64."""

from __future__ import annotations

import pytest
import torch

from geometry.so3 import quat_to_matrix
from reconstruction.splatting._projection import covariances_3d, project_gaussians

WIDTH, HEIGHT = 40, 30
EPS2D = 0.3
# float64 reference vs. a different summation order: agreement to ~1e-12 relative; the
# 2D covariances of flat Gaussians lose a few digits to cancellation, hence 1e-9.
RTOL = 1e-9


def make_scene(n=120, cameras=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    means = torch.randn(n, 3, generator=gen, dtype=f64)
    means[:5, 2] = -6.0  # behind every camera: culled
    means[5:10, 0] = 8.0  # far off-screen: Jacobian at the clamped mean
    quats = torch.randn(n, 4, generator=gen, dtype=f64)
    # Anisotropic, some nearly flat.
    scales = 0.05 * torch.exp(1.5 * torch.randn(n, 3, generator=gen, dtype=f64))
    opacities = torch.rand(n, generator=gen, dtype=f64) * 0.9 + 0.05
    viewmats = torch.eye(4, dtype=f64).repeat(cameras, 1, 1)
    R = quat_to_matrix(torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=f64)
                       + 0.2 * torch.randn(cameras, 4, generator=gen, dtype=f64))
    viewmats[:, :3, :3] = R
    viewmats[:, :3, 3] = torch.randn(cameras, 3, generator=gen, dtype=f64) * 0.3
    viewmats[:, 2, 3] += 4.0
    K = torch.tensor([[50.0, 0, 20.0], [0, 45.0, 15.0], [0, 0, 1]], dtype=f64)
    Ks = K.repeat(cameras, 1, 1)
    Ks[:, 0, 2] += torch.arange(cameras, dtype=f64)
    return dict(means=means, quats=quats, scales=scales, opacities=opacities,
                viewmats=viewmats, Ks=Ks)


def reference_conics(means, quats, scales, viewmats, Ks):
    """Conics and compensations from the 2D covariance as plain (batched) matrix products."""
    R_world = quat_to_matrix(quats)
    M = R_world * scales[..., None, :]
    covs_world = M @ M.transpose(-1, -2)  # [N, 3, 3]
    W = viewmats[:, :3, :3]
    means_cam = torch.einsum("cij,nj->cni", W, means) + viewmats[:, None, :3, 3]
    covs_cam = W[:, None] @ covs_world[None] @ W.transpose(-1, -2)[:, None]  # [C, N, 3, 3]
    x, y, z = means_cam.unbind(-1)
    in_depth = z > 0.01
    z = torch.where(in_depth, z, torch.ones_like(z))
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    lim_x_pos = (WIDTH - cx) / fx + 0.3 * 0.5 * WIDTH / fx
    lim_x_neg = cx / fx + 0.3 * 0.5 * WIDTH / fx
    lim_y_pos = (HEIGHT - cy) / fy + 0.3 * 0.5 * HEIGHT / fy
    lim_y_neg = cy / fy + 0.3 * 0.5 * HEIGHT / fy
    tx = z * torch.clamp(x / z, -lim_x_neg, lim_x_pos)
    ty = z * torch.clamp(y / z, -lim_y_neg, lim_y_pos)
    J = torch.zeros(*z.shape, 2, 3, dtype=z.dtype)
    J[..., 0, 0], J[..., 0, 2] = fx / z, -fx * tx / z**2
    J[..., 1, 1], J[..., 1, 2] = fy / z, -fy * ty / z**2
    cov2d = J @ covs_cam @ J.transpose(-1, -2)
    a, b, c = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det_orig = a * c - b * b
    a, c = a + EPS2D, c + EPS2D
    det = a * c - b * b
    valid = in_depth & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack((c / det, -b / det, a / det), -1)
    return conics, torch.sqrt(torch.clamp(det_orig / det, min=0.0)), valid


def test_covariances_3d_match_matrix_product():
    scene = make_scene()
    M = quat_to_matrix(scene["quats"]) * scene["scales"][..., None, :]
    expected = M @ M.transpose(-1, -2)
    got = covariances_3d(scene["quats"], scene["scales"])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)
    assert torch.equal(got, got.transpose(-1, -2))


@pytest.mark.parametrize("seed", [0, 1])
def test_conics_and_gradients_match_matrix_products(seed):
    scene = make_scene(seed=seed)
    keys = ("means", "quats", "scales", "viewmats")
    gen = torch.Generator().manual_seed(10 + seed)
    results = []
    for use_reference in (False, True):
        inputs = {k: scene[k].clone().requires_grad_() for k in keys}
        if use_reference:
            conics, comps, valid = reference_conics(**inputs, Ks=scene["Ks"])
        else:
            proj = project_gaussians(**inputs, opacities=scene["opacities"], Ks=scene["Ks"],
                                     width=WIDTH, height=HEIGHT, eps2d=EPS2D)
            conics, comps = proj.conics, proj.compensations
        if not results:
            weights = (torch.randn(conics.shape, generator=gen, dtype=conics.dtype),
                       torch.randn(comps.shape, generator=gen, dtype=comps.dtype))
        loss = (conics * weights[0]).sum() + (comps * weights[1]).sum()
        grads = torch.autograd.grad(loss, [inputs[k] for k in keys])
        results.append((conics.detach(), comps.detach(), grads))
    assert valid.any() and not valid.all()  # the scene has culled Gaussians
    (conics, comps, grads), (ref_conics, ref_comps, ref_grads) = results
    torch.testing.assert_close(conics, ref_conics, rtol=RTOL, atol=RTOL * ref_conics.abs().max())
    torch.testing.assert_close(comps, ref_comps, rtol=RTOL, atol=RTOL)
    for name, got, expected in zip(keys, grads, ref_grads, strict=True):
        assert expected.abs().max() > 0, name
        torch.testing.assert_close(got, expected, rtol=RTOL, atol=RTOL * expected.abs().max(),
                                   msg=name)


def test_projection_gradcheck_float64():
    scene = make_scene(n=12, cameras=2, seed=3)
    keys = ("means", "quats", "scales", "viewmats")

    def fn(*inputs):
        proj = project_gaussians(**dict(zip(keys, inputs, strict=True)),
                                 opacities=scene["opacities"], Ks=scene["Ks"], width=WIDTH,
                                 height=HEIGHT, antialiased=True)
        return proj.means2d, proj.conics, proj.opacities

    inputs = tuple(scene[k].clone().requires_grad_() for k in keys)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)
