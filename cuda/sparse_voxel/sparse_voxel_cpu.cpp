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
#include <atomic>
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
// Open-addressing hash maps key (>= 0) -> value (>= 0), linear probing over a power-of-two
// array of slots. The caller gives each key's home slot, so that a table can keep
// neighbouring voxels in one cache line (trilinear sampling) or scatter keys evenly (voxel
// hashing). find_or_insert returns the key's value; when the key is absent it inserts
// `value` if `insert`, and otherwise returns -1.
//
// PackedTable: one 8-byte word per slot, ((value + 1) << key_bits) | key, 0 = empty: half
//   the memory of {key, value} pairs, so twice the keys per cache line. For keys below
//   2^key_bits and values up to packed_value_limit(key_bits).
// WideTable: {key, value} pairs (key -1 = empty), for any keys and values.
// ---------------------------------------------------------------------------------------
inline int bit_width(uint64_t x) { return x == 0 ? 0 : 64 - __builtin_clzll(x); }

inline int64_t table_capacity(int64_t keys) {
  int64_t cap = 16;
  while (cap < 2 * keys) cap <<= 1;
  return cap;
}

// The largest value a PackedTable with key_bits-bit keys stores (-1: none).
inline int64_t packed_value_limit(int key_bits) {
  const int value_bits = 64 - key_bits;
  return value_bits >= 63 ? std::numeric_limits<int64_t>::max() - 1
                          : (int64_t(1) << value_bits) - 2;
}

class PackedTable {
 public:
  PackedTable(int64_t keys, int key_bits)
      : key_bits_(key_bits),
        key_mask_(key_bits >= 64 ? ~uint64_t(0) : (uint64_t(1) << key_bits) - 1) {
    const int64_t cap = table_capacity(keys);
    mask_ = static_cast<uint64_t>(cap - 1);
    slots_.assign(static_cast<size_t>(cap), 0);
  }
  uint64_t mask() const { return mask_; }
  void prefetch(uint64_t home) const { __builtin_prefetch(&slots_[home & mask_]); }
  int64_t find(int64_t key, uint64_t home) const {
    for (uint64_t h = home & mask_;; h = (h + 1) & mask_) {
      const uint64_t s = slots_[h];
      if (s == 0) return -1;
      if ((s & key_mask_) == static_cast<uint64_t>(key)) return static_cast<int64_t>(s >> key_bits_) - 1;
    }
  }
  int64_t find_or_insert(int64_t key, uint64_t home, int64_t value, bool insert, bool& inserted) {
    inserted = false;
    for (uint64_t h = home & mask_;; h = (h + 1) & mask_) {
      const uint64_t s = slots_[h];
      if (s == 0) {
        if (!insert) return -1;
        slots_[h] = (static_cast<uint64_t>(value + 1) << key_bits_) | static_cast<uint64_t>(key);
        inserted = true;
        return value;
      }
      if ((s & key_mask_) == static_cast<uint64_t>(key)) return static_cast<int64_t>(s >> key_bits_) - 1;
    }
  }

 private:
  int key_bits_;
  uint64_t key_mask_;
  uint64_t mask_;
  std::vector<uint64_t> slots_;
};

