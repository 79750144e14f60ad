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
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

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
inline void prefetch_row(const void* row, int64_t bytes) {
  const char* p = static_cast<const char*>(row);
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b);
}

// Scratch arrays kept by the calling thread between calls: the first touch of freshly mapped
// pages costs more than the work on them (about 1.5 us per 4 KiB page on our machines), and
// glibc hands large blocks back to the system when they are freed. Uninitialised, 64-byte
// aligned; the arrays in use at one time need different slots. Arrays above kScratchKeep
// bytes are allocated for the call only (a thread keeps at most a few tens of MiB).
constexpr int kScratchSlots = 8;
constexpr size_t kScratchKeep = size_t(8) << 20;

inline char* align64(char* p) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(p);
  return p + ((64 - (addr & 63)) & 63);
}

template <typename T>
class ScratchArray {
 public:
  ScratchArray(int slot, int64_t count) {
    const size_t bytes = static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(T) + 64;
    thread_local std::vector<char> kept[kScratchSlots];
    std::vector<char>& buf = bytes <= kScratchKeep ? kept[slot] : own_;
    if (buf.size() < bytes) {
      std::vector<char>().swap(buf);
      buf.resize(bytes);
    }
    data_ = reinterpret_cast<T*>(align64(buf.data()));
  }
  T* data() const { return data_; }
  T& operator[](int64_t i) const { return data_[i]; }

 private:
  std::vector<char> own_;
  T* data_;
};

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

// Dense numbering, for grids whose key range [0, range) is small next to the points (and
// n < 2^31): one bit per key, and per 64-bit word the number of set bits before it, so that
// the rank of a set key among the set keys is two reads and a popcount. Two passes over the
// keys: the first sets the bits, the second numbers the voxels in the order of their first
// point through a rank-indexed array and counts their points. Both are free of branches
// (whether a point opens a voxel is random, and mispredicted branches, not memory, cost
// most here); keys outside the grid use one extra key, `range`, whose voxel stays unnumbered.
// The arrays hold a few bytes per key or voxel, next to a hash table's 16 or more per point,
// and need no hashing or probing. Same outputs as number_voxels.
inline bool dense_keys_suit(int64_t key_range, int64_t n) {
  return n < (int64_t(1) << 31) && key_range < (int64_t(1) << 32) &&
         key_range <= std::max<int64_t>(int64_t(1) << 23, 64 * n);
}

