// CPU backend (OpenMP through at::parallel_for) of the sparse-voxel ops:
//
//   ray_march            occupancy-grid ray marching, packed samples (CSR offsets per ray)
//   voxel_hash           point -> voxel hashing: unique voxels (first-come order), inverse
//                        index, counts, optional per-voxel / total caps
//   voxel_reduce(_bwd)   mean and max of features per voxel, and their gradient
//   sparse_trilinear_fwd/_bwd  trilinear sampling of features stored in a sparse voxel hash
//
// The arithmetic that decides discrete outcomes is shared with the CUDA kernels in
// sparse_voxel.h; the PyTorch references are geometry/ops/sparse_voxel/_torch_impl.py.
// Outputs do not depend on the thread count: parallel loops write disjoint rows, and every
// sum runs in a fixed order (input order).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#include "sparse_voxel.h"
#include "sparse_voxel_args.h"

namespace sparseview {
namespace {

using sparse_voxel::MarchGrid;

// ---------------------------------------------------------------------------------------
// Open-addressing hash map int64 key (>= 0) -> int64 value; linear probing, power-of-two
// capacity at least twice the number of keys.
// ---------------------------------------------------------------------------------------
class KeyTable {
 public:
  explicit KeyTable(int64_t expected) {
    int64_t cap = 16;
    while (cap < 2 * expected) cap <<= 1;
    mask_ = static_cast<uint64_t>(cap - 1);
    slots_.assign(static_cast<size_t>(cap), Slot{-1, -1});
  }
  // Returns the value stored for key, or inserts `value` and returns it.
  int64_t find_or_insert(int64_t key, int64_t value, bool& inserted) {
    uint64_t h = sparse_voxel::mix_hash(static_cast<uint64_t>(key)) & mask_;
    while (true) {
      Slot& s = slots_[h];
      if (s.key == key) {
        inserted = false;
        return s.value;
      }
      if (s.key < 0) {
        s.key = key;
        s.value = value;
        inserted = true;
        return value;
      }
      h = (h + 1) & mask_;
    }
  }
  // Starts loading the slot of `key` (the loops look a few keys ahead: the table is larger
  // than the caches and the keys are in no spatial order).
  void prefetch(int64_t key) const {
    __builtin_prefetch(&slots_[sparse_voxel::mix_hash(static_cast<uint64_t>(key)) & mask_]);
  }
  // -1 when absent.
  int64_t find(int64_t key) const {
    uint64_t h = sparse_voxel::mix_hash(static_cast<uint64_t>(key)) & mask_;
    while (true) {
      const Slot& s = slots_[h];
      if (s.key == key) return s.value;
      if (s.key < 0) return -1;
      h = (h + 1) & mask_;
    }
  }