class WideTable {
 public:
  explicit WideTable(int64_t keys) {
    const int64_t cap = table_capacity(keys);
    mask_ = static_cast<uint64_t>(cap - 1);
    slots_.assign(static_cast<size_t>(cap), Slot{-1, -1});
  }
  uint64_t mask() const { return mask_; }
  void prefetch(uint64_t home) const { __builtin_prefetch(&slots_[home & mask_]); }
  int64_t find(int64_t key, uint64_t home) const {
    for (uint64_t h = home & mask_;; h = (h + 1) & mask_) {
      const Slot& s = slots_[h];
      if (s.key == key) return s.value;
      if (s.key < 0) return -1;
    }
  }
  int64_t find_or_insert(int64_t key, uint64_t home, int64_t value, bool insert, bool& inserted) {
    inserted = false;
    for (uint64_t h = home & mask_;; h = (h + 1) & mask_) {
      Slot& s = slots_[h];
      if (s.key == key) return s.value;
      if (s.key < 0) {
        if (!insert) return -1;
        s.key = key;
        s.value = value;
        inserted = true;
        return value;
      }
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
// Voxel key x | y << shift_y | z << shift_z of points [begin, end) (-1: outside the grid),
// from the voxel indices of point_linear_key (sparse_voxel.h), the same expression in the
// same order. Blocks of points are first copied to one array per axis, so that the compiler
// vectorises the arithmetic (divisions, floor, range tests).
template <typename scalar_t>
void voxel_keys(const scalar_t* points, int64_t channels, int64_t begin, int64_t end,
                const scalar_t lo[3], const scalar_t size[3], const int64_t grid[3],
                int shift_y, int shift_z, int64_t* keys) {
  constexpr int64_t kBlock = 512;
  scalar_t axis[3][kBlock];
  // exact: grid < 2^21, and floor() leaves integers, so this is point_linear_key's test
  const scalar_t top[3] = {static_cast<scalar_t>(grid[0]), static_cast<scalar_t>(grid[1]),
                           static_cast<scalar_t>(grid[2])};
  for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
    const int64_t len = std::min(kBlock, end - b0);
    const scalar_t* p = points + b0 * channels;
    for (int64_t j = 0; j < len; ++j) {
      axis[0][j] = p[j * channels];
      axis[1][j] = p[j * channels + 1];
      axis[2][j] = p[j * channels + 2];
    }
    int64_t* out = keys + b0;
    for (int64_t j = 0; j < len; ++j) {
      const scalar_t fx = std::floor((axis[0][j] - lo[0]) / size[0]);
      const scalar_t fy = std::floor((axis[1][j] - lo[1]) / size[1]);
      const scalar_t fz = std::floor((axis[2][j] - lo[2]) / size[2]);
      // false for NaN and for +-inf (floor keeps both)
      const bool inside = (fx >= 0) & (fx < top[0]) & (fy >= 0) & (fy < top[1]) & (fz >= 0) &
                          (fz < top[2]);
      const int64_t x = static_cast<int64_t>(inside ? fx : static_cast<scalar_t>(0));
      const int64_t y = static_cast<int64_t>(inside ? fy : static_cast<scalar_t>(0));
      const int64_t z = static_cast<int64_t>(inside ? fz : static_cast<scalar_t>(0));
      out[j] = inside ? (x | (y << shift_y) | (z << shift_z)) : -1;
    }
  }
}

// Numbers the voxels in the order of their first point, in one sequential pass (the output
// is the same whatever the thread count), turning keys [n] into the voxel of each point
// (-1: dropped). The slots of the keys a few points ahead are prefetched: the table is
// larger than the caches and the points come in no spatial order. Consecutive points often
// share a voxel (LiDAR scans), so the last key is remembered. With a per-voxel cap the
// counts are kept here; without one (point_cap < 0) the caller counts afterwards.
template <typename Table>
void number_voxels(Table& table, int64_t* keys, int64_t n, int64_t voxel_cap, int64_t point_cap,
                   std::vector<int64_t>& voxel_keys, std::vector<int64_t>& counts) {
  const bool capped = point_cap >= 0;
  int64_t last_key = -1, last_voxel = -1;
  constexpr int64_t kAhead = 16;
  for (int64_t i = 0; i < n; ++i) {
    if (i + kAhead < n && keys[i + kAhead] >= 0)
      table.prefetch(sparse_voxel::mix_hash(static_cast<uint64_t>(keys[i + kAhead])));
    const int64_t key = keys[i];
    if (key < 0) continue;  // stays -1
    if (key != last_key) {
      const int64_t next = static_cast<int64_t>(voxel_keys.size());
      bool inserted;
      // past the voxel cap no voxel is added: points of unseen voxels are dropped
      last_voxel = table.find_or_insert(key, sparse_voxel::mix_hash(static_cast<uint64_t>(key)),
                                        next, next < voxel_cap, inserted);
      if (inserted) {
        voxel_keys.push_back(key);
        if (capped) counts.push_back(0);
      }
      last_key = key;
    }
    int64_t v = last_voxel;
    if (capped && v >= 0) {
      if (counts[v] >= point_cap)
        v = -1;
      else
        counts[v] += 1;
    }
    keys[i] = v;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> voxel_hash_cpu(
    const at::Tensor& points_in, at::ArrayRef<double> voxel_size,
    at::ArrayRef<double> point_range, int64_t max_points, int64_t max_voxels) {
  int64_t grid[3];
  sparse_voxel_args::voxel_hash(points_in, voxel_size, point_range, max_points, grid);
  const at::Tensor points = points_in.contiguous();
  const int64_t n = points.size(0);
  const int64_t c = points.size(1);
  // Voxel keys pack the indices into bit fields (decoded with shifts, not divisions).
  const int shift_y = bit_width(static_cast<uint64_t>(grid[0] - 1));
  const int shift_z = shift_y + bit_width(static_cast<uint64_t>(grid[1] - 1));
  const int key_bits = shift_z + bit_width(static_cast<uint64_t>(grid[2] - 1));
  // The inverse index holds the keys until the voxels are numbered.
  at::Tensor inverse = at::empty({n}, points.options().dtype(at::kLong));
  int64_t* inv = inverse.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "voxel_hash_keys", [&] {
    const scalar_t* p = points.data_ptr<scalar_t>();
    const scalar_t size[3] = {static_cast<scalar_t>(voxel_size[0]),
                              static_cast<scalar_t>(voxel_size[1]),
                              static_cast<scalar_t>(voxel_size[2])};
    const scalar_t lo[3] = {static_cast<scalar_t>(point_range[0]),
                            static_cast<scalar_t>(point_range[1]),
                            static_cast<scalar_t>(point_range[2])};
    at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
      voxel_keys<scalar_t>(p, c, begin, end, lo, size, grid, shift_y, shift_z, inv);
    });
  });

  const int64_t voxel_cap = max_voxels < 0 ? std::numeric_limits<int64_t>::max() : max_voxels;
  std::vector<int64_t> voxel_keys;
  std::vector<int64_t> counts;
  voxel_keys.reserve(static_cast<size_t>(std::min<int64_t>(n, voxel_cap)));
  if (max_points >= 0) counts.reserve(static_cast<size_t>(std::min<int64_t>(n, voxel_cap)));
  if (n - 1 <= packed_value_limit(key_bits)) {
    PackedTable table(n, key_bits);
    number_voxels(table, inv, n, voxel_cap, max_points, voxel_keys, counts);
  } else {
    WideTable table(n);
    number_voxels(table, inv, n, voxel_cap, max_points, voxel_keys, counts);
  }
  const int64_t m = static_cast<int64_t>(voxel_keys.size());
  at::Tensor coords = at::empty({m, 3}, points.options().dtype(at::kInt));
  int32_t* cp = coords.data_ptr<int32_t>();
  const int64_t mask_x = (int64_t(1) << shift_y) - 1, mask_y = (int64_t(1) << (shift_z - shift_y)) - 1;
  at::parallel_for(0, m, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t v = begin; v < end; ++v) {
      const int64_t key = voxel_keys[v];
      cp[v * 3 + 0] = static_cast<int32_t>(key & mask_x);
      cp[v * 3 + 1] = static_cast<int32_t>((key >> shift_y) & mask_y);
      cp[v * 3 + 2] = static_cast<int32_t>(key >> shift_z);
    }
  });
  at::Tensor count_t;
  if (max_points >= 0) {
    count_t = at::empty({m}, points.options().dtype(at::kLong));
    if (m > 0) std::memcpy(count_t.data_ptr<int64_t>(), counts.data(), m * sizeof(int64_t));
  } else {
    count_t = at::zeros({m}, points.options().dtype(at::kLong));
    int64_t* np = count_t.data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i)
      if (inv[i] >= 0) np[inv[i]] += 1;
  }
  return {coords, inverse, count_t};
}