// Turns keys [n] into voxel numbers (-1: dropped); voxel_keys[v] is voxel v's key and
// counts[v] its points; returns the number of voxels.
inline int64_t number_voxels_dense(int64_t* keys, int64_t n, int64_t key_range,
                                   int64_t voxel_cap, int64_t point_cap,
                                   const ScratchArray<uint32_t>& voxel_keys,
                                   const ScratchArray<uint32_t>& counts) {
  const int64_t words = (key_range >> 6) + 1;  // (+ the outside key)
  const ScratchArray<uint64_t> bits(3, words);
  const ScratchArray<uint32_t> before(4, words);
  std::memset(bits.data(), 0, static_cast<size_t>(words) * sizeof(uint64_t));
  const uint64_t outside = static_cast<uint64_t>(key_range);
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t key = keys[i] >= 0 ? static_cast<uint64_t>(keys[i]) : outside;
    bits[key >> 6] |= uint64_t(1) << (key & 63);
  }
  uint32_t occupied = 0;
  for (int64_t w = 0; w < words; ++w) {
    before[w] = occupied;
    occupied += static_cast<uint32_t>(__builtin_popcountll(bits[w]));
  }
  // voxel + 1 of each set key (0: not numbered); counts[v + 1] (counts[0]: dropped points)
  const ScratchArray<uint32_t> voxel_of(5, occupied);
  std::memset(voxel_of.data(), 0, static_cast<size_t>(occupied) * sizeof(uint32_t));
  const ScratchArray<uint32_t> count1(6, n + 1);
  auto rank = [&](uint64_t key) {
    const uint64_t w = key >> 6;
    return before[w] +
           static_cast<uint32_t>(__builtin_popcountll(bits[w] & ((uint64_t(1) << (key & 63)) - 1)));
  };
  const uint32_t outside_rank = rank(outside);
  const uint32_t voxel_limit = static_cast<uint32_t>(std::min<int64_t>(voxel_cap, n));
  const uint32_t point_limit =
      static_cast<uint32_t>(point_cap < 0 ? n : std::min(point_cap, n));
  uint32_t next = 0;
  // The ranks first (independent reads), then the numbering, which requests the entries of
  // the points kAhead ahead.
  const ScratchArray<uint32_t> ranks(7, n);
  for (int64_t i = 0; i < n; ++i)
    ranks[i] = rank(keys[i] >= 0 ? static_cast<uint64_t>(keys[i]) : outside);
  constexpr int64_t kAhead = 16;
  auto number = [&](auto capped) {
    for (int64_t i = 0; i < n; ++i) {
      __builtin_prefetch(voxel_of.data() + ranks[std::min(i + kAhead, n - 1)], 1);
      const uint64_t key = static_cast<uint64_t>(keys[i]);  // (outside: dropped anyway)
      const uint32_t r = ranks[i];
      uint32_t v1 = voxel_of[r];
      // a new voxel, unless outside or past the voxel cap (its points are then dropped)
      const uint32_t fresh = (v1 == 0) & (r != outside_rank) & (next < voxel_limit);
      voxel_keys[next] = static_cast<uint32_t>(key);  // kept when fresh
      v1 += (next + 1) & (0u - fresh);                // (masks, not branches)
      next += fresh;
      voxel_of[r] = v1;
      if (capped) {
        // past the point cap the point is dropped (and so are points of no voxel: v1 == 0)
        const uint32_t keep = (v1 != 0) & (count1[v1] < point_limit);
        count1[v1] += keep;
        keys[i] = (static_cast<int64_t>(v1) - 1) | -static_cast<int64_t>(keep ^ 1);
      } else {
        keys[i] = static_cast<int64_t>(v1) - 1;
      }
    }
  };
  if (point_cap >= 0) {
    std::memset(count1.data(), 0, (static_cast<size_t>(voxel_limit) + 1) * sizeof(uint32_t));
    number(std::true_type());
  } else {
    number(std::false_type());
    std::memset(count1.data(), 0, (static_cast<size_t>(next) + 1) * sizeof(uint32_t));
    for (int64_t i = 0; i < n; ++i) count1[keys[i] + 1] += 1;
  }
  for (uint32_t v = 0; v < next; ++v) counts[v] = count1[v + 1];
  return next;
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
  const int64_t mask_x = (int64_t(1) << shift_y) - 1;
  const int64_t mask_y = (int64_t(1) << (shift_z - shift_y)) - 1;
  auto write_coords = [&](const auto* voxel_keys, int64_t m) {
    at::Tensor coords = at::empty({m, 3}, points.options().dtype(at::kInt));
    int32_t* cp = coords.data_ptr<int32_t>();
    at::parallel_for(0, m, 16384, [&](int64_t begin, int64_t end) {
      for (int64_t v = begin; v < end; ++v) {
        const int64_t key = static_cast<int64_t>(voxel_keys[v]);
        cp[v * 3 + 0] = static_cast<int32_t>(key & mask_x);
        cp[v * 3 + 1] = static_cast<int32_t>((key >> shift_y) & mask_y);
        cp[v * 3 + 2] = static_cast<int32_t>(key >> shift_z);
      }
    });
    return coords;
  };
  const int64_t key_range = grid[2] << shift_z;  // keys lie below (z < grid[2])
  if (dense_keys_suit(key_range, n)) {
    const int64_t most = std::min(n, voxel_cap);
    const ScratchArray<uint32_t> voxel_keys(0, most + 1);
    const ScratchArray<uint32_t> counts(1, most + 1);
    const int64_t m = number_voxels_dense(inv, n, key_range, voxel_cap, max_points, voxel_keys,
                                          counts);
    at::Tensor count_t = at::empty({m}, points.options().dtype(at::kLong));
    int64_t* np = count_t.data_ptr<int64_t>();
    for (int64_t v = 0; v < m; ++v) np[v] = counts[v];
    return {write_coords(voxel_keys.data(), m), inverse, count_t};
  }

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
  at::Tensor coords = write_coords(voxel_keys.data(), m);
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