 private:
  struct Slot {
    int64_t key;
    int64_t value;
  };
  uint64_t mask_;
  std::vector<Slot> slots_;
};

// ---------------------------------------------------------------------------------------
// ray_march
// ---------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ray_march_cpu(
    const at::Tensor& origins_in, const at::Tensor& dirs_in, const at::Tensor& near_in,
    const at::Tensor& far_in, const at::Tensor& occupancy_in, const at::Tensor& bounds_in,
    double step_in) {
  const int levels = sparse_voxel_args::ray_march(origins_in, dirs_in, near_in, far_in,
                                                   occupancy_in, bounds_in, step_in);
  const int64_t r = origins_in.size(0);
  const at::Tensor origins = origins_in.contiguous(), dirs = dirs_in.contiguous();
  const at::Tensor near = near_in.contiguous(), far = far_in.contiguous();
  const at::Tensor occupancy = occupancy_in.contiguous();
  const at::Tensor bounds = bounds_in.contiguous();
  const float* b = bounds.data_ptr<float>();
  sparse_voxel_args::level_boxes(b, levels);
  const int res[3] = {static_cast<int>(occupancy.size(1)), static_cast<int>(occupancy.size(2)),
                      static_cast<int>(occupancy.size(3))};
  MarchGrid grid;
  init_march_grid(grid, static_cast<const uint8_t*>(occupancy.data_ptr()), levels, res, b);
  std::vector<uint8_t> pyramid(static_cast<size_t>(sparse_voxel::pyramid_size(grid)));
  sparse_voxel::build_pyramid(grid, pyramid.data());
  grid.pyramid = pyramid.data();
  const float step = static_cast<float>(step_in);

  // One pass: chunks of rays write their samples into their own buffers, then the buffers
  // are concatenated in ray order.
  constexpr int64_t kChunk = 512;
  const int64_t chunks = (r + kChunk - 1) / kChunk;
  struct Buffer {
    std::vector<float> t0, t1;
    std::vector<int64_t> ray;
  };
  std::vector<Buffer> buffers(static_cast<size_t>(chunks));
  at::Tensor offsets = at::empty({r + 1}, origins.options().dtype(at::kLong));
  int64_t* off = offsets.data_ptr<int64_t>();
  const float* o = origins.data_ptr<float>();
  const float* d = dirs.data_ptr<float>();
  const float* nr = near.data_ptr<float>();
  const float* fr = far.data_ptr<float>();
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      Buffer& buf = buffers[static_cast<size_t>(c)];
      for (int64_t i = c * kChunk; i < std::min(r, (c + 1) * kChunk); ++i) {
        off[i + 1] = sparse_voxel::march_ray(grid, o + i * 3, d + i * 3, nr[i], fr[i], step,
                                             [&](float t0, float t1) {
                                               buf.t0.push_back(t0);
                                               buf.t1.push_back(t1);
                                               buf.ray.push_back(i);
                                             });
      }
    }
  });
  off[0] = 0;
  for (int64_t i = 0; i < r; ++i) off[i + 1] += off[i];
  std::vector<int64_t> chunk_start(static_cast<size_t>(chunks) + 1, 0);
  for (int64_t c = 0; c < chunks; ++c)
    chunk_start[c + 1] = chunk_start[c] + static_cast<int64_t>(buffers[c].t0.size());
  const int64_t total = chunk_start[chunks];
  at::Tensor ray_indices = at::empty({total}, origins.options().dtype(at::kLong));
  at::Tensor t_starts = at::empty({total}, origins.options());
  at::Tensor t_ends = at::empty({total}, origins.options());
  int64_t* ri = ray_indices.data_ptr<int64_t>();
  float* ts = t_starts.data_ptr<float>();
  float* te = t_ends.data_ptr<float>();
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const Buffer& buf = buffers[static_cast<size_t>(c)];
      const size_t n = buf.t0.size();
      if (n == 0) continue;
      std::memcpy(ts + chunk_start[c], buf.t0.data(), n * sizeof(float));
      std::memcpy(te + chunk_start[c], buf.t1.data(), n * sizeof(float));
      std::memcpy(ri + chunk_start[c], buf.ray.data(), n * sizeof(int64_t));
    }
  });
  return {offsets, ray_indices, t_starts, t_ends};
}

