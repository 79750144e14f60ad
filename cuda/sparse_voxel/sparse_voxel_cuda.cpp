// Thin torch binding of the sparse-voxel CUDA kernels (sparse_voxel_cuda.cu): checks,
// allocation, prefix sums / sorting with ATen, and TORCH_LIBRARY_IMPL(sparseview, CUDA).
// Compiled only where a CUDA device exists (geometry/ops/loader.py); the kernels themselves
// need only the CUDA runtime.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "sparse_voxel.h"
#include "sparse_voxel_args.h"
#include "sparse_voxel_cuda.h"

namespace sparseview {
namespace {

namespace k = sparse_voxel_cuda;

void* current_stream() { return static_cast<void*>(c10::cuda::getCurrentCUDAStream().stream()); }

void check(k::Error error) { TORCH_CHECK(error == nullptr, "sparse_voxel CUDA kernel: ", error); }

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
}

int64_t table_capacity(int64_t n) {
  int64_t cap = 16;
  while (cap < 2 * n) cap <<= 1;
  return cap;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ray_march_cuda(
    const at::Tensor& origins_in, const at::Tensor& dirs_in, const at::Tensor& near_in,
    const at::Tensor& far_in, const at::Tensor& occupancy_in, const at::Tensor& bounds_in,
    double step_in) {
  const int levels = sparse_voxel_args::ray_march(origins_in, dirs_in, near_in, far_in,
                                                   occupancy_in, bounds_in, step_in);
  const int64_t r = origins_in.size(0);
  for (const at::Tensor* t : {&origins_in, &dirs_in, &near_in, &far_in, &occupancy_in})
    check_cuda(*t, "rays, near, far and occupancy");
  const c10::cuda::CUDAGuard guard(origins_in.device());
  const at::Tensor origins = origins_in.contiguous(), dirs = dirs_in.contiguous();
  const at::Tensor near = near_in.contiguous(), far = far_in.contiguous();
  const at::Tensor occupancy = occupancy_in.contiguous();
  const at::Tensor bounds = bounds_in.to(at::kCPU).contiguous();  // [L, 6], read on the host
  const float* b = bounds.data_ptr<float>();
  sparse_voxel_args::level_boxes(b, levels);
  const int res[3] = {static_cast<int>(occupancy.size(1)), static_cast<int>(occupancy.size(2)),
                      static_cast<int>(occupancy.size(3))};
  sparse_voxel::MarchGrid grid;
  sparse_voxel::init_march_grid(grid, static_cast<const uint8_t*>(occupancy.data_ptr()), levels,
                                res, b);
  // The pyramid of uniform blocks (sparse_voxel.h): per mip m, 0 when no cell of a 2^m
  // block is occupied, 2 when all are, else 1 (max-pool + min-pool in ceil mode: edge blocks
  // pool over their own cells only), flattened in the layout init_march_grid chose.
  const at::Tensor occ_float = occupancy.to(at::kFloat);
  std::vector<at::Tensor> mips;
  for (int m = 1; m <= grid.mips; ++m) {
    const int64_t side = int64_t(1) << m;
    const at::Tensor any = at::max_pool3d(occ_float, {side, side, side}, {side, side, side},
                                          {0, 0, 0}, {1, 1, 1}, /*ceil_mode=*/true);
    const at::Tensor all = -at::max_pool3d(-occ_float, {side, side, side}, {side, side, side},
                                           {0, 0, 0}, {1, 1, 1}, /*ceil_mode=*/true);
    TORCH_CHECK(any.size(1) == grid.mip_res[m][0] && any.size(2) == grid.mip_res[m][1] &&
                    any.size(3) == grid.mip_res[m][2],
                "unexpected occupancy pyramid shape");
    mips.push_back((any + all).to(at::kByte).reshape({-1}));
  }
  const at::Tensor pyramid =
      mips.empty() ? at::zeros({1}, occupancy.options().dtype(at::kByte)) : at::cat(mips);
  TORCH_CHECK(mips.empty() || pyramid.numel() == sparse_voxel::pyramid_size(grid),
              "unexpected occupancy pyramid size");
  if (!mips.empty()) grid.pyramid = pyramid.data_ptr<uint8_t>();
  const float step = static_cast<float>(step_in);
  void* stream = current_stream();
  const auto long_opts = origins.options().dtype(at::kLong);
  at::Tensor counts = at::empty({r}, long_opts);
  check(k::ray_march_count(grid, origins.data_ptr<float>(), dirs.data_ptr<float>(),
                           near.data_ptr<float>(), far.data_ptr<float>(), r, step,
                           counts.data_ptr<int64_t>(), stream));
  at::Tensor offsets = at::zeros({r + 1}, long_opts);
  if (r > 0) offsets.slice(0, 1).copy_(counts.cumsum(0));
  const int64_t total = offsets[r].item<int64_t>();
  at::Tensor ray_indices = at::empty({total}, long_opts);
  at::Tensor t_starts = at::empty({total}, origins.options());
  at::Tensor t_ends = at::empty({total}, origins.options());
  if (total > 0) {
    check(k::ray_march_fill(grid, origins.data_ptr<float>(), dirs.data_ptr<float>(),
                            near.data_ptr<float>(), far.data_ptr<float>(), r, step,
                            offsets.data_ptr<int64_t>(), ray_indices.data_ptr<int64_t>(),
                            t_starts.data_ptr<float>(), t_ends.data_ptr<float>(), stream));
  }
  return {offsets, ray_indices, t_starts, t_ends};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> voxel_hash_cuda(
    const at::Tensor& points_in, at::ArrayRef<double> voxel_size,
    at::ArrayRef<double> point_range, int64_t max_points, int64_t max_voxels) {
  int64_t grid[3];
  sparse_voxel_args::voxel_hash(points_in, voxel_size, point_range, max_points, grid);
  check_cuda(points_in, "points");
  const c10::cuda::CUDAGuard guard(points_in.device());
  double size[3], lo[3];
  for (int d = 0; d < 3; ++d) {
    size[d] = voxel_size[d];
    lo[d] = point_range[d];
  }
  const at::Tensor points = points_in.contiguous();
  const int64_t n = points.size(0), c = points.size(1);
  TORCH_CHECK(n < std::numeric_limits<int32_t>::max(), "at most 2^31 - 1 points");
  const auto long_opts = points.options().dtype(at::kLong);
  void* stream = current_stream();
  at::Tensor keys = at::empty({n}, long_opts);
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "voxel_hash_cuda", [&] {
    check(k::voxel_keys<scalar_t>(points.data_ptr<scalar_t>(), n, c, size, lo, grid,
                                  keys.data_ptr<int64_t>(), stream));
  });
  const int64_t capacity = table_capacity(n);
  at::Tensor table_keys = at::full({capacity}, -1, long_opts);
  at::Tensor table_first = at::full({capacity}, std::numeric_limits<int32_t>::max(),
                                    points.options().dtype(at::kInt));
  at::Tensor slot = at::empty({n}, long_opts);
  check(k::voxel_table_insert(keys.data_ptr<int64_t>(), n, table_keys.data_ptr<int64_t>(),
                              table_first.data_ptr<int32_t>(), capacity,
                              slot.data_ptr<int64_t>(), stream));
  at::Tensor is_first = at::empty({n}, long_opts);
  check(k::voxel_mark_first(keys.data_ptr<int64_t>(), slot.data_ptr<int64_t>(),
                            table_first.data_ptr<int32_t>(), n, is_first.data_ptr<int64_t>(),
                            stream));
  const at::Tensor first_rank = is_first.cumsum(0);
  const int64_t voxels = n > 0 ? first_rank[n - 1].item<int64_t>() : 0;
  const int64_t m = max_voxels >= 0 ? std::min(voxels, max_voxels) : voxels;
  at::Tensor inverse = at::empty({n}, long_opts);
  at::Tensor coords = at::empty({m, 3}, points.options().dtype(at::kInt));
  check(k::voxel_assign(keys.data_ptr<int64_t>(), slot.data_ptr<int64_t>(),
                        table_first.data_ptr<int32_t>(), first_rank.data_ptr<int64_t>(), n,
                        max_voxels, grid, inverse.data_ptr<int64_t>(), coords.data_ptr<int32_t>(),
                        stream));
  if (max_points >= 0 && n > 0) {
    // Rank of each point within its voxel in input order: a stable sort by voxel.
    const at::Tensor kept = (inverse >= 0).nonzero().squeeze(1);
    const at::Tensor voxel = inverse.index_select(0, kept);
    const at::Tensor order = std::get<1>(voxel.sort(/*stable=*/true, /*dim=*/0, false));
    const at::Tensor sorted = voxel.index_select(0, order);
    const at::Tensor start = at::searchsorted(sorted, sorted);
    const at::Tensor rank = at::arange(sorted.size(0), long_opts) - start;
    const at::Tensor drop = kept.index_select(0, order).masked_select(rank >= max_points);
    inverse.index_fill_(0, drop, -1);
  }
  at::Tensor counts = at::zeros({m}, long_opts);
  const at::Tensor kept_voxels = inverse.masked_select(inverse >= 0);
  if (kept_voxels.numel() > 0) counts.index_add_(0, kept_voxels, at::ones_like(kept_voxels));
  return {coords, inverse, counts};
}

void check_reduce_inputs(const at::Tensor& features, const at::Tensor& inverse,
                         const at::Tensor& counts) {
  check_cuda(features, "features");
  check_cuda(inverse, "inverse");
  check_cuda(counts, "counts");
  sparse_voxel_args::reduce_inputs(features, inverse, counts);
}

std::tuple<at::Tensor, at::Tensor> voxel_reduce_cuda(const at::Tensor& features_in,
                                                     const at::Tensor& inverse_in,
                                                     const at::Tensor& counts_in) {
  const c10::cuda::CUDAGuard guard(features_in.device());
  const at::Tensor features = features_in.contiguous();
  const at::Tensor inverse = inverse_in.contiguous();
  const at::Tensor counts = counts_in.contiguous();
  check_reduce_inputs(features, inverse, counts);
  const int64_t n = features.size(0), c = features.size(1), m = counts.size(0);
  at::Tensor mean = at::zeros({m, c}, features.options());
  at::Tensor max = at::full({m, c}, -std::numeric_limits<double>::infinity(),
                            features.options());
  void* stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "voxel_reduce_cuda", [&] {
    check(k::voxel_reduce<scalar_t>(features.data_ptr<scalar_t>(), inverse.data_ptr<int64_t>(),
                                    counts.data_ptr<int64_t>(), n, c, m,
                                    mean.data_ptr<scalar_t>(), max.data_ptr<scalar_t>(),
                                    stream));
  });
  return {mean, max};
}

at::Tensor voxel_reduce_bwd_cuda(const std::optional<at::Tensor>& grad_mean_in,
                                 const std::optional<at::Tensor>& grad_max_in,
                                 const at::Tensor& features_in, const at::Tensor& inverse_in,
                                 const at::Tensor& counts_in, const at::Tensor& max_in) {
  const c10::cuda::CUDAGuard guard(features_in.device());
  const at::Tensor features = features_in.contiguous();
  const at::Tensor inverse = inverse_in.contiguous();
  const at::Tensor counts = counts_in.contiguous();
  check_reduce_inputs(features, inverse, counts);
  const int64_t n = features.size(0), c = features.size(1), m = counts.size(0);
  const bool has_mean = grad_mean_in.has_value() && grad_mean_in->defined();
  const bool has_max = grad_max_in.has_value() && grad_max_in->defined();
  at::Tensor grad = at::zeros({n, c}, features.options());
  if (!has_mean && !has_max) return grad;
  const at::Tensor grad_mean = has_mean ? grad_mean_in->contiguous() : at::Tensor();
  const at::Tensor grad_max = has_max ? grad_max_in->contiguous() : at::Tensor();
  const at::Tensor max = max_in.contiguous();
  sparse_voxel_args::reduce_grads(grad_mean, grad_max, max, features, m);
  for (const at::Tensor* t : {&grad_mean, &grad_max})
    if (t->defined()) check_cuda(*t, "voxel gradients");
  if (has_max) check_cuda(max, "max");
  at::Tensor ties = at::zeros({has_max ? m : 0, c}, features.options().dtype(at::kInt));
  void* stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "voxel_reduce_bwd_cuda", [&] {
    check(k::voxel_reduce_bwd<scalar_t>(
        has_mean ? grad_mean.data_ptr<scalar_t>() : nullptr,
        has_max ? grad_max.data_ptr<scalar_t>() : nullptr, features.data_ptr<scalar_t>(),
        inverse.data_ptr<int64_t>(), counts.data_ptr<int64_t>(),
        has_max ? max.data_ptr<scalar_t>() : nullptr, n, c, m,
        has_max ? ties.data_ptr<int32_t>() : nullptr, grad.data_ptr<scalar_t>(), stream));
  });
  return grad;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_trilinear_fwd_cuda(
    const at::Tensor& points_in, const at::Tensor& coords_in, const at::Tensor& features_in,
    at::ArrayRef<double> voxel_size, at::ArrayRef<double> origin, bool corners) {
  sparse_voxel_args::trilinear_fwd(points_in, coords_in, features_in, voxel_size, origin);
  check_cuda(points_in, "points");
  check_cuda(coords_in, "coords");
  check_cuda(features_in, "features");
  const c10::cuda::CUDAGuard guard(points_in.device());
  const at::Tensor points = points_in.contiguous();
  const at::Tensor coords = coords_in.to(at::kLong).contiguous();
  const at::Tensor features = features_in.contiguous();
  const int64_t q = points.size(0), m = coords.size(0), c = features.size(1);
  TORCH_CHECK(m < std::numeric_limits<int32_t>::max(), "at most 2^31 - 1 voxels");
  if (m > 0) {
    const bool in_range = ((coords >= -sparse_voxel::kCoordOffset) &
                           (coords < sparse_voxel::kCoordOffset)).all().item<bool>();
    TORCH_CHECK(in_range, "voxel coordinates must lie in [-2^20, 2^20)");
  }
  const auto long_opts = points.options().dtype(at::kLong);
  const int64_t capacity = table_capacity(m);
  at::Tensor table_keys = at::full({capacity}, -1, long_opts);
  at::Tensor table_rows = at::full({capacity}, std::numeric_limits<int32_t>::max(),
                                   points.options().dtype(at::kInt));
  void* stream = current_stream();
  check(k::trilinear_table(coords.data_ptr<int64_t>(), m, table_keys.data_ptr<int64_t>(),
                           table_rows.data_ptr<int32_t>(), capacity, stream));
  at::Tensor out = at::empty({q, c}, features.options());
  const int64_t q_corners = corners ? q : 0;  // (empty [0, 8] when not returned)
  at::Tensor rows = at::empty({q_corners, 8}, long_opts);
  at::Tensor weights = at::empty({q_corners, 8}, points.options());
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "sparse_trilinear_fwd_cuda", [&] {
    const scalar_t size[3] = {static_cast<scalar_t>(voxel_size[0]),
                              static_cast<scalar_t>(voxel_size[1]),
                              static_cast<scalar_t>(voxel_size[2])};
    const scalar_t org[3] = {static_cast<scalar_t>(origin[0]), static_cast<scalar_t>(origin[1]),
                             static_cast<scalar_t>(origin[2])};
    check(k::trilinear_fwd<scalar_t>(points.data_ptr<scalar_t>(), q, size, org,
                                     table_keys.data_ptr<int64_t>(),
                                     table_rows.data_ptr<int32_t>(), capacity,
                                     features.data_ptr<scalar_t>(), c, out.data_ptr<scalar_t>(),
                                     corners ? rows.data_ptr<int64_t>() : nullptr,
                                     corners ? weights.data_ptr<scalar_t>() : nullptr, stream));
  });
  return {out, rows, weights};
}