// A cache line of channels as one value (GCC/Clang vector extension: AVX-512, or two AVX
// registers, or four SSE ones), so that a voxel's sums and maxima stay in registers.
// Lines are read and written through the (unaligned, may_alias) vector type itself, one
// register move each: a memcpy is split by GCC into 32-byte moves through the stack, whose
// 64-byte reload then waits on store forwarding (that stall was half of voxel_reduce's time).
template <typename scalar_t>
struct LineOf;
template <>
struct LineOf<float> {
  typedef float type __attribute__((vector_size(64), aligned(4), may_alias));
};
template <>
struct LineOf<double> {
  typedef double type __attribute__((vector_size(64), aligned(8), may_alias));
};

template <typename scalar_t>
inline typename LineOf<scalar_t>::type load_line(const scalar_t* p) {
  return *reinterpret_cast<const typename LineOf<scalar_t>::type*>(p);
}

// Writes a line of channels; with AVX-512 a streaming store where it fills an aligned cache
// line (the mean and max rows are written once, in order, and far exceed the caches: there
// is no need to read them in first). The writer fences before its results are used.
template <typename scalar_t>
inline void store_line(scalar_t* p, const typename LineOf<scalar_t>::type& v) {
#if defined(__AVX512F__)
  if ((reinterpret_cast<uintptr_t>(p) & 63) == 0) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(p), reinterpret_cast<__m512i>(v));
    return;
  }
#endif
  *reinterpret_cast<typename LineOf<scalar_t>::type*>(p) = v;
}

inline void store_fence() {
#if defined(__AVX512F__)
  _mm_sfence();
#endif
}

// One block of channels [j0, j0 + width) of one voxel: 0 + f, + f ... over its points in
// input order, the max keeping NaN, then the division by den (exact when den is 1).
template <typename scalar_t>
inline void reduce_block(const scalar_t* __restrict__ f, const int32_t* __restrict__ list,
                         int64_t p0, int64_t p1, int64_t c, int64_t j0, int64_t width,
                         scalar_t den, scalar_t* __restrict__ s, scalar_t* __restrict__ x) {
  using Line = typename LineOf<scalar_t>::type;
  constexpr int64_t kWidth = sizeof(Line) / sizeof(scalar_t);
  if (width == kWidth) {
    Line fi = load_line(f + static_cast<int64_t>(list[p0]) * c + j0);
    Line acc = static_cast<scalar_t>(0) + fi;
    Line top = fi;
    for (int64_t p = p0 + 1; p < p1; ++p) {
      fi = load_line(f + static_cast<int64_t>(list[p]) * c + j0);
      acc += fi;
      top = ((fi > top) | (fi != fi)) ? fi : top;
    }
    acc = acc / den;
    store_line(s + j0, acc);
    store_line(x + j0, top);
    return;
  }
  scalar_t acc[kWidth], top[kWidth];
  const scalar_t* fi = f + static_cast<int64_t>(list[p0]) * c + j0;
  for (int64_t j = 0; j < width; ++j) {
    acc[j] = static_cast<scalar_t>(0) + fi[j];
    top[j] = fi[j];
  }
  for (int64_t p = p0 + 1; p < p1; ++p) {
    fi = f + static_cast<int64_t>(list[p]) * c + j0;
    for (int64_t j = 0; j < width; ++j) {
      acc[j] += fi[j];
      top[j] = (fi[j] > top[j] || fi[j] != fi[j]) ? fi[j] : top[j];
    }
  }
  for (int64_t j = 0; j < width; ++j) {
    s[j0 + j] = acc[j] / den;
    x[j0 + j] = top[j];
  }
}

