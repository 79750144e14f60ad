// CPU backend of sparseview::voxelize: hard voxelization of a point cloud (the operation of
// mmcv's hard_voxelize, used by SECOND / CenterPoint / TransFusion / SparseFusion).
//
//   coordinate of a point  c = floor((p - range_min) / voxel_size)  per axis (x, y, z)
//   a point is kept when 0 <= c < grid size (grid = round((range_max - range_min) / size))
//   voxels are numbered in the order of their first point; once max_voxels voxels exist,
//   points of new voxels are dropped; a voxel keeps its first max_points points.
//
// The pure-PyTorch oracle is geometry/ops/voxelize/_torch_impl.py (same float
// expression for the coordinates, so both keep and bin the same points).
//
// Coordinates are computed in parallel (OpenMP through at::parallel_for); the assignment
// of points to voxels is one sequential pass over a hash map (first-come order is what
// makes the output deterministic, whatever the thread count); the copy of point features
// into their slots is parallel again, since every kept point owns one slot.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <unordered_map>
#include <vector>

namespace sparseview {
namespace {

template <typename scalar_t>
void compute_coords(const at::Tensor& points, const std::vector<double>& size,
                    const std::vector<double>& range, const int64_t grid[3],
                    std::vector<int64_t>& linear) {
  const int64_t n = points.size(0);
  const int64_t c = points.size(1);
  const scalar_t* p = points.data_ptr<scalar_t>();
  const scalar_t vs[3] = {static_cast<scalar_t>(size[0]), static_cast<scalar_t>(size[1]),
                          static_cast<scalar_t>(size[2])};
  const scalar_t lo[3] = {static_cast<scalar_t>(range[0]), static_cast<scalar_t>(range[1]),
                          static_cast<scalar_t>(range[2])};
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int64_t idx[3];
      bool inside = true;
      for (int d = 0; d < 3; ++d) {
        const scalar_t q = (p[i * c + d] - lo[d]) / vs[d];
        if (!std::isfinite(static_cast<double>(q))) {
          inside = false;
          break;
        }
        const double f = std::floor(static_cast<double>(q));
        if (f < 0 || f >= static_cast<double>(grid[d])) {
          inside = false;
          break;
        }
        idx[d] = static_cast<int64_t>(f);
      }
      // Linear id in (z, y, x) order, -1 for points outside the range.
      linear[i] = inside ? (idx[2] * grid[1] + idx[1]) * grid[0] + idx[0] : -1;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> voxelize_cpu(
    const at::Tensor& points_in, at::ArrayRef<double> voxel_size,
    at::ArrayRef<double> point_range, int64_t max_points, int64_t max_voxels) {
  TORCH_CHECK(points_in.dim() == 2 && points_in.size(1) >= 3, "points must be [N, C>=3]");
  TORCH_CHECK(points_in.is_floating_point(), "points must be floating point");
  TORCH_CHECK(voxel_size.size() == 3, "voxel_size must have 3 values (x, y, z)");
  TORCH_CHECK(point_range.size() == 6, "point_range must be (x0, y0, z0, x1, y1, z1)");
  TORCH_CHECK(max_points >= 1 && max_voxels >= 0, "max_points >= 1 and max_voxels >= 0");
  std::vector<double> size(voxel_size.begin(), voxel_size.end());
  std::vector<double> range(point_range.begin(), point_range.end());
  int64_t grid[3];
  for (int d = 0; d < 3; ++d) {
    TORCH_CHECK(size[d] > 0 && range[d + 3] > range[d], "voxel sizes and the range must be positive");
    grid[d] = static_cast<int64_t>(std::llround((range[d + 3] - range[d]) / size[d]));
  }
  const at::Tensor points = points_in.contiguous();
  const int64_t n = points.size(0);
  const int64_t c = points.size(1);

  std::vector<int64_t> linear(n);
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "voxelize_coords", [&] {
    compute_coords<scalar_t>(points, size, range, grid, linear);
  });

  // Sequential first-come assignment: slot[i] = voxel * max_points + rank, or -1.
  std::vector<int64_t> slot(n, -1);
  std::vector<int64_t> voxel_linear;
  std::vector<int32_t> counts;
  std::unordered_map<int64_t, int64_t> voxel_of;
  voxel_of.reserve(static_cast<size_t>(std::min<int64_t>(n, max_voxels) * 2 + 1));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t key = linear[i];
    if (key < 0) continue;
    auto it = voxel_of.find(key);
    int64_t v;
    if (it == voxel_of.end()) {
      if (static_cast<int64_t>(voxel_linear.size()) >= max_voxels) continue;
      v = static_cast<int64_t>(voxel_linear.size());
      voxel_of.emplace(key, v);
      voxel_linear.push_back(key);
      counts.push_back(0);
    } else {
      v = it->second;
    }
    if (counts[v] >= max_points) continue;
    slot[i] = v * max_points + counts[v];
    counts[v] += 1;
  }

  const int64_t m = static_cast<int64_t>(voxel_linear.size());
  at::Tensor voxels = at::zeros({m, max_points, c}, points.options());
  at::Tensor coords = at::empty({m, 3}, points.options().dtype(at::kInt));
  at::Tensor num_points = at::empty({m}, points.options().dtype(at::kInt));
  int32_t* coords_ptr = coords.data_ptr<int32_t>();
  int32_t* num_ptr = num_points.data_ptr<int32_t>();
  for (int64_t v = 0; v < m; ++v) {
    const int64_t key = voxel_linear[v];
    coords_ptr[v * 3 + 0] = static_cast<int32_t>(key / (grid[0] * grid[1]));  // z
    coords_ptr[v * 3 + 1] = static_cast<int32_t>((key / grid[0]) % grid[1]);  // y
    coords_ptr[v * 3 + 2] = static_cast<int32_t>(key % grid[0]);  // x
    num_ptr[v] = counts[v];
  }
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "voxelize_copy", [&] {
    const scalar_t* src = points.data_ptr<scalar_t>();
    scalar_t* dst = voxels.data_ptr<scalar_t>();
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        if (slot[i] < 0) continue;
        for (int64_t k = 0; k < c; ++k) dst[slot[i] * c + k] = src[i * c + k];
      }
    });
  });
  return {voxels, coords, num_points};
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseview, CPU, m) { m.impl("voxelize", &voxelize_cpu); }

}  // namespace sparseview