at::Tensor sparse_trilinear_bwd_cuda(const at::Tensor& grad_out_in, const at::Tensor& rows_in,
                                     const at::Tensor& weights_in, int64_t num_rows) {
  sparse_voxel_args::trilinear_bwd(grad_out_in, rows_in, weights_in, num_rows);
  const int64_t q = grad_out_in.size(0), c = grad_out_in.size(1);
  check_cuda(grad_out_in, "grad_out");
  check_cuda(rows_in, "rows");
  check_cuda(weights_in, "weights");
  const c10::cuda::CUDAGuard guard(grad_out_in.device());
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor rows = rows_in.contiguous();
  const at::Tensor weights = weights_in.contiguous();
  at::Tensor grad = at::zeros({num_rows, c}, grad_out.options());
  void* stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "sparse_trilinear_bwd_cuda", [&] {
    check(k::trilinear_bwd<scalar_t>(grad_out.data_ptr<scalar_t>(), rows.data_ptr<int64_t>(),
                                     weights.data_ptr<scalar_t>(), q, c,
                                     grad.data_ptr<scalar_t>(), stream));
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseview, CUDA, m) {
  m.impl("ray_march", &ray_march_cuda);
  m.impl("voxel_hash", &voxel_hash_cuda);
  m.impl("voxel_reduce", &voxel_reduce_cuda);
  m.impl("voxel_reduce_bwd", &voxel_reduce_bwd_cuda);
  m.impl("sparse_trilinear_fwd", &sparse_trilinear_fwd_cuda);
  m.impl("sparse_trilinear_bwd", &sparse_trilinear_bwd_cuda);
}

}  // namespace sparseview