// Grouped by voxel (for n < 2^31): the points are first listed voxel by voxel (a counting
// sort of inverse, with room for counts[v] points per voxel; stable, so input order within a
// voxel), then each voxel's rows are computed at once, in registers, from its points'
// features read in list order (requested a few voxels ahead), and written in voxel order:
// the output rows are written once and in order, and only the feature rows are read at
// random. Threads own voxel ranges. Returns false when a voxel has more points than counts
// says, or counts add up to more than n (the caller then runs reduce_two_pass).
template <typename scalar_t>
bool reduce_grouped(const scalar_t* __restrict__ f, const int64_t* __restrict__ inv,
                    const int64_t* __restrict__ cnt, int64_t n, int64_t c, int64_t m,
                    scalar_t* __restrict__ mean, scalar_t* __restrict__ mx) {
  const ScratchArray<int32_t> start(0, m + 1);  // list position of each voxel's points
  const ScratchArray<int32_t> fill(1, m);       // the next free position
  int64_t total = 0;
  for (int64_t v = 0; v < m; ++v) {
    start[v] = static_cast<int32_t>(total);
    fill[v] = static_cast<int32_t>(total);
    total += std::max<int64_t>(0, cnt[v]);
    if (total > n) return false;
  }
  start[m] = static_cast<int32_t>(total);
  const ScratchArray<int32_t> list(2, total);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = inv[i];
    if (v < 0) continue;
    const int32_t p = fill[v];
    if (p >= start[v + 1]) return false;  // more points than counts says
    list[p] = static_cast<int32_t>(i);
    fill[v] = p + 1;
  }
  constexpr int64_t kWidth = 64 / sizeof(scalar_t);
  const int64_t row_bytes = c * static_cast<int64_t>(sizeof(scalar_t));
  const int32_t* lp = list.data();
  at::parallel_for(0, m, 4096, [&](int64_t v0, int64_t v1) {
    // a voxel holds about one point on average: rows two positions per voxel ahead
    constexpr int64_t kAhead = 12;
    const int64_t p_end = start[v1];
    for (int64_t v = v0; v < v1; ++v) {
      scalar_t* __restrict__ s = mean + v * c;
      scalar_t* __restrict__ x = mx + v * c;
      const int64_t p0 = start[v], p1 = fill[v];
      for (int64_t p = p0 + kAhead; p < std::min(p0 + kAhead + 2, p_end); ++p) {
        // (positions past a voxel's points, when counts says more, hold no point)
        const uint32_t ahead = static_cast<uint32_t>(lp[p]);
        if (ahead < static_cast<uint64_t>(n)) prefetch_row(f + ahead * c, row_bytes);
      }
      if (p0 == p1) {  // no points: mean 0, max -inf
        for (int64_t j = 0; j < c; ++j) {
          s[j] = 0;
          x[j] = -std::numeric_limits<scalar_t>::infinity();
        }
        continue;
      }
      const scalar_t den = static_cast<scalar_t>(cnt[v]);  // >= the points seen >= 1
      for (int64_t j0 = 0; j0 < c; j0 += kWidth)
        reduce_block<scalar_t>(f, lp, p0, p1, c, j0, std::min(kWidth, c - j0), den, s, x);
    }
    store_fence();
  });
  return true;
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
    if (n >= (int64_t(1) << 31) || !reduce_grouped<scalar_t>(f, inv, cnt, n, c, m, sum, mx))
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

