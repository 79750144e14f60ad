"""EWA projection of 3D Gaussians into pinhole cameras: the op
``sparseview::project_gaussians_{fwd,bwd}`` (``cuda/projection/projection_cpu.cpp``).

gsplat's ``fully_fused_projection`` on the CPU: one native pass per Gaussian, forward and a
hand-written backward to the Gaussians and to the cameras (``viewmats`` and ``Ks``). The
PyTorch reference it is tested against (outputs, gradients, float64 gradcheck) is
:func:`reconstruction.splatting._projection.project_gaussians`; the splatting API
(:func:`reconstruction.splatting.rasterization`) uses this op on the CPU.
"""

from geometry.ops.projection._wrapper import project_gaussians_native

__all__ = ["project_gaussians_native"]
