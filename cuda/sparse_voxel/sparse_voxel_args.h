// Argument checks of the sparse-voxel ops, shared by the CPU (sparse_voxel_cpu.cpp) and CUDA
// (sparse_voxel_cuda.cpp) bindings so that both refuse the same inputs with the same message.
// Device checks stay with the CUDA binding. Host code only (ATen).

#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <optional>

#include "sparse_voxel.h"

namespace sparseview {
namespace sparse_voxel_args {

// ray_march: rays [R, 3], near/far [R] and bounds [L, 6] in float32, occupancy [L, X, Y, Z]
// bool/uint8, a positive step. Returns the number of levels L.
inline int ray_march(const at::Tensor& origins, const at::Tensor& dirs, const at::Tensor& near,
                     const at::Tensor& far, const at::Tensor& occupancy,
                     const at::Tensor& bounds, double step) {
  TORCH_CHECK(origins.dim() == 2 && origins.size(1) == 3, "origins must be [R, 3]");
  TORCH_CHECK(dirs.sizes() == origins.sizes(), "dirs must be [R, 3] like origins");
  const int64_t r = origins.size(0);
  TORCH_CHECK(near.dim() == 1 && near.size(0) == r, "near must be [R]");
  TORCH_CHECK(far.dim() == 1 && far.size(0) == r, "far must be [R]");
  for (const at::Tensor* t : {&origins, &dirs, &near, &far, &bounds})
    TORCH_CHECK(t->scalar_type() == at::kFloat, "rays, near, far and bounds must be float32");
  TORCH_CHECK(occupancy.dim() == 4, "occupancy must be [L, X, Y, Z]");
  TORCH_CHECK(occupancy.scalar_type() == at::kByte || occupancy.scalar_type() == at::kBool,
              "occupancy must be bool or uint8");
  const int levels = static_cast<int>(occupancy.size(0));
  TORCH_CHECK(levels >= 1 && levels <= sparse_voxel::kMaxLevels, "1 to 16 occupancy levels");
  TORCH_CHECK(bounds.dim() == 2 && bounds.size(0) == levels && bounds.size(1) == 6,
              "bounds must be [L, 6]");
  TORCH_CHECK(step > 0 && std::isfinite(step), "step must be positive");
  return levels;
}

// The level boxes (host memory, [L, 6] as x0 y0 z0 x1 y1 z1) must have positive size.
inline void level_boxes(const float* b, int levels) {
  for (int l = 0; l < levels; ++l)
    for (int a = 0; a < 3; ++a)
      TORCH_CHECK(b[l * 6 + 3 + a] > b[l * 6 + a], "every level box must have positive size");
}

// voxel_hash: points [N, C>=3] floating, 3 voxel sizes, a 6-value range, max_points != 0.
// Writes the voxel grid's size per axis to grid.
inline void voxel_hash(const at::Tensor& points, at::ArrayRef<double> voxel_size,
                       at::ArrayRef<double> point_range, int64_t max_points, int64_t grid[3]) {
  TORCH_CHECK(points.dim() == 2 && points.size(1) >= 3, "points must be [N, C>=3]");
  TORCH_CHECK(points.is_floating_point(), "points must be floating point");
  TORCH_CHECK(voxel_size.size() == 3, "voxel_size must have 3 values (x, y, z)");
  TORCH_CHECK(point_range.size() == 6, "point_range must be (x0, y0, z0, x1, y1, z1)");
  TORCH_CHECK(max_points != 0, "max_points must be >= 1 (or < 0: no cap)");
  for (int d = 0; d < 3; ++d) {
    TORCH_CHECK(voxel_size[d] > 0 && point_range[d + 3] > point_range[d],
                "voxel sizes and the range must be positive");
    grid[d] = static_cast<int64_t>(std::llround((point_range[d + 3] - point_range[d]) /
                                                voxel_size[d]));
    TORCH_CHECK(grid[d] >= 1 && grid[d] < (int64_t(1) << 21), "1 to 2^21 voxels per axis");
  }
}

// voxel_reduce(_bwd): features [N, C] floating, inverse int64 [N] below M, counts int64 [M].
inline void reduce_inputs(const at::Tensor& features, const at::Tensor& inverse,
                          const at::Tensor& counts) {
  TORCH_CHECK(features.dim() == 2 && features.is_floating_point(), "features must be [N, C]");
  TORCH_CHECK(inverse.dim() == 1 && inverse.size(0) == features.size(0) &&
                  inverse.scalar_type() == at::kLong,
              "inverse must be int64 [N]");
  TORCH_CHECK(counts.dim() == 1 && counts.scalar_type() == at::kLong, "counts must be int64 [M]");
  if (inverse.numel() > 0)
    TORCH_CHECK(inverse.max().item<int64_t>() < counts.size(0),
                "inverse holds a voxel index beyond counts");
}

// voxel_reduce_bwd: the defined voxel gradients and (with a max gradient) max are [M, C] in
// the features' dtype.
inline void reduce_grads(const at::Tensor& grad_mean, const at::Tensor& grad_max,
                         const at::Tensor& max, const at::Tensor& features, int64_t m) {
  const int64_t c = features.size(1);
  for (const at::Tensor* t : {&grad_mean, &grad_max}) {
    if (t->defined())
      TORCH_CHECK(t->dim() == 2 && t->size(0) == m && t->size(1) == c &&
                      t->scalar_type() == features.scalar_type(),
                  "voxel gradients must be [M, C] in the features' dtype");
  }
  if (grad_max.defined())
    TORCH_CHECK(max.dim() == 2 && max.size(0) == m && max.size(1) == c &&
                    max.scalar_type() == features.scalar_type(),
                "max must be [M, C] in the features' dtype");
}

// sparse_trilinear_fwd: points [Q, 3], coords int [M, 3], features [M, C] in the points'
// floating dtype, 3 positive voxel sizes and a 3-value origin.
inline void trilinear_fwd(const at::Tensor& points, const at::Tensor& coords,
                          const at::Tensor& features, at::ArrayRef<double> voxel_size,
                          at::ArrayRef<double> origin) {
  TORCH_CHECK(points.dim() == 2 && points.size(1) == 3, "points must be [Q, 3]");
  TORCH_CHECK(coords.dim() == 2 && coords.size(1) == 3 &&
                  (coords.scalar_type() == at::kInt || coords.scalar_type() == at::kLong),
              "coords must be int32 or int64 [M, 3]");
  TORCH_CHECK(features.dim() == 2 && features.size(0) == coords.size(0),
              "features must be [M, C], one row per voxel");
  TORCH_CHECK(points.is_floating_point() && features.scalar_type() == points.scalar_type(),
              "points and features must share one floating dtype");
  TORCH_CHECK(voxel_size.size() == 3 && origin.size() == 3, "voxel_size and origin: 3 values");
  for (int d = 0; d < 3; ++d) TORCH_CHECK(voxel_size[d] > 0, "voxel sizes must be positive");
}

// sparse_trilinear_bwd: grad_out [Q, C], rows int64 [Q, 8] below num_rows, weights [Q, 8] in
// grad_out's dtype.
inline void trilinear_bwd(const at::Tensor& grad_out, const at::Tensor& rows,
                          const at::Tensor& weights, int64_t num_rows) {
  TORCH_CHECK(grad_out.dim() == 2, "grad_out must be [Q, C]");
  TORCH_CHECK(rows.dim() == 2 && rows.size(0) == grad_out.size(0) && rows.size(1) == 8 &&
                  rows.scalar_type() == at::kLong,
              "rows must be int64 [Q, 8]");
  TORCH_CHECK(weights.sizes() == rows.sizes() && weights.scalar_type() == grad_out.scalar_type(),
              "weights must be [Q, 8] in grad_out's dtype");
  if (rows.numel() > 0)
    TORCH_CHECK(rows.max().item<int64_t>() < num_rows, "rows hold an index beyond num_rows");
}

}  // namespace sparse_voxel_args
}  // namespace sparseview