// Branch-free (which corners exist is random): a missing corner reads `zeros` (a row of +0),
// whose terms w * 0 = +0 leave the sum as it is (a sum that starts at +0 never becomes -0).
// Blocks of a cache line of channels are summed in registers.
template <typename scalar_t>
inline void sum_corners(scalar_t* __restrict__ out, const int64_t* rows,
                        const scalar_t* weights, const scalar_t* __restrict__ features,
                        const scalar_t* __restrict__ zeros, int64_t c) {
  using Line = typename LineOf<scalar_t>::type;
  constexpr int64_t kWidth = sizeof(Line) / sizeof(scalar_t);
  const scalar_t* src[8];
  for (int k = 0; k < 8; ++k) src[k] = rows[k] >= 0 ? features + rows[k] * c : zeros;
  int64_t j0 = 0;
  for (; j0 + kWidth <= c; j0 += kWidth) {
    Line acc = {};  // 0 + w f ... in corner order
    for (int k = 0; k < 8; ++k) acc = acc + weights[k] * load_line(src[k] + j0);
    *reinterpret_cast<Line*>(out + j0) = acc;
  }
  for (int64_t ch = j0; ch < c; ++ch) {
    scalar_t acc = 0;
    for (int k = 0; k < 8; ++k) acc = acc + weights[k] * src[k][ch];
    out[ch] = acc;
  }
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
  int64_t occupied() const { return static_cast<int64_t>(rows_.size()) - 1; }
  // Rank of an occupied cell among the occupied cells, or -1 (also for cell -1: outside).
  int64_t rank(int64_t cell) const {
    // (masks, not branches)
    const int64_t outside = cell >> 63;  // -1 for cell -1, else 0
    const int64_t safe = cell & ~outside;
    const uint64_t w = words_[safe >> 5];
    const uint64_t bit = uint64_t(1) << (safe & 31);
    const int64_t r = static_cast<int64_t>(w >> 32) + __builtin_popcountll(w & (bit - 1));
    const int64_t present = static_cast<int64_t>((w >> (safe & 31)) & 1) & ~outside;
    return r | (present - 1);
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
// their features; stage 4 sums batch b. Branch-free lookups and requests (masks and selects,
// no branches): whether a corner exists is random. Query i's corner rows and weights go to
// rows/weights[(i - begin) * 8 + k].
template <typename scalar_t>
void trilinear_queries_dense(const scalar_t* points, int64_t begin, int64_t end,
                             const scalar_t origin[3], const scalar_t size[3],
                             const OccupancyIndex& index, const scalar_t* features,
                             const scalar_t* zeros, int64_t c, scalar_t* out, int64_t* rows,
                             scalar_t* weights) {
  constexpr int64_t kBatch = 16;
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
          weights[(i - begin) * 8 + k] =
              ok ? sparse_voxel::trilinear_weight<scalar_t>(frac, k) : static_cast<scalar_t>(0);
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
          __builtin_prefetch(ranked_rows + (rank & ~(rank >> 63)));
          cells[i - i0][k] = rank;
        }
    }
    if (b + 1 >= 0 && b + 1 < batches) {
      int64_t(*ranks)[8] = ring[(b + 1) & 3];
      const int64_t i0 = begin + (b + 1) * kBatch, i1 = std::min(end, i0 + kBatch);
      for (int64_t i = i0; i < i1; ++i)
        for (int k = 0; k < 8; ++k) {
          const int64_t rank = ranks[i - i0][k];
          const int64_t missing = rank >> 63;  // -1 or 0 (masks, not branches)
          const int64_t row = ranked_rows[rank & ~missing] | missing;
          rows[(i - begin) * 8 + k] = row;
          // (a missing corner requests the zero row: a pointer select by masks, not a branch)
          const uintptr_t sel = static_cast<uintptr_t>(missing);
          const char* src = reinterpret_cast<const char*>(
              (reinterpret_cast<uintptr_t>(features + (row & ~missing) * c) & ~sel) |
              (reinterpret_cast<uintptr_t>(zeros) & sel));
          for (int64_t byte = 0; byte < row_bytes; byte += 64) __builtin_prefetch(src + byte);
        }
    }
    if (b >= 0) {
      const int64_t i0 = begin + b * kBatch, i1 = std::min(end, i0 + kBatch);
      for (int64_t i = i0; i < i1; ++i)
        sum_corners<scalar_t>(out + i * c, rows + (i - begin) * 8, weights + (i - begin) * 8,
                              features, zeros, c);
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
// features requested), and batch b summed. Rows and weights as the dense version's.
template <typename scalar_t, typename Table>
void trilinear_queries_hashed(const scalar_t* points, int64_t begin, int64_t end,
                              const scalar_t origin[3], const scalar_t size[3],
                              const CornerKeys& corners, const Table& table,
                              const scalar_t* features, const scalar_t* zeros, int64_t c,
                              scalar_t* out,
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
          weights[(i - begin) * 8 + k] =
              ok ? sparse_voxel::trilinear_weight<scalar_t>(frac, k) : static_cast<scalar_t>(0);
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
          rows[(i - begin) * 8 + k] = row;
          prefetch_row(row >= 0 ? features + row * c : zeros, row_bytes);
        }
    }
    if (b >= 0) {
      const int64_t i0 = begin + b * kBatch, i1 = std::min(end, i0 + kBatch);
      for (int64_t i = i0; i < i1; ++i)
        sum_corners<scalar_t>(out + i * c, rows + (i - begin) * 8, weights + (i - begin) * 8,
                              features, zeros, c);
    }
  }
}