void check_reduce_inputs(const at::Tensor& features, const at::Tensor& inverse,
                         const at::Tensor& counts) {
  sparse_voxel_args::reduce_inputs(features, inverse, counts);
}

// ---------------------------------------------------------------------------------------
// voxel_reduce: mean and max per voxel (points with inverse -1 are ignored). Sums run in
// input order (deterministic), as index_add: 0 + f, then + f ...; the max keeps NaN like
// torch's amax; a voxel without points gets mean 0 and max -inf.
// ---------------------------------------------------------------------------------------
// One pass over the points: a voxel's first point initialises its rows (no fill pass), and
// its row of sums is divided by its count as soon as its last point (by counts) is in, while
// the row is still in cache. With voxel_hash's numbering the rows of new voxels come in
// order, so most writes stream. Threads own voxel ranges (each reads all of inverse and
// only its voxels' rows), so no two threads write one row and the sums keep input order.
// Returns false when counts says fewer points than inverse holds for some voxel (the rows
// are then unusable: the caller runs reduce_two_pass).
// A voxel's first point: its sum (0 + f, as the reference's zero-initialised sum) and max.
template <typename scalar_t>
inline void reduce_first_row(const scalar_t* __restrict__ fi, scalar_t* __restrict__ s,
                             scalar_t* __restrict__ x, int64_t c) {
  for (int64_t j = 0; j < c; ++j) {
    s[j] = static_cast<scalar_t>(0) + fi[j];
    x[j] = fi[j];
  }
}

