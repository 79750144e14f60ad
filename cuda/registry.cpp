// The one registry of sparseview's native ops. Schemas are declared here once; each op's
// backends (cuda/<op>/<op>_cpu.cpp, cuda/<op>/<op>_cuda.cu) register implementations with
// TORCH_LIBRARY_IMPL, and the Python side attaches autograd with
// torch.library.register_autograd (geometry/ops/<op>/_wrapper.py).

#include <torch/library.h>

TORCH_LIBRARY(sparseview, m) {
  // Differentiable compositing of projected 2D Gaussians (tile binning, depth sort,
  // front-to-back alpha blending with early termination).
  //   means2d [C,N,2], conics [C,N,3] (upper triangle of the inverse 2D covariance),
  //   colors [C,N,D], opacities [C,N], depths [C,N] (sort key), radii [C,N,2] int32
  //   (0 = culled). Returns render_colors [C,H,W,D], render_alphas [C,H,W,1],
  //   last_ids [C,H,W] int32 (per pixel: 1 + index, in its tile's list, of the last
  //   Gaussian that contributed), tile_offsets [C*TY*TX+1] int64, flatten_ids [M] int32.
  m.def(
      "rasterize_to_pixels_fwd(Tensor means2d, Tensor conics, Tensor colors, "
      "Tensor opacities, Tensor depths, Tensor radii, int width, int height, "
      "int tile_size) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Backward of rasterize_to_pixels_fwd. Returns v_means2d [C,N,2], v_conics [C,N,3],
  // v_colors [C,N,D], v_opacities [C,N], v_means2d_abs [C,N,2] (sum over pixels of the
  // absolute per-pixel gradients, for AbsGS-style densification).
  m.def(
      "rasterize_to_pixels_bwd(Tensor means2d, Tensor conics, Tensor colors, "
      "Tensor opacities, Tensor radii, Tensor render_alphas, Tensor last_ids, "
      "Tensor tile_offsets, Tensor flatten_ids, Tensor v_render_colors, "
      "Tensor v_render_alphas, int width, int height, int tile_size) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Hard voxelization of a point cloud (mmcv's hard_voxelize). points [N,C] (x, y, z
  // first), voxel_size (x, y, z), point_range (x0, y0, z0, x1, y1, z1). Returns voxels
  // [M,max_points,C] (zero padded), coords [M,3] int32 (z, y, x), num_points [M] int32;
  // voxels in the order of their first point, at most max_voxels of them.
  m.def(
      "voxelize(Tensor points, float[] voxel_size, float[] point_range, int max_points, "
      "int max_voxels) -> (Tensor, Tensor, Tensor)");
}