// Queries [begin, end) through `query(b0, b1, rows, weights)`, which writes the corner rows
// and weights of queries [b0, b1) at rows/weights[(i - b0) * 8 + k]: into the outputs when
// they are returned (rows_out non-null), else into a per-thread buffer of kCornerChunk
// queries reused chunk after chunk (cache-resident: inference neither writes nor allocates
// the [Q, 8] corner arrays, 96 bytes a query).
constexpr int64_t kCornerChunk = 2048;

template <typename scalar_t, typename Query>
void trilinear_chunks(int64_t begin, int64_t end, int64_t* rows_out, scalar_t* weights_out,
                      const Query& query) {
  if (rows_out != nullptr) {
    query(begin, end, rows_out + begin * 8, weights_out + begin * 8);
    return;
  }
  const ScratchArray<int64_t> rows(0, kCornerChunk * 8);
  const ScratchArray<scalar_t> weights(1, kCornerChunk * 8);
  for (int64_t b0 = begin; b0 < end; b0 += kCornerChunk)
    query(b0, std::min(end, b0 + kCornerChunk), rows.data(), weights.data());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_trilinear_fwd_cpu(
    const at::Tensor& points_in, const at::Tensor& coords_in, const at::Tensor& features_in,
    at::ArrayRef<double> voxel_size, at::ArrayRef<double> origin, bool corners) {
  sparse_voxel_args::trilinear_fwd(points_in, coords_in, features_in, voxel_size, origin);
  const at::Tensor points = points_in.contiguous();
  const at::Tensor coords = coords_in.contiguous();
  const at::Tensor features = features_in.contiguous();
  const int64_t q = points.size(0), m = coords.size(0), c = features.size(1);
  const int64_t q_corners = corners ? q : 0;  // (empty [0, 8] when not returned)
  at::Tensor out = at::empty({q, c}, features.options());
  at::Tensor rows = at::empty({q_corners, 8}, points.options().dtype(at::kLong));
  at::Tensor weights = at::empty({q_corners, 8}, points.options());
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
      int64_t* rw = corners ? rows.data_ptr<int64_t>() : nullptr;
      scalar_t* wt = corners ? weights.data_ptr<scalar_t>() : nullptr;
      const std::vector<scalar_t> zeros(static_cast<size_t>(c), static_cast<scalar_t>(0));
      if (OccupancyIndex::suits(box, m)) {
        const OccupancyIndex index(box, cd, m);
        at::parallel_for(0, q, 2048, [&](int64_t begin, int64_t end) {
          trilinear_chunks<scalar_t>(begin, end, rw, wt,
                                     [&](int64_t b0, int64_t b1, int64_t* r, scalar_t* w) {
            trilinear_queries_dense<scalar_t>(p, b0, b1, org, size, index, f, zeros.data(), c,
                                              o, r, w);
          });
        });
        return;
      }
      const CornerKeys corner_keys(box);
      auto run = [&](auto& table) {
        fill_corner_table(cd, m, corner_keys, table);
        at::parallel_for(0, q, 2048, [&](int64_t begin, int64_t end) {
          trilinear_chunks<scalar_t>(begin, end, rw, wt,
                                     [&](int64_t b0, int64_t b1, int64_t* r, scalar_t* w) {
            trilinear_queries_hashed<scalar_t>(p, b0, b1, org, size, corner_keys, table, f,
                                               zeros.data(), c, o, r, w);
          });
        });
      };
      if (m - 1 <= packed_value_limit(corner_keys.key_bits)) {
        PackedTable table(m, corner_keys.key_bits);
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