// ---------------------------------------------------------------------------------------
// voxel_hash
// ---------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor, at::Tensor> voxel_hash_cpu(
    const at::Tensor& points_in, at::ArrayRef<double> voxel_size,
    at::ArrayRef<double> point_range, int64_t max_points, int64_t max_voxels) {
  int64_t grid[3];
  sparse_voxel_args::voxel_hash(points_in, voxel_size, point_range, max_points, grid);
  const at::Tensor points = points_in.contiguous();
  const int64_t n = points.size(0);
  const int64_t c = points.size(1);
  std::vector<int64_t> linear(static_cast<size_t>(n));
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "voxel_hash_keys", [&] {
    const scalar_t* p = points.data_ptr<scalar_t>();
    const scalar_t size[3] = {static_cast<scalar_t>(voxel_size[0]),
                              static_cast<scalar_t>(voxel_size[1]),
                              static_cast<scalar_t>(voxel_size[2])};
    const scalar_t lo[3] = {static_cast<scalar_t>(point_range[0]),
                            static_cast<scalar_t>(point_range[1]),
                            static_cast<scalar_t>(point_range[2])};
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        linear[i] = sparse_voxel::point_linear_key<scalar_t>(p + i * c, lo, size, grid);
    });
  });

  // Sequential first-come numbering: voxels in the order of their first point (the output
  // is the same whatever the thread count). Consecutive points often share a voxel
  // (LiDAR scans), so the last key is remembered.
  at::Tensor inverse = at::empty({n}, points.options().dtype(at::kLong));
  int64_t* inv = inverse.data_ptr<int64_t>();
  std::vector<int64_t> voxel_linear;
  std::vector<int64_t> counts;
  const int64_t voxel_cap = max_voxels < 0 ? std::numeric_limits<int64_t>::max() : max_voxels;
  const int64_t point_cap = max_points < 0 ? std::numeric_limits<int64_t>::max() : max_points;
  KeyTable table(n);
  voxel_linear.reserve(static_cast<size_t>(std::min<int64_t>(n, voxel_cap)));
  counts.reserve(static_cast<size_t>(std::min<int64_t>(n, voxel_cap)));
  int64_t last_key = -1, last_voxel = -1;
  constexpr int64_t kAhead = 16;
  for (int64_t i = 0; i < n; ++i) {
    if (i + kAhead < n && linear[i + kAhead] >= 0) table.prefetch(linear[i + kAhead]);
    const int64_t key = linear[i];
    inv[i] = -1;
    if (key < 0) continue;
    int64_t v;
    if (key == last_key) {
      v = last_voxel;
    } else {
      const int64_t next = static_cast<int64_t>(voxel_linear.size());
      if (next >= voxel_cap) {
        v = table.find(key);  // no new voxels: points of unseen voxels are dropped
      } else {
        bool inserted;
        v = table.find_or_insert(key, next, inserted);
        if (inserted) {
          voxel_linear.push_back(key);
          counts.push_back(0);
        }
      }
      last_key = key;
      last_voxel = v;
    }
    if (v < 0 || counts[v] >= point_cap) continue;
    counts[v] += 1;
    inv[i] = v;
  }
  const int64_t m = static_cast<int64_t>(voxel_linear.size());
  at::Tensor coords = at::empty({m, 3}, points.options().dtype(at::kInt));
  at::Tensor count_t = at::empty({m}, points.options().dtype(at::kLong));
  int32_t* cp = coords.data_ptr<int32_t>();
  int64_t* np = count_t.data_ptr<int64_t>();
  at::parallel_for(0, m, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t v = begin; v < end; ++v) {
      const int64_t key = voxel_linear[v];
      cp[v * 3 + 0] = static_cast<int32_t>(key % grid[0]);  // x
      cp[v * 3 + 1] = static_cast<int32_t>((key / grid[0]) % grid[1]);  // y
      cp[v * 3 + 2] = static_cast<int32_t>(key / (grid[0] * grid[1]));  // z
      np[v] = counts[v];
    }
  });
  return {coords, inverse, count_t};
}

void check_reduce_inputs(const at::Tensor& features, const at::Tensor& inverse,
                         const at::Tensor& counts) {
  sparse_voxel_args::reduce_inputs(features, inverse, counts);
}

// ---------------------------------------------------------------------------------------
// voxel_reduce: mean and max per voxel (points with inverse -1 are ignored).
// ---------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> voxel_reduce_cpu(const at::Tensor& features_in,
                                                    const at::Tensor& inverse_in,
                                                    const at::Tensor& counts_in) {
  const at::Tensor features = features_in.contiguous();
  const at::Tensor inverse = inverse_in.contiguous();
  const at::Tensor counts = counts_in.contiguous();
  check_reduce_inputs(features, inverse, counts);
  const int64_t n = features.size(0), c = features.size(1), m = counts.size(0);
  at::Tensor mean = at::empty({m, c}, features.options());
  at::Tensor max = at::empty({m, c}, features.options());
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "voxel_reduce", [&] {
    const scalar_t* __restrict__ f = features.data_ptr<scalar_t>();
    const int64_t* inv = inverse.data_ptr<int64_t>();
    const int64_t* cnt = counts.data_ptr<int64_t>();
    scalar_t* __restrict__ sum = mean.data_ptr<scalar_t>();
    scalar_t* __restrict__ mx = max.data_ptr<scalar_t>();
    // Sums in input order (deterministic), as index_add: 0 + f, then + f ...; the max keeps
    // NaN like torch's amax. A voxel's first point initialises its rows (no fill passes).
    std::vector<uint8_t> seen(static_cast<size_t>(m), 0);
    constexpr int64_t kAhead = 8;
    for (int64_t i = 0; i < n; ++i) {
      if (i + kAhead < n && inv[i + kAhead] >= 0) {
        __builtin_prefetch(sum + inv[i + kAhead] * c, 1);
        __builtin_prefetch(mx + inv[i + kAhead] * c, 1);
      }
      const int64_t v = inv[i];
      if (v < 0) continue;
      const scalar_t* __restrict__ fi = f + i * c;
      scalar_t* __restrict__ s = sum + v * c;
      scalar_t* __restrict__ x = mx + v * c;
      if (!seen[v]) {
        seen[v] = 1;
        for (int64_t k = 0; k < c; ++k) {
          s[k] = static_cast<scalar_t>(0) + fi[k];
          x[k] = fi[k];
        }
        continue;
      }
      for (int64_t k = 0; k < c; ++k) {
        s[k] += fi[k];
        x[k] = (fi[k] > x[k] || fi[k] != fi[k]) ? fi[k] : x[k];
      }
    }
    at::parallel_for(0, m, 2048, [&](int64_t begin, int64_t end) {
      for (int64_t v = begin; v < end; ++v) {
        if (!seen[v]) {  // a voxel without points: mean 0, max -inf
          for (int64_t k = 0; k < c; ++k) {
            sum[v * c + k] = 0;
            mx[v * c + k] = -std::numeric_limits<scalar_t>::infinity();
          }
          continue;
        }
        const scalar_t den = static_cast<scalar_t>(cnt[v] > 1 ? cnt[v] : 1);
        for (int64_t k = 0; k < c; ++k) sum[v * c + k] = sum[v * c + k] / den;
      }
    });
  });
  return {mean, max};
}

