// Shared arithmetic of the sparse-voxel kernels (sparseview::ray_march, voxel_hash,
// voxel_reduce, sparse_trilinear): included by the CPU backend (sparse_voxel_cpu.cpp), the
// CUDA kernels (sparse_voxel_cuda.cu) and their torch binding (sparse_voxel_cuda.cpp).
//
// Every float expression that decides a discrete outcome (which voxel a point falls in,
// where a ray sample starts, which cell it tests) is written once here, so the CPU and CUDA
// kernels agree bit for bit; the PyTorch references (geometry/ops/sparse_voxel/
// _torch_impl.py) spell the same expressions in the same order. Both native builds turn
// off FMA contraction (-ffp-contract=off, nvcc --fmad=false) so this holds.
//
// This header needs no torch and no CUDA header: plain C++ for the host compiler, and
// __host__ __device__ functions under nvcc.

#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SV_HD __host__ __device__ __forceinline__
#else
#define SV_HD inline
#endif

namespace sparseview {
namespace sparse_voxel {

// At most this many occupancy levels (instant-NGP uses up to 8 cascades).
constexpr int kMaxLevels = 16;
// Ray samples are numbered k = 0, 1, ... from `near`; k stays below 2^24 so that float(k)
// is exact.
constexpr int64_t kMaxSteps = int64_t(1) << 24;
// Sparse voxel coordinates live in [-2^20, 2^20) per axis (21-bit fields of a 63-bit key).
constexpr int64_t kCoordOffset = int64_t(1) << 20;
constexpr int64_t kCoordRange = int64_t(1) << 21;

SV_HD bool finite(double x) {
#if defined(__CUDA_ARCH__)
  return isfinite(x);
#else
  return std::isfinite(x);
#endif
}

// splitmix64 finaliser: the hash of a voxel key (open addressing, power-of-two tables).
SV_HD uint64_t mix_hash(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

// ---------------------------------------------------------------------------------------
// Point -> voxel (voxel_hash). The same expression as sparseview::voxelize:
//   q = (p - range_min) / voxel_size in the points' dtype; c = floor(q);
//   kept when q is finite and 0 <= c < grid. Linear key (z * gy + y) * gx + x, -1 outside.
// The CPU backend evaluates this expression over blocks of points so that the compiler
// vectorises it (voxel_keys in sparse_voxel_cpu.cpp): keep the two in step.
// ---------------------------------------------------------------------------------------
template <typename scalar_t>
SV_HD int64_t point_linear_key(const scalar_t* p, const scalar_t lo[3], const scalar_t size[3],
                               const int64_t grid[3]) {
  int64_t idx[3];
  for (int d = 0; d < 3; ++d) {
    const scalar_t q = (p[d] - lo[d]) / size[d];
    if (!finite(static_cast<double>(q))) return -1;
    const double f = floor(static_cast<double>(q));
    if (f < 0 || f >= static_cast<double>(grid[d])) return -1;
    idx[d] = static_cast<int64_t>(f);
  }
  return (idx[2] * grid[1] + idx[1]) * grid[0] + idx[0];
}

// ---------------------------------------------------------------------------------------
// Sparse trilinear sampling. Feature row of voxel c sits at origin + (c + 0.5) * size; a
// query p has continuous index u = (p - origin) / size - 0.5; corners floor(u) + {0,1}^3,
// corner k = bit0 x | bit1 y | bit2 z, weight (wx * wy) * wz with w = 1 - f or f.
// ---------------------------------------------------------------------------------------
SV_HD int64_t coord_key(int64_t x, int64_t y, int64_t z) {
  if (x < -kCoordOffset || x >= kCoordOffset || y < -kCoordOffset || y >= kCoordOffset ||
      z < -kCoordOffset || z >= kCoordOffset)
    return -1;
  return ((x + kCoordOffset) << 42) | ((y + kCoordOffset) << 21) | (z + kCoordOffset);
}

// The lower corner floor(u) and the fractions u - floor(u) of one query; false when the
// query is not finite or lies beyond the coordinate range.
template <typename scalar_t>
SV_HD bool trilinear_base(const scalar_t* p, const scalar_t origin[3], const scalar_t size[3],
                          int64_t base[3], scalar_t frac[3]) {
  for (int d = 0; d < 3; ++d) {
    const scalar_t u = (p[d] - origin[d]) / size[d] - static_cast<scalar_t>(0.5);
    // also false for NaN
    if (!(static_cast<double>(u) > -static_cast<double>(kCoordOffset + 2) &&
          static_cast<double>(u) < static_cast<double>(kCoordOffset + 2)))
      return false;
    const scalar_t b = floor(u);
    frac[d] = u - b;
    base[d] = static_cast<int64_t>(b);
  }
  return true;
}

// Weight of corner k (bit0 x | bit1 y | bit2 z) from the fractions.
template <typename scalar_t>
SV_HD scalar_t trilinear_weight(const scalar_t frac[3], int k) {
  const scalar_t wx = (k & 1) ? frac[0] : static_cast<scalar_t>(1) - frac[0];
  const scalar_t wy = ((k >> 1) & 1) ? frac[1] : static_cast<scalar_t>(1) - frac[1];
  const scalar_t wz = ((k >> 2) & 1) ? frac[2] : static_cast<scalar_t>(1) - frac[2];
  return (wx * wy) * wz;
}

// Corner keys and weights of one query; returns false (keys -1, weights 0) when the query
// is not finite or lies beyond the coordinate range.
template <typename scalar_t>
SV_HD bool trilinear_corners(const scalar_t* p, const scalar_t origin[3], const scalar_t size[3],
                             int64_t keys[8], scalar_t weights[8]) {
  scalar_t frac[3];
  int64_t base[3];
  if (!trilinear_base<scalar_t>(p, origin, size, base, frac)) {
    for (int k = 0; k < 8; ++k) {
      keys[k] = -1;
      weights[k] = 0;
    }
    return false;
  }
  for (int k = 0; k < 8; ++k) {
    weights[k] = trilinear_weight<scalar_t>(frac, k);
    keys[k] = coord_key(base[0] + (k & 1), base[1] + ((k >> 1) & 1), base[2] + ((k >> 2) & 1));
  }
  return true;
}

// ---------------------------------------------------------------------------------------
// Occupancy-grid ray marching.
//
// Grid: uint8 [L, X, Y, Z] (non-zero = occupied); level l covers the box
// bounds[l] = (x0, y0, z0, x1, y1, z1) (instant-NGP cascades: the scene box scaled by 2^l
// about its centre; any boxes work). A point belongs to the first level whose box holds it
// (lo <= x < hi on every axis).
//
// Samples lie on a lattice anchored at `near`: sample k spans
//   t_start = near + float(k) * step,  t_end = min(near + float(k + 1) * step, far)
// and is emitted when t_start < far and the cell of its midpoint (t_start + t_end) * 0.5
// is occupied at the point's level. Which k are looked at is bounded by the ray's
// intersection [tmin, tmax] with the union box of the levels: from
// k_lo = max(0, floor((max(near, tmin) - near) / step) - 1) while t_start <= tmax + step
// (a one-step margin either side, so rounding never drops a sample); rays whose direction
// is zero, whose near is not finite, or that miss the union box get none.
//
// The native kernels do not test every sample: from a sample they find the largest region
// that holds its midpoint and shares its outcome (its cell, or a uniform 2^m-cell block of the
// occupancy pyramid: all empty or all occupied), and treat the samples whose midpoints lie in
// that region, with a margin, at once (all emitted in an occupied region, all skipped in
// empty space). The margin (half a step in t, a relative 1e-6 in t and 4e-6 of the
// coordinates at the faces) exceeds every rounding error of the per-sample expressions,
// whose results are monotone along the ray, so this changes the speed only, never the output
// (the tests compare with the reference, which tests every sample).
// ---------------------------------------------------------------------------------------
constexpr int kMaxMips = 5;  // uniform blocks of 2^1 .. 2^5 cells per side

struct MarchGrid {
  const uint8_t* occupancy;  // [L, X, Y, Z]
  // Pyramid: mip m (1..mips) is [L, ceil(X / 2^m), ...] at mip_offset[m] of `pyramid`;
  // 0: no cell of the block occupied, 2: all occupied, 1: mixed. nullptr: no pyramid.
  const uint8_t* pyramid;
  int mips;
  int64_t mip_offset[kMaxMips + 1];
  int mip_res[kMaxMips + 1][3];
  int levels;
  int res[3];
  float lo[kMaxLevels][3];
  float hi[kMaxLevels][3];
  float scale[kMaxLevels][3];      // res / (hi - lo): the authoritative cell expression
  float cell_size[kMaxLevels][3];  // (hi - lo) / res: for the skip regions only
  float face_eps[kMaxLevels][3];   // 4e-6 * (|lo| + |hi|)
  float union_lo[3];
  float union_hi[3];
};

// Fills the derived fields from bounds [L, 6]; the same float expressions as the reference.
// The pyramid's layout is set here (pyramid_size() bytes); its data is filled by
// build_pyramid on the host or by the CUDA binding, then assigned to g.pyramid.
inline void init_march_grid(MarchGrid& g, const uint8_t* occupancy, int levels, const int res[3],
                            const float* bounds) {
  g.occupancy = occupancy;
  g.pyramid = nullptr;
  g.levels = levels;
  for (int a = 0; a < 3; ++a) g.res[a] = res[a];
  g.mips = 0;
  g.mip_offset[0] = 0;
  for (int a = 0; a < 3; ++a) g.mip_res[0][a] = res[a];
  int64_t offset = 0;
  for (int m = 1; m <= kMaxMips; ++m) {
    // Stop once the blocks cover the whole grid along every axis.
    if (g.mip_res[m - 1][0] == 1 && g.mip_res[m - 1][1] == 1 && g.mip_res[m - 1][2] == 1) break;
    for (int a = 0; a < 3; ++a) g.mip_res[m][a] = (res[a] + (1 << m) - 1) >> m;
    g.mip_offset[m] = offset;
    offset += static_cast<int64_t>(levels) * g.mip_res[m][0] * g.mip_res[m][1] * g.mip_res[m][2];
    g.mips = m;
  }
  g.mip_offset[0] = offset;  // total size (mip 0 is the occupancy itself)
  for (int l = 0; l < levels; ++l) {
    for (int a = 0; a < 3; ++a) {
      g.lo[l][a] = bounds[l * 6 + a];
      g.hi[l][a] = bounds[l * 6 + 3 + a];
      g.scale[l][a] = static_cast<float>(res[a]) / (g.hi[l][a] - g.lo[l][a]);
      g.cell_size[l][a] = (g.hi[l][a] - g.lo[l][a]) / static_cast<float>(res[a]);
      g.face_eps[l][a] = 4e-6f * (fabsf(g.lo[l][a]) + fabsf(g.hi[l][a])) + 1e-30f;
      if (l == 0 || g.lo[l][a] < g.union_lo[a]) g.union_lo[a] = g.lo[l][a];
      if (l == 0 || g.hi[l][a] > g.union_hi[a]) g.union_hi[a] = g.hi[l][a];
    }
  }
}

inline int64_t pyramid_size(const MarchGrid& g) { return g.mip_offset[0]; }

// Host: fills the pyramid (pyramid_size(g) bytes), each mip from the one below; blocks at the
// far edges hold fewer cells and pool over those only.
inline void build_pyramid(const MarchGrid& g, uint8_t* pyramid) {
  for (int64_t i = 0; i < pyramid_size(g); ++i) pyramid[i] = 255;  // 255: no child seen yet
  for (int m = 1; m <= g.mips; ++m) {
    const int* cr = g.mip_res[m - 1];
    const int* pr = g.mip_res[m];
    for (int l = 0; l < g.levels; ++l)
      for (int x = 0; x < cr[0]; ++x)
        for (int y = 0; y < cr[1]; ++y)
          for (int z = 0; z < cr[2]; ++z) {
            const int64_t child = ((static_cast<int64_t>(l) * cr[0] + x) * cr[1] + y) * cr[2] + z;
            uint8_t v = m == 1 ? (g.occupancy[child] ? 2 : 0)
                               : pyramid[g.mip_offset[m - 1] + child];
            uint8_t& p = pyramid[g.mip_offset[m] +
                                 ((static_cast<int64_t>(l) * pr[0] + (x >> 1)) * pr[1] +
                                  (y >> 1)) * pr[2] + (z >> 1)];
            p = p == 255 ? v : (p == v ? p : 1);
          }
  }
}

// Slab test of the ray against [lo, hi): false when it misses (tmin > tmax) or when a zero
// direction component leaves the origin outside the slab.
SV_HD bool ray_box(const float o[3], const float d[3], const float lo[3], const float hi[3],
                   float& tmin, float& tmax) {
  tmin = -INFINITY;
  tmax = INFINITY;
  for (int a = 0; a < 3; ++a) {
    if (d[a] == 0.0f) {
      if (o[a] < lo[a] || o[a] >= hi[a]) return false;
      continue;
    }
    const float ta = (lo[a] - o[a]) / d[a];
    const float tb = (hi[a] - o[a]) / d[a];
    const float near_t = ta < tb ? ta : tb;
    const float far_t = ta < tb ? tb : ta;
    tmin = near_t > tmin ? near_t : tmin;
    tmax = far_t < tmax ? far_t : tmax;
  }
  return tmin <= tmax;
}

// Marches one ray; calls emit(t_start, t_end) for every sample in order; returns the count.
template <typename Emit>
SV_HD int64_t march_ray(const MarchGrid& g, const float o[3], const float d[3], float near,
                        float far, float step, Emit&& emit) {
  if (d[0] == 0.0f && d[1] == 0.0f && d[2] == 0.0f) return 0;
  if (!finite(static_cast<double>(near))) return 0;
  float tmin, tmax;
  if (!ray_box(o, d, g.union_lo, g.union_hi, tmin, tmax)) return 0;
  const float t_lo = tmin > near ? tmin : near;
  const float t_hi = tmax + step;
  float kf = floorf((t_lo - near) / step) - 1.0f;
  kf = kf < static_cast<float>(kMaxSteps) ? kf : static_cast<float>(kMaxSteps);
  int64_t k = kf > 0.0f ? static_cast<int64_t>(kf) : 0;

  // Skip-region helpers (not authoritative): reciprocal directions, per-level face margins
  // and the intervals of the level boxes grown by their margins (a region must not reach
  // into a finer level, whose cells decide there).
  float inv_d[3];
  for (int a = 0; a < 3; ++a) inv_d[a] = d[a] != 0.0f ? 1.0f / d[a] : 0.0f;
  float eps[kMaxLevels][3];
  float level_tmin[kMaxLevels], level_tmax[kMaxLevels];
  bool level_hit[kMaxLevels];
  for (int l = 0; l < g.levels; ++l) {
    float lo[3], hi[3];
    for (int a = 0; a < 3; ++a) {
      eps[l][a] = g.face_eps[l][a] + 4e-6f * fabsf(o[a]);
      lo[a] = g.lo[l][a] - eps[l][a];
      hi[a] = g.hi[l][a] + eps[l][a];
    }
    level_hit[l] = ray_box(o, d, lo, hi, level_tmin[l], level_tmax[l]);
  }

  int64_t count = 0;
  while (k < kMaxSteps) {
    // The authoritative per-sample rule (mirrored by the PyTorch reference).
    const float t0 = near + static_cast<float>(k) * step;
    if (!(t0 < far) || t0 > t_hi) break;
    float t1 = near + static_cast<float>(k + 1) * step;
    t1 = t1 > far ? far : t1;
    const float tm = (t0 + t1) * 0.5f;
    float x[3];
    for (int a = 0; a < 3; ++a) x[a] = o[a] + tm * d[a];
    int level = -1;
    for (int l = 0; l < g.levels; ++l) {
      if (x[0] >= g.lo[l][0] && x[0] < g.hi[l][0] && x[1] >= g.lo[l][1] && x[1] < g.hi[l][1] &&
          x[2] >= g.lo[l][2] && x[2] < g.hi[l][2]) {
        level = l;
        break;
      }
    }
    if (level < 0) {
      ++k;
      continue;
    }
    int cell[3];
    for (int a = 0; a < 3; ++a) {
      int c = static_cast<int>(floorf((x[a] - g.lo[level][a]) * g.scale[level][a]));
      c = c < 0 ? 0 : c;
      cell[a] = c >= g.res[a] ? g.res[a] - 1 : c;
    }
    const int64_t flat =
        ((static_cast<int64_t>(level) * g.res[0] + cell[0]) * g.res[1] + cell[1]) * g.res[2] +
        cell[2];
    const bool occupied = g.occupancy[flat] != 0;
    if (occupied) {
      emit(t0, t1);
      ++count;
    }

    // The region sharing this outcome: the cell, or the largest uniform block holding it.
    int mip = 0;
    if (g.pyramid != nullptr) {
      for (int m = 1; m <= g.mips; ++m) {
        const int64_t bflat =
            g.mip_offset[m] +
            ((static_cast<int64_t>(level) * g.mip_res[m][0] + (cell[0] >> m)) * g.mip_res[m][1] +
             (cell[1] >> m)) * g.mip_res[m][2] +
            (cell[2] >> m);
        if (g.pyramid[bflat] == 1) break;
        mip = m;
      }
    }
    float t_exit = INFINITY;
    for (int a = 0; a < 3; ++a) {
      if (d[a] == 0.0f) continue;
      int face_index;
      face_index = ((cell[a] >> mip) + (d[a] > 0.0f)) << mip;
      face_index = face_index < g.res[a] ? face_index : g.res[a];
      float face = g.lo[level][a] + static_cast<float>(face_index) * g.cell_size[level][a];
      face = d[a] > 0.0f ? face - eps[level][a] : face + eps[level][a];
      const float t_face = (face - o[a]) * inv_d[a];
      t_exit = t_face < t_exit ? t_face : t_exit;
    }
    for (int l = 0; l < level; ++l) {
      if (level_hit[l] && level_tmax[l] >= tm - step)
        t_exit = level_tmin[l] < t_exit ? level_tmin[l] : t_exit;
    }
    t_exit -= 1e-6f * (fabsf(t_exit) + fabsf(near));
    // Samples k + 1 .. last have midpoints in the region (below t_exit by half a step).
    const float last_f = floorf((t_exit - near) / step - 1.0f);
    int64_t last = k;
    if (last_f > static_cast<float>(k))
      last = last_f < static_cast<float>(kMaxSteps - 1) ? static_cast<int64_t>(last_f)
                                                        : kMaxSteps - 1;
    if (occupied) {
      for (int64_t j = k + 1; j <= last; ++j) {
        const float s0 = near + static_cast<float>(j) * step;
        if (!(s0 < far) || s0 > t_hi) return count;
        float s1 = near + static_cast<float>(j + 1) * step;
        s1 = s1 > far ? far : s1;
        emit(s0, s1);
        ++count;
      }
    }
    k = last + 1;
  }
  return count;
}

}  // namespace sparse_voxel
}  // namespace sparseview
