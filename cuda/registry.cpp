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
  // 3DGS's view-dependent colour max(SH(dirs / |dirs|) . coeffs + 0.5, 0) for C cameras
  // sharing the coefficients: dirs [C,N,3] (Gaussian minus camera centre), coeffs [N,K,3]
  // with K >= (degree + 1)^2 (only those are read). Returns colors [C,N,3].
  m.def("sh_to_color_fwd(int degree, Tensor dirs, Tensor coeffs) -> Tensor");
  // Backward of sh_to_color_fwd: v_dirs [C,N,3], v_coeffs [N,K,3].
  m.def(
      "sh_to_color_bwd(int degree, Tensor dirs, Tensor coeffs, Tensor v_colors) "
      "-> (Tensor, Tensor)");
  // Hard voxelization of a point cloud (mmcv's hard_voxelize). points [N,C] (x, y, z
  // first), voxel_size (x, y, z), point_range (x0, y0, z0, x1, y1, z1). Returns voxels
  // [M,max_points,C] (zero padded), coords [M,3] int32 (z, y, x), num_points [M] int32;
  // voxels in the order of their first point, at most max_voxels of them.
  m.def(
      "voxelize(Tensor points, float[] voxel_size, float[] point_range, int max_points, "
      "int max_voxels) -> (Tensor, Tensor, Tensor)");
  // Sparse-voxel ops (cuda/sparse_voxel/; geometry/ops/sparse_voxel/ documents them).
  // Occupancy-grid ray marching: origins/dirs [R,3], near/far [R] float32, occupancy
  // [L,X,Y,Z] bool/uint8, bounds [L,6] float32 (level boxes). Returns offsets [R+1] int64
  // (CSR), ray_indices [S] int64, t_starts [S], t_ends [S].
  m.def(
      "ray_march(Tensor origins, Tensor dirs, Tensor near, Tensor far, Tensor occupancy, "
      "Tensor bounds, float step) -> (Tensor, Tensor, Tensor, Tensor)");
  // Point -> voxel hashing: points [N,C>=3]; max_points / max_voxels < 0: no cap. Returns
  // coords [M,3] int32 (x, y, z; voxels in the order of their first point), inverse [N]
  // int64 (-1: dropped), counts [M] int64.
  m.def(
      "voxel_hash(Tensor points, float[] voxel_size, float[] point_range, int max_points, "
      "int max_voxels) -> (Tensor, Tensor, Tensor)");
  // Mean and max of features [N,C] per voxel (inverse [N], counts [M]) -> ([M,C], [M,C]).
  m.def("voxel_reduce(Tensor features, Tensor inverse, Tensor counts) -> (Tensor, Tensor)");
  m.def(
      "voxel_reduce_bwd(Tensor? grad_mean, Tensor? grad_max, Tensor features, "
      "Tensor inverse, Tensor counts, Tensor max) -> Tensor");
  // Trilinear sampling of sparse voxel features: points [Q,3], coords [M,3] int, features
  // [M,C] at voxel centres origin + (coords + 0.5) * voxel_size; missing corners are zero.
  // Returns out [Q,C], rows [Q,8] int64 (-1: missing), weights [Q,8] (the backward's inputs;
  // with corners=false both are empty [0,8] and never written: inference).
  m.def(
      "sparse_trilinear_fwd(Tensor points, Tensor coords, Tensor features, "
      "float[] voxel_size, float[] origin, bool corners=True) -> (Tensor, Tensor, Tensor)");
  m.def(
      "sparse_trilinear_bwd(Tensor grad_out, Tensor rows, Tensor weights, int num_rows) "
      "-> Tensor");
  // Projection of 3D Gaussians into cameras (cuda/projection/).
  // EWA projection of Gaussians means [N,3], quats [N,4] wxyz (any norm), scales [N,3],
  // opacities [N] into cameras viewmats [C,4,4] (T_cam_world, OpenCV), Ks [C,3,3].
  // Returns means2d [C,N,2] px, conics [C,N,3], depths [C,N] (camera z), radii [C,N,2]
  // int32 (0 = culled), opacities [C,N] (times the compensation if antialiased),
  // compensations [C,N].
  m.def(
      "project_gaussians_fwd(Tensor means, Tensor quats, Tensor scales, Tensor opacities, "
      "Tensor viewmats, Tensor Ks, int width, int height, float near_plane, "
      "float far_plane, float eps2d, float radius_clip, bool antialiased, "
      "float alpha_threshold, float max_extent) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Backward of project_gaussians_fwd (undefined output gradients count as zero). Returns
  // v_means [N,3], v_quats [N,4], v_scales [N,3], v_opacities [N], v_viewmats [C,4,4],
  // v_Ks [C,3,3].
  m.def(
      "project_gaussians_bwd(Tensor means, Tensor quats, Tensor scales, Tensor opacities, "
      "Tensor viewmats, Tensor Ks, int width, int height, float near_plane, "
      "float far_plane, float eps2d, bool antialiased, Tensor? v_means2d, "
      "Tensor? v_conics, Tensor? v_depths, Tensor? v_opacities, Tensor? v_compensations) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Fused SSIM + L1 photometric loss (cuda/ssim/).
  // SSIM (Gaussian window of taps window [k], 'valid' positions) and L1 of images x, y
  // [B,H,W,C]. Returns ssim (mean, scalar), l1 (mean, scalar) and the window means
  // stats [B,5,H-k+1,W-k+1,C] (mu_x, mu_y, E[x^2], E[y^2], E[xy]) for the backward.
  m.def("ssim_l1_fwd(Tensor x, Tensor y, Tensor window) -> (Tensor, Tensor, Tensor)");
  // Backward of ssim_l1_fwd for the scalar gradients v_ssim, v_l1: v_x, and v_y with
  // y_grad (else an empty tensor).
  m.def(
      "ssim_l1_bwd(Tensor x, Tensor y, Tensor window, Tensor stats, Tensor v_ssim, "
      "Tensor v_l1, bool y_grad) -> (Tensor, Tensor)");
}