// Gradient of voxel_reduce: mean -> grad / count to every point of the voxel; max -> grad
// split evenly among the points equal to the max (torch's amax rule).
at::Tensor voxel_reduce_bwd_cpu(const std::optional<at::Tensor>& grad_mean_in,
                                const std::optional<at::Tensor>& grad_max_in,
                                const at::Tensor& features_in, const at::Tensor& inverse_in,
                                const at::Tensor& counts_in, const at::Tensor& max_in) {
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
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "voxel_reduce_bwd", [&] {
    const scalar_t* f = features.data_ptr<scalar_t>();
    const int64_t* inv = inverse.data_ptr<int64_t>();
    const int64_t* cnt = counts.data_ptr<int64_t>();
    const scalar_t* gm = has_mean ? grad_mean.data_ptr<scalar_t>() : nullptr;
    const scalar_t* gx = has_max ? grad_max.data_ptr<scalar_t>() : nullptr;
    const scalar_t* mx = has_max ? max.data_ptr<scalar_t>() : nullptr;
    std::vector<int64_t> ties;
    if (has_max) {
      ties.assign(static_cast<size_t>(m * c), 0);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t v = inv[i];
        if (v < 0) continue;
        for (int64_t k = 0; k < c; ++k) ties[v * c + k] += f[i * c + k] == mx[v * c + k];
      }
    }
    scalar_t* g = grad.data_ptr<scalar_t>();
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t v = inv[i];
        if (v < 0) continue;
        const scalar_t den = static_cast<scalar_t>(cnt[v] > 1 ? cnt[v] : 1);
        for (int64_t k = 0; k < c; ++k) {
          scalar_t value = has_mean ? gm[v * c + k] / den : static_cast<scalar_t>(0);
          if (has_max && f[i * c + k] == mx[v * c + k])
            value = value + gx[v * c + k] / static_cast<scalar_t>(ties[v * c + k]);
          g[i * c + k] = value;
        }
      }
    });
  });
  return grad;
}