// A voxel's next point, in input order: the sum grows, the max keeps a NaN once seen.
template <typename scalar_t>
inline void reduce_add_row(const scalar_t* __restrict__ fi, scalar_t* __restrict__ s,
                           scalar_t* __restrict__ x, int64_t c) {
  for (int64_t j = 0; j < c; ++j) {
    s[j] += fi[j];
    x[j] = (fi[j] > x[j] || fi[j] != fi[j]) ? fi[j] : x[j];
  }
}

template <typename scalar_t>
bool reduce_one_pass(const scalar_t* __restrict__ f, const int64_t* __restrict__ inv,
                     const int64_t* __restrict__ cnt, int64_t n, int64_t c, int64_t m,
                     scalar_t* __restrict__ mean, scalar_t* __restrict__ mx) {
  // Per voxel, one word (one cache miss per point): the count (capped at n + 1: a count
  // beyond n is never reached) in the high half; in the low half the points still to come
  // and a bit set once a point has been seen.
  constexpr uint64_t kSeen = uint64_t(1) << 31;
  constexpr uint64_t kLeft = kSeen - 1;
  std::vector<uint64_t> state(static_cast<size_t>(m));
  std::atomic<bool> consistent{true};
  const int threads = std::max(1, at::get_num_threads());
  const int64_t grain = std::max<int64_t>(32768, (m + threads - 1) / threads);
  at::parallel_for(0, m, grain, [&](int64_t v0, int64_t v1) {
    for (int64_t v = v0; v < v1; ++v) {
      const uint64_t total = static_cast<uint64_t>(std::max<int64_t>(0, std::min(cnt[v], n + 1)));
      state[v] = (total << 32) | total;
    }
    constexpr int64_t kAhead = 8;
    for (int64_t i = 0; i < n; ++i) {
      if (i + kAhead < n) {
        const int64_t u = inv[i + kAhead];
        if (u >= v0 && u < v1) {
          __builtin_prefetch(&state[u], 1);
          __builtin_prefetch(mean + u * c, 1);
          __builtin_prefetch(mx + u * c, 1);
        }
      }
      const int64_t v = inv[i];
      if (v < v0 || v >= v1) continue;
      const scalar_t* __restrict__ fi = f + i * c;
      scalar_t* __restrict__ s = mean + v * c;
      scalar_t* __restrict__ x = mx + v * c;
      const uint64_t word = state[v];
      const uint64_t left = word & kLeft;
      if (left == 0) {  // more points than counts says
        consistent = false;
        return;
      }
      state[v] = ((word & ~kLeft) | kSeen) | (left - 1);
      if (!(word & kSeen)) {  // (a voxel of one point needs no division: (0 + f) / 1 == 0 + f)
        reduce_first_row(fi, s, x, c);
        continue;
      }
      reduce_add_row(fi, s, x, c);
      if (left == 1) {  // the last point: the count is the one of counts (<= n)
        const scalar_t den = static_cast<scalar_t>(static_cast<int64_t>(word >> 32));
        for (int64_t j = 0; j < c; ++j) s[j] = s[j] / den;
      }
    }
    // Voxels without points, and voxels with fewer points than counts says.
    for (int64_t v = v0; v < v1; ++v) {
      if ((state[v] & kSeen) && !(state[v] & kLeft)) continue;  // complete
      scalar_t* s = mean + v * c;
      scalar_t* x = mx + v * c;
      if (!(state[v] & kSeen)) {
        for (int64_t j = 0; j < c; ++j) {
          s[j] = 0;
          x[j] = -std::numeric_limits<scalar_t>::infinity();
        }
        continue;
      }
      const scalar_t den = static_cast<scalar_t>(cnt[v]);  // > the points seen >= 1
      for (int64_t j = 0; j < c; ++j) s[j] = s[j] / den;
    }
  });
  return consistent;
}