// ---------------------------------------------------------------------------------------
// sparse_trilinear
// ---------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_trilinear_fwd_cpu(
    const at::Tensor& points_in, const at::Tensor& coords_in, const at::Tensor& features_in,
    at::ArrayRef<double> voxel_size, at::ArrayRef<double> origin) {
  sparse_voxel_args::trilinear_fwd(points_in, coords_in, features_in, voxel_size, origin);
  const at::Tensor points = points_in.contiguous();
  const at::Tensor coords = coords_in.to(at::kLong).contiguous();
  const at::Tensor features = features_in.contiguous();
  const int64_t q = points.size(0), m = coords.size(0), c = features.size(1);
  const int64_t* cd = coords.data_ptr<int64_t>();
  KeyTable table(m);
  for (int64_t v = 0; v < m; ++v) {
    const int64_t key = sparse_voxel::coord_key(cd[v * 3], cd[v * 3 + 1], cd[v * 3 + 2]);
    TORCH_CHECK(key >= 0, "voxel coordinates must lie in [-2^20, 2^20)");
    bool inserted;
    table.find_or_insert(key, v, inserted);  // duplicates: the first row wins
  }
  at::Tensor out = at::zeros({q, c}, features.options());
  at::Tensor rows = at::empty({q, 8}, points.options().dtype(at::kLong));
  at::Tensor weights = at::empty({q, 8}, points.options());
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "sparse_trilinear_fwd", [&] {
    const scalar_t* p = points.data_ptr<scalar_t>();
    const scalar_t* f = features.data_ptr<scalar_t>();
    const scalar_t size[3] = {static_cast<scalar_t>(voxel_size[0]),
                              static_cast<scalar_t>(voxel_size[1]),
                              static_cast<scalar_t>(voxel_size[2])};
    const scalar_t org[3] = {static_cast<scalar_t>(origin[0]), static_cast<scalar_t>(origin[1]),
                             static_cast<scalar_t>(origin[2])};
    scalar_t* o = out.data_ptr<scalar_t>();
    int64_t* rw = rows.data_ptr<int64_t>();
    scalar_t* wt = weights.data_ptr<scalar_t>();
    // Batches of queries: all corner slots are requested before any is read, then all
    // feature rows (the table and the rows are in no order the caches could follow).
    constexpr int64_t kBatch = 16;
    at::parallel_for(0, (q + kBatch - 1) / kBatch, 64, [&](int64_t begin, int64_t end) {
      int64_t keys[kBatch][8];
      for (int64_t batch = begin; batch < end; ++batch) {
        const int64_t i0 = batch * kBatch, i1 = std::min(q, i0 + kBatch);
        for (int64_t i = i0; i < i1; ++i) {
          sparse_voxel::trilinear_corners<scalar_t>(p + i * 3, org, size, keys[i - i0],
                                                    wt + i * 8);
          for (int k = 0; k < 8; ++k)
            if (keys[i - i0][k] >= 0) table.prefetch(keys[i - i0][k]);
        }
        for (int64_t i = i0; i < i1; ++i)
          for (int k = 0; k < 8; ++k) {
            const int64_t key = keys[i - i0][k];
            const int64_t row = key < 0 ? -1 : table.find(key);
            rw[i * 8 + k] = row;
            if (row >= 0) __builtin_prefetch(f + row * c);
          }
        for (int64_t i = i0; i < i1; ++i) {
          scalar_t* __restrict__ oi = o + i * c;
          for (int k = 0; k < 8; ++k) {
            const int64_t row = rw[i * 8 + k];
            if (row < 0) continue;
            const scalar_t w = wt[i * 8 + k];
            const scalar_t* __restrict__ fr = f + row * c;
            for (int64_t ch = 0; ch < c; ++ch) oi[ch] += w * fr[ch];
          }
        }
      }
    });
  });
  return {out, rows, weights};
}

at::Tensor sparse_trilinear_bwd_cpu(const at::Tensor& grad_out_in, const at::Tensor& rows_in,
                                    const at::Tensor& weights_in, int64_t num_rows) {
  sparse_voxel_args::trilinear_bwd(grad_out_in, rows_in, weights_in, num_rows);
  const int64_t q = grad_out_in.size(0), c = grad_out_in.size(1);
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor rows = rows_in.contiguous();
  const at::Tensor weights = weights_in.contiguous();
  at::Tensor grad = at::zeros({num_rows, c}, grad_out.options());
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "sparse_trilinear_bwd", [&] {
    const scalar_t* go = grad_out.data_ptr<scalar_t>();
    const int64_t* rw = rows.data_ptr<int64_t>();
    const scalar_t* wt = weights.data_ptr<scalar_t>();
    scalar_t* g = grad.data_ptr<scalar_t>();
    // Threads own channel ranges (no two write one value); sums run in query order.
    at::parallel_for(0, c, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t i = 0; i < q; ++i) {
        for (int k = 0; k < 8; ++k) {
          const int64_t row = rw[i * 8 + k];
          if (row < 0) continue;
          const scalar_t w = wt[i * 8 + k];
          for (int64_t ch = c0; ch < c1; ++ch) g[row * c + ch] += w * go[i * c + ch];
        }
      }
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseview, CPU, m) {
  m.impl("ray_march", &ray_march_cpu);
  m.impl("voxel_hash", &voxel_hash_cpu);
  m.impl("voxel_reduce", &voxel_reduce_cpu);
  m.impl("voxel_reduce_bwd", &voxel_reduce_bwd_cpu);
  m.impl("sparse_trilinear_fwd", &sparse_trilinear_fwd_cpu);
  m.impl("sparse_trilinear_bwd", &sparse_trilinear_bwd_cpu);
}

}  // namespace sparseview