// Any counts: sums and maxima first (in input order), then the division.
template <typename scalar_t>
void reduce_two_pass(const scalar_t* __restrict__ f, const int64_t* __restrict__ inv,
                     const int64_t* __restrict__ cnt, int64_t n, int64_t c, int64_t m,
                     scalar_t* __restrict__ sum, scalar_t* __restrict__ mx) {
  std::vector<uint8_t> seen(static_cast<size_t>(m), 0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = inv[i];
    if (v < 0) continue;
    const scalar_t* __restrict__ fi = f + i * c;
    scalar_t* __restrict__ s = sum + v * c;
    scalar_t* __restrict__ x = mx + v * c;
    if (!seen[v]) {
      seen[v] = 1;
      reduce_first_row(fi, s, x, c);
      continue;
    }
    reduce_add_row(fi, s, x, c);
  }
  at::parallel_for(0, m, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t v = begin; v < end; ++v) {
      if (!seen[v]) {
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
}

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
    const scalar_t* f = features.data_ptr<scalar_t>();
    const int64_t* inv = inverse.data_ptr<int64_t>();
    const int64_t* cnt = counts.data_ptr<int64_t>();
    scalar_t* sum = mean.data_ptr<scalar_t>();
    scalar_t* mx = max.data_ptr<scalar_t>();
    if (n >= (int64_t(1) << 30) ||
        !reduce_one_pass<scalar_t>(f, inv, cnt, n, c, m, sum, mx))
      reduce_two_pass<scalar_t>(f, inv, cnt, n, c, m, sum, mx);
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
// The bounding box of the voxel coordinates (which must lie in [-2^20, 2^20)).
struct VoxelBox {
  int64_t lo[3];
  int64_t extent[3];  // hi - lo + 1 per axis (1 when there are no voxels)

  template <typename coord_t>
  VoxelBox(const coord_t* coords, int64_t m) {
    int64_t hi[3] = {0, 0, 0};
    for (int d = 0; d < 3; ++d) lo[d] = 0;
    for (int64_t v = 0; v < m; ++v)
      for (int d = 0; d < 3; ++d) {
        const int64_t x = coords[v * 3 + d];
        TORCH_CHECK(x >= -sparse_voxel::kCoordOffset && x < sparse_voxel::kCoordOffset,
                    "voxel coordinates must lie in [-2^20, 2^20)");
        if (v == 0 || x < lo[d]) lo[d] = x;
        if (v == 0 || x > hi[d]) hi[d] = x;
      }
    for (int d = 0; d < 3; ++d) extent[d] = hi[d] - lo[d] + 1;
  }
  double cells() const {
    return static_cast<double>(extent[0]) * static_cast<double>(extent[1]) *
           static_cast<double>(extent[2]);
  }
};

// out_i = 0 + w_k0 * f_k0 + w_k1 * f_k1 ... over the corners found, in corner order (the
// reference's order). restrict parameters let the compiler vectorise the channel loop.
template <typename scalar_t>
inline void axpy(scalar_t* __restrict__ out, const scalar_t* __restrict__ row, scalar_t w,
                 int64_t c) {
  for (int64_t ch = 0; ch < c; ++ch) out[ch] += w * row[ch];
}

template <typename scalar_t>
inline void sum_corners(scalar_t* out, const int64_t* rows, const scalar_t* weights,
                        const scalar_t* features, int64_t c) {
  for (int64_t ch = 0; ch < c; ++ch) out[ch] = 0;
  for (int k = 0; k < 8; ++k)
    if (rows[k] >= 0) axpy<scalar_t>(out, features + rows[k] * c, weights[k], c);
}

inline void prefetch_row(const void* row, int64_t bytes) {
  const char* p = static_cast<const char*>(row);
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b);
}

// Dense occupancy index of the voxels over their box, for boxes of at most a few bits per
// voxel: one 64-bit word per 32 cells (x fastest), low half the occupancy bits, high half
// the number of occupied cells before the word; the row of the k-th occupied cell is
// rows[k]. A corner's row is one word read, a popcount and one rows read, and the words and
// rows of a query's corners are neighbours in memory.
class OccupancyIndex {
 public:
  // The index takes cells / 4 bytes; at most what a hash table of the voxels would take.
  static bool suits(const VoxelBox& box, int64_t m) {
    const double cells = box.cells();
    return m < std::numeric_limits<int32_t>::max() && cells <= 1e15 &&
           cells / 4 <= std::max(1.0 * (1 << 20), 16.0 * m);
  }
  template <typename coord_t>
  OccupancyIndex(const VoxelBox& box, const coord_t* coords, int64_t m) : box_(box) {
    const int64_t cells = box.extent[0] * box.extent[1] * box.extent[2];
    words_.assign(static_cast<size_t>((cells + 31) / 32), 0);
    for (int64_t v = 0; v < m; ++v) {
      const int64_t cell = cell_of(coords[v * 3], coords[v * 3 + 1], coords[v * 3 + 2]);
      words_[cell >> 5] |= uint64_t(1) << (cell & 31);
    }
    uint64_t before = 0;
    for (uint64_t& w : words_) {
      const uint64_t bits = w;
      w = bits | (before << 32);
      before += static_cast<uint64_t>(__builtin_popcountll(bits));
    }
    // (one spare entry: the branch-free lookups read rows[0] for missing corners)
    rows_.assign(static_cast<size_t>(before) + 1, -1);
    for (int64_t v = 0; v < m; ++v) {  // duplicates: the first row wins
      int32_t& row = rows_[rank(cell_of(coords[v * 3], coords[v * 3 + 1], coords[v * 3 + 2]))];
      if (row < 0) row = static_cast<int32_t>(v);
    }
  }
  const VoxelBox& box() const { return box_; }
  const uint64_t* words() const { return words_.data(); }
  const int32_t* rows() const { return rows_.data(); }
  // Rank of an occupied cell among the occupied cells, or -1 (also for cell -1: outside).
  int64_t rank(int64_t cell) const {
    const int64_t safe = cell < 0 ? 0 : cell;
    const uint64_t w = words_[safe >> 5];
    const uint64_t bit = uint64_t(1) << (safe & 31);
    const int64_t r = static_cast<int64_t>(w >> 32) + __builtin_popcountll(w & (bit - 1));
    return (cell >= 0 && (w & bit)) ? r : -1;
  }

 private:
  int64_t cell_of(int64_t x, int64_t y, int64_t z) const {
    return ((z - box_.lo[2]) * box_.extent[1] + (y - box_.lo[1])) * box_.extent[0] +
           (x - box_.lo[0]);
  }
  VoxelBox box_;
  std::vector<uint64_t> words_;
  std::vector<int32_t> rows_;
};

// Forward of queries [begin, end) with an OccupancyIndex, software-pipelined in batches of
// kBatch queries (the words, the rows and the feature rows are in no order the caches could
// follow, so each level is requested a batch before it is read): stage 1 computes the
// weights and corner cells of batch b + 3 and requests their words; stage 2 ranks the cells
// of batch b + 2 and requests their rows; stage 3 reads the rows of batch b + 1 and requests
// their features; stage 4 sums batch b. Branch-free lookups: whether a corner exists is
// random.
template <typename scalar_t>
void trilinear_queries_dense(const scalar_t* points, int64_t begin, int64_t end,
                             const scalar_t origin[3], const scalar_t size[3],
                             const OccupancyIndex& index, const scalar_t* features, int64_t c,
                             scalar_t* out, int64_t* rows, scalar_t* weights) {
  constexpr int64_t kBatch = 8;
  int64_t ring[4][kBatch][8];  // cells (stage 1 -> 2), then ranks (stage 2 -> 3)
  const int64_t batches = (end - begin + kBatch - 1) / kBatch;
  const int64_t row_bytes = c * static_cast<int64_t>(sizeof(scalar_t));
  const VoxelBox& box = index.box();
  const uint64_t ex = box.extent[0], ey = box.extent[1], ez = box.extent[2];
  const uint64_t* words = index.words();
  const int32_t* ranked_rows = index.rows();
  for (int64_t b = -3; b < batches; ++b) {
    if (b + 3 < batches) {
      int64_t(*cells)[8] = ring[(b + 3) & 3];
      const int64_t i0 = begin + (b + 3) * kBatch, i1 = std::min(end, i0 + kBatch);
      for (int64_t i = i0; i < i1; ++i) {
        int64_t base[3];
        scalar_t frac[3];
        const bool ok = sparse_voxel::trilinear_base<scalar_t>(points + i * 3, origin, size,
                                                               base, frac);
        const uint64_t x0 = static_cast<uint64_t>(base[0] - box.lo[0]);
        const uint64_t y0 = static_cast<uint64_t>(base[1] - box.lo[1]);
        const uint64_t z0 = static_cast<uint64_t>(base[2] - box.lo[2]);
        for (int k = 0; k < 8; ++k) {
          weights[i * 8 + k] = ok ? sparse_voxel::trilinear_weight<scalar_t>(frac, k)
                                  : static_cast<scalar_t>(0);
          const uint64_t x = x0 + (k & 1), y = y0 + ((k >> 1) & 1), z = z0 + ((k >> 2) & 1);
          const bool inside = ok & (x < ex) & (y < ey) & (z < ez);
          const int64_t cell = inside ? static_cast<int64_t>((z * ey + y) * ex + x) : -1;
          cells[i - i0][k] = cell;
          if (!(k & 1)) __builtin_prefetch(words + ((inside ? cell : 0) >> 5));
        }
      }
    }
    if (b + 2 >= 0 && b + 2 < batches) {
      int64_t(*cells)[8] = ring[(b + 2) & 3];
      const int64_t i0 = begin + (b + 2) * kBatch, i1 = std::min(end, i0 + kBatch);
      for (int64_t i = i0; i < i1; ++i)
        for (int k = 0; k < 8; ++k) {
          const int64_t rank = index.rank(cells[i - i0][k]);
          __builtin_prefetch(ranked_rows + (rank < 0 ? 0 : rank));
          cells[i - i0][k] = rank;
        }
    }
    if (b + 1 >= 0 && b + 1 < batches) {
      int64_t(*ranks)[8] = ring[(b + 1) & 3];
      const int64_t i0 = begin + (b + 1) * kBatch, i1 = std::min(end, i0 + kBatch);
      for (int64_t i = i0; i < i1; ++i)
        for (int k = 0; k < 8; ++k) {
          const int64_t rank = ranks[i - i0][k];
          const int64_t found = ranked_rows[rank < 0 ? 0 : rank];
          const int64_t row = rank < 0 ? -1 : found;
          rows[i * 8 + k] = row;
          prefetch_row(features + (row < 0 ? 0 : row) * c, row_bytes);
        }
    }
    if (b >= 0) {
      const int64_t i0 = begin + b * kBatch, i1 = std::min(end, i0 + kBatch);
      for (int64_t i = i0; i < i1; ++i)
        sum_corners<scalar_t>(out + i * c, rows + i * 8, weights + i * 8, features, c);
    }
  }
}

// Otherwise: a hash table of voxel keys, the offsets from the box packed into bit fields. A
// key's home slot keeps the 2x2x2 block of voxels it belongs to in one run of 8 slots (one
// cache line of a PackedTable), so the 8 corners of a query touch few cache lines.
struct CornerKeys {
  VoxelBox box;
  int shift_y, shift_z;
  int key_bits;

  explicit CornerKeys(const VoxelBox& box_in) : box(box_in) {
    shift_y = bit_width(static_cast<uint64_t>(box.extent[0] - 1));
    shift_z = shift_y + bit_width(static_cast<uint64_t>(box.extent[1] - 1));
    key_bits = shift_z + bit_width(static_cast<uint64_t>(box.extent[2] - 1));
  }
  // The key of voxel (x, y, z) and its home slot; -1 when outside the box.
  int64_t key(int64_t x, int64_t y, int64_t z, uint64_t& home) const {
    const uint64_t a = static_cast<uint64_t>(x - box.lo[0]);
    const uint64_t b = static_cast<uint64_t>(y - box.lo[1]);
    const uint64_t c = static_cast<uint64_t>(z - box.lo[2]);
    if (a >= static_cast<uint64_t>(box.extent[0]) || b >= static_cast<uint64_t>(box.extent[1]) ||
        c >= static_cast<uint64_t>(box.extent[2]))
      return -1;
    const uint64_t block = (a >> 1) | ((b >> 1) << shift_y) | ((c >> 1) << shift_z);
    home = (sparse_voxel::mix_hash(block) << 3) | (a & 1) | ((b & 1) << 1) | ((c & 1) << 2);
    return static_cast<int64_t>(a | (b << shift_y) | (c << shift_z));
  }
};

// Rows (the first row wins for duplicate coordinates) into the table.
template <typename coord_t, typename Table>
void fill_corner_table(const coord_t* coords, int64_t m, const CornerKeys& corners,
                       Table& table) {
  constexpr int64_t kAhead = 16;
  uint64_t homes[kAhead];
  int64_t keys[kAhead];
  for (int64_t v = 0; v < m + kAhead; ++v) {
    const int64_t slot = v % kAhead;
    if (v >= kAhead) {  // insert row v - kAhead, whose slot was requested kAhead rows ago
      bool inserted;
      table.find_or_insert(keys[slot], homes[slot], v - kAhead, true, inserted);
    }
    if (v < m) {
      keys[slot] = corners.key(coords[v * 3], coords[v * 3 + 1], coords[v * 3 + 2], homes[slot]);
      table.prefetch(homes[slot]);
    }
  }
}

// Forward of queries [begin, end) with the hash table, pipelined like the dense version:
// the slots of batch b + 2 are requested, the rows of batch b + 1 looked up (and their
// features requested), and batch b summed.
template <typename scalar_t, typename Table>
void trilinear_queries_hashed(const scalar_t* points, int64_t begin, int64_t end,
                              const scalar_t origin[3], const scalar_t size[3],
                              const CornerKeys& corners, const Table& table,
                              const scalar_t* features, int64_t c, scalar_t* out,
                              int64_t* rows, scalar_t* weights) {
  constexpr int64_t kBatch = 8;
  struct Pending {
    int64_t key[kBatch][8];
    uint64_t home[kBatch][8];
  };
  Pending ring[3];
  const int64_t batches = (end - begin + kBatch - 1) / kBatch;
  const int64_t row_bytes = c * static_cast<int64_t>(sizeof(scalar_t));
  for (int64_t b = -2; b < batches; ++b) {
    if (b + 2 < batches) {
      Pending& pend = ring[(b + 2) % 3];
      const int64_t i0 = begin + (b + 2) * kBatch, i1 = std::min(end, i0 + kBatch);
      for (int64_t i = i0; i < i1; ++i) {
        int64_t base[3];
        scalar_t frac[3];
        const bool ok = sparse_voxel::trilinear_base<scalar_t>(points + i * 3, origin, size,
                                                               base, frac);
        for (int k = 0; k < 8; ++k) {
          weights[i * 8 + k] = ok ? sparse_voxel::trilinear_weight<scalar_t>(frac, k)
                                  : static_cast<scalar_t>(0);
          int64_t key = -1;
          uint64_t home = 0;
          if (ok) {
            key = corners.key(base[0] + (k & 1), base[1] + ((k >> 1) & 1),
                              base[2] + ((k >> 2) & 1), home);
            if (key >= 0) table.prefetch(home);
          }
          pend.key[i - i0][k] = key;
          pend.home[i - i0][k] = home;
        }
      }
    }
    if (b + 1 >= 0 && b + 1 < batches) {
      const Pending& pend = ring[(b + 1) % 3];
      const int64_t i0 = begin + (b + 1) * kBatch, i1 = std::min(end, i0 + kBatch);
      for (int64_t i = i0; i < i1; ++i)
        for (int k = 0; k < 8; ++k) {
          const int64_t key = pend.key[i - i0][k];
          const int64_t row = key < 0 ? -1 : table.find(key, pend.home[i - i0][k]);
          rows[i * 8 + k] = row;
          if (row >= 0) prefetch_row(features + row * c, row_bytes);
        }
    }
    if (b >= 0) {
      const int64_t i0 = begin + b * kBatch, i1 = std::min(end, i0 + kBatch);
      for (int64_t i = i0; i < i1; ++i)
        sum_corners<scalar_t>(out + i * c, rows + i * 8, weights + i * 8, features, c);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_trilinear_fwd_cpu(
    const at::Tensor& points_in, const at::Tensor& coords_in, const at::Tensor& features_in,
    at::ArrayRef<double> voxel_size, at::ArrayRef<double> origin) {
  sparse_voxel_args::trilinear_fwd(points_in, coords_in, features_in, voxel_size, origin);
  const at::Tensor points = points_in.contiguous();
  const at::Tensor coords = coords_in.contiguous();
  const at::Tensor features = features_in.contiguous();
  const int64_t q = points.size(0), m = coords.size(0), c = features.size(1);
  at::Tensor out = at::empty({q, c}, features.options());
  at::Tensor rows = at::empty({q, 8}, points.options().dtype(at::kLong));
  at::Tensor weights = at::empty({q, 8}, points.options());
  AT_DISPATCH_INDEX_TYPES(coords.scalar_type(), "sparse_trilinear_index", [&] {
    const index_t* cd = coords.data_ptr<index_t>();
    const VoxelBox box(cd, m);
    AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "sparse_trilinear_fwd", [&] {
      const scalar_t size[3] = {static_cast<scalar_t>(voxel_size[0]),
                                static_cast<scalar_t>(voxel_size[1]),
                                static_cast<scalar_t>(voxel_size[2])};
      const scalar_t org[3] = {static_cast<scalar_t>(origin[0]),
                               static_cast<scalar_t>(origin[1]),
                               static_cast<scalar_t>(origin[2])};
      const scalar_t* p = points.data_ptr<scalar_t>();
      const scalar_t* f = features.data_ptr<scalar_t>();
      scalar_t* o = out.data_ptr<scalar_t>();
      int64_t* rw = rows.data_ptr<int64_t>();
      scalar_t* wt = weights.data_ptr<scalar_t>();
      if (OccupancyIndex::suits(box, m)) {
        const OccupancyIndex index(box, cd, m);
        at::parallel_for(0, q, 2048, [&](int64_t begin, int64_t end) {
          trilinear_queries_dense<scalar_t>(p, begin, end, org, size, index, f, c, o, rw, wt);
        });
        return;
      }
      const CornerKeys corners(box);
      auto run = [&](auto& table) {
        fill_corner_table(cd, m, corners, table);
        at::parallel_for(0, q, 2048, [&](int64_t begin, int64_t end) {
          trilinear_queries_hashed<scalar_t>(p, begin, end, org, size, corners, table, f, c, o,
                                             rw, wt);
        });
      };
      if (m - 1 <= packed_value_limit(corners.key_bits)) {
        PackedTable table(m, corners.key_bits);
        run(table);
      } else {
        WideTable table(m);
        run(table);
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
