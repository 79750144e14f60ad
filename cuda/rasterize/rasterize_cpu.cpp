// CPU backend of sparseview::rasterize_to_pixels_{fwd,bwd}: tile binning, depth sort and
// front-to-back alpha compositing of projected 2D Gaussians, forward and backward.
//
// The maths follows gsplat's rasterize_to_pixels kernels (and the original 3DGS code):
//   sigma = 0.5 * (a dx^2 + c dy^2) + b dx dy,     (dx, dy) = mean2d - pixel centre
//   alpha = min(0.999, opacity * exp(-sigma)),     skipped when sigma < 0 or alpha < 1/255
//   C     = sum_i c_i alpha_i T_i,  T_i = prod_{j<i} (1 - alpha_j)
//   a pixel stops (without the Gaussian that would do it) once T would drop to <= 1e-4.
// The pure-PyTorch oracle is geometry/ops/rasterize/_torch_impl.py.
//
// Work is split by tiles (OpenMP, dynamic schedule: tiles differ a lot in cost). Inside a
// tile the loop runs Gaussian-outer / pixel-inner over the pixel box of the Gaussian's
// alpha-cut ellipse (tiles it does not reach are not binned at all: Ellipse), so each
// Gaussian's parameters are loaded once per tile (one packed cache line, prefetched); the
// pixels of a row are SIMD lanes in explicit vector types (see kLanes), branch-free, with a
// vector exp (exp_lanes) for float. The forward skips rows whose pixels have all stopped and
// saves per pixel the last contributor and the final transmittance (1 - alpha); the
// backward walks each tile's list back from its last contributor (gsplat's scheme), keeps a
// Gaussian's gradient sums in registers over its rows, writes one gradient row per (tile,
// Gaussian) intersection and reduces them in a fixed order, so gradients are bit-for-bit
// deterministic whatever the thread count.

// -fno-trapping-math (geometry/ops/loader.py) and the pragma let GCC if-convert the
// remaining scalar loops; unlike -ffast-math they allow no reassociation and no
// reciprocals. The pragma also turns FMA contraction back on for this file (the build's
// default is -ffp-contract=off): a * b + c is one fused operation in the exp polynomial,
// the quadratic form and every gradient sum: a tenth of the forward's time and a fifth of
// the backward's on an AVX-512 core (1 thread, the benchmark of issue 20). The results
// stay deterministic and within the parity tolerances of the PyTorch reference, but are
// no longer rounded exactly like it.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math", "no-math-errno", "fp-contract=fast")
#endif

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace sparseview {
namespace {

constexpr double kAlphaThreshold = 1.0 / 255.0;
constexpr double kMaxAlpha = 0.999;
constexpr double kTransmittanceEps = 1e-4;

struct TileGrid {
  int64_t cameras, width, height, tile_size, tiles_x, tiles_y;

  TileGrid(int64_t c, int64_t w, int64_t h, int64_t ts)
      : cameras(c), width(w), height(h), tile_size(ts),
        tiles_x((w + ts - 1) / ts), tiles_y((h + ts - 1) / ts) {}

  int64_t tiles_per_camera() const { return tiles_x * tiles_y; }
  int64_t num_tiles() const { return cameras * tiles_per_camera(); }
};

// Tiles [x0, x1) x [y0, y1) touched by a Gaussian's screen-space bounding box; the same
// float expression as the PyTorch oracle so both bin identically.
template <typename scalar_t>
inline void tile_rect(scalar_t mx, scalar_t my, int32_t rx, int32_t ry, const TileGrid& grid,
                      int64_t* x0, int64_t* x1, int64_t* y0, int64_t* y1) {
  const scalar_t ts = static_cast<scalar_t>(grid.tile_size);
  auto clampi = [](int64_t v, int64_t hi) { return std::min<int64_t>(std::max<int64_t>(v, 0), hi); };
  *x0 = clampi(static_cast<int64_t>(std::floor((mx - static_cast<scalar_t>(rx)) / ts)), grid.tiles_x);
  *x1 = clampi(static_cast<int64_t>(std::ceil((mx + static_cast<scalar_t>(rx)) / ts)), grid.tiles_x);
  *y0 = clampi(static_cast<int64_t>(std::floor((my - static_cast<scalar_t>(ry)) / ts)), grid.tiles_y);
  *y1 = clampi(static_cast<int64_t>(std::ceil((my + static_cast<scalar_t>(ry)) / ts)), grid.tiles_y);
}

// ---- SIMD lanes --------------------------------------------------------------------------
// The pixel loops run over chunks of kLanes consecutive pixels of a tile row (for the
// default 16-pixel tiles: the whole row), written with GCC/Clang vector types (Lanes<T>::V,
// 16 floats or doubles) so every operation is one explicit vector operation whatever the
// target: one AVX-512 register per float chunk, two AVX2 ones, or SSE/scalar code on a CPU
// without them (the build is -march=native and keyed by the CPU: geometry/ops/loader.py).
// The arithmetic is the same, operation for operation, whatever the lane count (no
// reassociation; this file contracts a * b + c into FMAs, see the pragma at the top, the
// same way for every width), so the result of a lane does not depend on the vector width.
// Per-tile state is kept in 64-byte aligned arrays with rows padded to whole chunks, read
// and written as whole vectors (no masked stores: a masked store followed by a full load of
// the same vector stalls store-to-load forwarding).
constexpr int32_t kLanes = 16;
// Narrow footprints (at most kNarrow columns in the tile: half the visits on the benchmark
// of issue 20) run in chunks of kNarrow lanes anchored at their first column instead.
constexpr int32_t kNarrow = 8;

// NL lanes of T: V (values), M (comparison results, -1 / 0), I (int32: columns, ids).
template <typename T, int NL>
struct Lanes {
  static_assert(NL == kLanes || NL == kNarrow, "lane counts");
  using MaskElem = std::conditional_t<sizeof(T) == 8, int64_t, int32_t>;
  typedef T V __attribute__((vector_size(NL * sizeof(T))));
  typedef MaskElem M __attribute__((vector_size(NL * sizeof(T))));
  typedef int32_t I __attribute__((vector_size(NL * 4)));
};

template <typename VT, typename T>
inline VT vload(const T* p) {
  VT v;
  std::memcpy(&v, p, sizeof(VT));
  return v;
}

template <typename VT, typename T>
inline void vstore(T* p, const VT& v) {
  std::memcpy(p, &v, sizeof(VT));
}

// Every lane = s (s - 0 is s exactly, -0 and NaN included).
template <typename VT, typename S>
inline VT vsplat(S s) {
  return s - VT{};
}

template <typename IT>
inline IT viota() {
  IT v{};
  for (int32_t l = 0; l < static_cast<int32_t>(sizeof(IT) / 4); ++l) v[l] = l;
  return v;
}

template <typename VT>
inline VT vabs(VT v) {
  using MT = decltype(v < v);
  using E = std::remove_reference_t<decltype(MT{}[0])>;
  MT bits;
  std::memcpy(&bits, &v, sizeof(VT));
  bits &= vsplat<MT>(std::numeric_limits<E>::max());  // clears the sign bit
  std::memcpy(&v, &bits, sizeof(VT));
  return v;
}

// Bit l set where lane l of the mask is set (true = all bits of the lane set).
template <typename MT>
inline uint32_t lane_bits(MT m) {
  constexpr int32_t n = sizeof(MT) / sizeof(m[0]);
#if defined(__AVX512F__)
  if constexpr (sizeof(MT) == 64 && n == 16) {
    __m512i v;
    std::memcpy(&v, &m, sizeof(v));
    return _mm512_cmplt_epi32_mask(v, _mm512_setzero_si512());
  }
#endif
#if defined(__AVX2__)
  if constexpr (sizeof(MT) == 32 && n == 8) {
    __m256 v;
    std::memcpy(&v, &m, sizeof(v));
    return static_cast<uint32_t>(_mm256_movemask_ps(v));
  }
  if constexpr (sizeof(MT) == 64 && n == 16) {
    __m256 lo, hi;
    std::memcpy(&lo, &m, sizeof(lo));
    std::memcpy(&hi, reinterpret_cast<const char*>(&m) + sizeof(lo), sizeof(hi));
    return static_cast<uint32_t>(_mm256_movemask_ps(lo)) |
           (static_cast<uint32_t>(_mm256_movemask_ps(hi)) << 8);
  }
#endif
  uint32_t bits = 0;
  for (int32_t l = 0; l < n; ++l) bits |= static_cast<uint32_t>(m[l] != 0) << l;
  return bits;
}

// exp for the pixel lanes. float: Cephes' expf (x = n ln2 + r with ln2 split in two, e^r
// by a degree-6 polynomial on |r| <= ln2 / 2, 2^n built in the exponent bits), within about
// 1 ulp of std::exp, in plain vector arithmetic. The argument is clamped so that every
// lane, including masked-out ones with a meaningless argument, stays finite and the float
// to int conversion defined; floor(z) is the truncation, one less where that rounded up
// (exact: |z| < 2^23). double (float64 gradcheck, parity at 1e-12): std::exp per lane.
template <typename V>
inline V exp_lanes(V x) {
  using E = std::remove_reference_t<decltype(x[0])>;
  constexpr int32_t n_lanes = sizeof(V) / sizeof(E);
  if constexpr (std::is_same_v<E, double>) {
    for (int32_t l = 0; l < n_lanes; ++l) x[l] = std::exp(x[l]);
    return x;
  } else {
    using M = typename Lanes<float, n_lanes>::M;
    const V lo = vsplat<V>(-87.0f), hi = vsplat<V>(88.0f);
    x = x < lo ? lo : x;  // std::max(x, -87), std::min(x, 88) with their NaN behaviour
    x = hi < x ? hi : x;
    const V z = x * 1.44269504088896341f + 0.5f;
    M i = __builtin_convertvector(z, M);
    const V f = __builtin_convertvector(i, V);
    const M up = f > z;
    const V n = up ? f - 1.0f : f;
    i += up;  // -1 where rounded up
    const V r = x - n * 0.693359375f + n * 2.12194440e-4f;
    V y = vsplat<V>(1.9875691500e-4f);
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * (r * r) + r + 1.0f;
    const M e = (i + 127) << 23;
    V scale;
    std::memcpy(&scale, &e, sizeof(V));
    return y * scale;
  }
}

// The pixels a Gaussian can keep, tighter than its bounding box: the ellipse where the
// alpha cut can pass (the exact footprint of Speedy-Splat / gsplat). A pixel is kept only
// if op * exp(-sigma) >= 1/255, i.e. sigma <= ln(255 op), where sigma is the quadratic
// form q(dx, dy) = 0.5 (a dx^2 + c dy^2) + b dx dy. The ellipse here is q <= t, with t
// above ln(255 op) by more than every rounding error of the kernel's sigma (float products
// of terms no larger than q's absolute terms over the bounding box, m below) and of its exp
// (a few ulps), and its extents are widened by a small slack: it holds every pixel either
// pass can keep, so the pixels and tiles it leaves out are ones whose alpha is 0 anyway
// (the renders and gradients stay the same, bit for bit). Computed in double, once per
// Gaussian and pass. Where the conic is not safely positive definite or something is not
// finite, `mode` is kBox and the whole bounding box is used.
//
// In pixel columns x (centre x + 0.5, dx = mx - x - 0.5) and for a row at dy, q <= t is
//   x in centre(dy) -/+ half(dy),  centre = mx - 0.5 + (b / a) dy,
//   half^2 = 2t / a - (det / a^2) dy^2,  det = a c - b^2.
struct Ellipse {
  enum Mode : int32_t { kBox = 0, kEllipse = 1, kEmpty = 2 };
  int32_t mode = kBox;
  double mx = 0, my = 0;
  double slope = 0, k0 = 0, k1 = 0;  // kEllipse: centre slope b / a, 2t / a, det / a^2

  template <typename scalar_t>
  static Ellipse make(scalar_t mx_, scalar_t my_, scalar_t ca, scalar_t cb, scalar_t cc,
                      scalar_t op, int32_t rx, int32_t ry) {
    Ellipse e;
    e.mx = mx_;
    e.my = my_;
    const double A = ca, B = cb, C = cc, O = op;
    if (!(std::isfinite(A) && std::isfinite(B) && std::isfinite(C) && std::isfinite(O) &&
          std::isfinite(e.mx) && std::isfinite(e.my)))
      return e;
    if (!(A > 0 && C > 0)) return e;
    const double det = A * C - B * B;
    // Well conditioned only, so that det is accurate in double whatever scalar_t is.
    if (!(det > 1e-6 * A * C)) return e;
    if (!(O > 0)) {  // raw alpha = op * exp(-sigma) <= 0: never kept
      e.mode = kEmpty;
      return e;
    }
    const double thr = std::log(255.0 * O);
    // exp_lanes clamps its argument at -87; beyond that sigma the bound would not hold
    // unless op * e^-87 < 1/255 (thr < 87), true for any op <= 1.
    if (!(thr < 80.0)) return e;
    const double rxd = static_cast<double>(rx) + 1.0, ryd = static_cast<double>(ry) + 1.0;
    const double m = 0.5 * A * rxd * rxd + std::abs(B) * rxd * ryd + 0.5 * C * ryd * ryd;
    const double eps = static_cast<double>(std::numeric_limits<scalar_t>::epsilon());
    const double t = thr + 1e-5 * (1.0 + std::abs(thr)) + 16.0 * eps * m;
    if (!(t > 0)) {
      e.mode = kEmpty;
      return e;
    }
    e.mode = kEllipse;
    e.slope = B / A;
    e.k0 = 2.0 * t / A;
    e.k1 = det / (A * A);
    return e;
  }

  double slack() const { return 1e-3 + 1e-9 * (std::abs(mx) + std::abs(my)); }

  // kEllipse: pixel columns [*x0, *x1] (inclusive; empty when *x0 > *x1) reached by the rows
  // with dy in [dy_lo, dy_hi]: centre + half is concave in dy and largest at dy_peak,
  // centre - half convex and smallest at -dy_peak.
  void band(double dy_lo, double dy_hi, double* x0, double* x1) const {
    const double dy_max = std::sqrt(k0 / k1);
    dy_lo = std::max(dy_lo, -dy_max);
    dy_hi = std::min(dy_hi, dy_max);
    if (!(dy_lo <= dy_hi)) {
      *x0 = 1.0;
      *x1 = 0.0;
      return;
    }
    const double dy_peak = slope * std::sqrt(k0 / (k1 * (k1 + slope * slope)));
    const double yr = std::min(std::max(dy_peak, dy_lo), dy_hi);
    const double yl = std::min(std::max(-dy_peak, dy_lo), dy_hi);
    const double pad = slack();
    const double hr = std::sqrt(std::max(k0 - k1 * yr * yr, 0.0)) + pad;
    const double hl = std::sqrt(std::max(k0 - k1 * yl * yl, 0.0)) + pad;
    const double centre = mx - 0.5;
    *x0 = std::ceil(centre + slope * yl - hl);
    *x1 = std::floor(centre + slope * yr + hr);
  }
};

// Everything a compositing pass reads of one Gaussian (apart from its colour), packed into
// one cache line per Gaussian, built once per pass: a tile reads its Gaussians in depth
// order, i.e. scattered over memory, and loading separate arrays per Gaussian (means,
// conics, opacities, radii, footprint) cost a cache miss each. [ex0, ex1) x [ey0, ey1) is
// the pixel box of the Gaussian's alpha-cut ellipse (Ellipse; rows dy in -/+ sqrt(k0 / k1)
// and the columns of band() over them, both widened by the slack): pixels outside it have
// alpha 0, so the passes skip them (the whole plane for kBox, nothing for kEmpty).
template <typename scalar_t>
struct alignas(64) PackedSplat {
  scalar_t mx, my, ca, cb, cc, op;
  int32_t rx, ry;
  int32_t ex0, ex1, ey0, ey1;

  static PackedSplat make(const scalar_t* mean, const scalar_t* conic, scalar_t opacity,
                          const int32_t* radii, Ellipse* ellipse) {
    PackedSplat g{};
    g.mx = mean[0];
    g.my = mean[1];
    g.ca = conic[0];
    g.cb = conic[1];
    g.cc = conic[2];
    g.op = opacity;
    g.rx = radii[0];
    g.ry = radii[1];
    const Ellipse e = Ellipse::make<scalar_t>(g.mx, g.my, g.ca, g.cb, g.cc, g.op, g.rx, g.ry);
    constexpr int32_t kFar = 1 << 30;
    g.ex0 = g.ey0 = -kFar;
    g.ex1 = g.ey1 = kFar;
    if (e.mode == Ellipse::kEmpty) {
      g.ex0 = g.ey0 = 1;
      g.ex1 = g.ey1 = 0;
    } else if (e.mode == Ellipse::kEllipse) {
      auto to_int = [](double v) {
        return static_cast<int32_t>(std::min(std::max(v, -double(kFar)), double(kFar)));
      };
      const double pad = e.slack(), dy_max = std::sqrt(e.k0 / e.k1);
      double x0, x1;
      e.band(-dy_max, dy_max, &x0, &x1);
      g.ex0 = to_int(x0);
      g.ex1 = to_int(x1 + 1.0);
      // Row y (centre y + 0.5) is reached where |my - y - 0.5| <= dy_max.
      g.ey0 = to_int(std::ceil(e.my - 0.5 - dy_max - pad));
      g.ey1 = to_int(std::floor(e.my - 0.5 + dy_max + pad) + 1.0);
    }
    if (ellipse != nullptr) *ellipse = e;
    return g;
  }
};

int num_threads() {
  return std::max(1, at::get_num_threads());
}

// The packed Gaussians of all cameras, [C*N] (culled ones, radii 0, are never read), and,
// where `ellipses` is given, their footprints for the binning.
template <typename scalar_t>
std::vector<PackedSplat<scalar_t>> pack_splats(const at::Tensor& means2d,
                                               const at::Tensor& conics,
                                               const at::Tensor& opacities,
                                               const at::Tensor& radii,
                                               std::vector<Ellipse>* ellipses = nullptr) {
  const int64_t total = means2d.size(0) * means2d.size(1);
  const scalar_t* m = means2d.data_ptr<scalar_t>();
  const scalar_t* q = conics.data_ptr<scalar_t>();
  const scalar_t* o = opacities.data_ptr<scalar_t>();
  const int32_t* r = radii.data_ptr<int32_t>();
  std::vector<PackedSplat<scalar_t>> out(total);
  if (ellipses != nullptr) ellipses->assign(total, Ellipse{});
  Ellipse* e = ellipses != nullptr ? ellipses->data() : nullptr;
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t i = 0; i < total; ++i) {
    if (r[i * 2] > 0 && r[i * 2 + 1] > 0)
      out[i] = PackedSplat<scalar_t>::make(m + i * 2, q + i * 3, o[i], r + i * 2,
                                           e != nullptr ? e + i : nullptr);
  }
  return out;
}

template <typename scalar_t, typename Fn>
inline void for_each_tile(const PackedSplat<scalar_t>& g, const Ellipse& f, const TileGrid& grid,
                          Fn&& fn) {
  int64_t x0, x1, y0, y1;
  tile_rect<scalar_t>(g.mx, g.my, g.rx, g.ry, grid, &x0, &x1, &y0, &y1);
  if (f.mode == Ellipse::kEmpty) return;
  // A single column of tiles: the ellipse's rows reach each of them (up to the rounding of
  // the radius), not worth the test.
  if (f.mode == Ellipse::kBox || x1 - x0 < 2) {
    for (int64_t ty = y0; ty < y1; ++ty)
      for (int64_t tx = x0; tx < x1; ++tx) fn(ty * grid.tiles_x + tx);
    return;
  }
  const int64_t ts = grid.tile_size;
  for (int64_t ty = y0; ty < y1; ++ty) {
    const int64_t row0 = ty * ts, row1 = std::min(row0 + ts, grid.height) - 1;
    double c0, c1;
    f.band(f.my - (static_cast<double>(row1) + 0.5), f.my - (static_cast<double>(row0) + 0.5),
           &c0, &c1);
    c0 = std::max(c0, static_cast<double>(x0 * ts));
    c1 = std::min(c1, static_cast<double>(std::min(x1 * ts, grid.width) - 1));
    if (!(c0 <= c1)) continue;
    const int64_t tx0 = static_cast<int64_t>(c0) / ts, tx1 = static_cast<int64_t>(c1) / ts + 1;
    for (int64_t tx = tx0; tx < tx1; ++tx) fn(ty * grid.tiles_x + tx);
  }
}

// Positions 0..ids.size()-1 ordered by depth[ids[i]], front to back; stable (ties keep
// index order). float: an LSD radix sort of the depths' order-preserving bit patterns
// (-0 as +0, so that they tie as under <); double: std::stable_sort.
template <typename scalar_t>
std::vector<int32_t> depth_order(const scalar_t* depth, const std::vector<int32_t>& ids) {
  const size_t n = ids.size();
  std::vector<int32_t> pos(n);
  std::iota(pos.begin(), pos.end(), 0);
  if constexpr (std::is_same_v<scalar_t, float>) {
    std::vector<uint32_t> key(n), key_tmp(n);
    std::vector<int32_t> pos_tmp(n);
    for (size_t i = 0; i < n; ++i) {
      const uint32_t b = std::bit_cast<uint32_t>(depth[ids[i]] + 0.0f);
      key[i] = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    }
    constexpr int kBits = 11;
    for (int shift = 0; shift < 32; shift += kBits) {
      std::vector<int64_t> hist((1 << kBits) + 1, 0);
      for (size_t i = 0; i < n; ++i) ++hist[((key[i] >> shift) & ((1u << kBits) - 1)) + 1];
      if (std::count(hist.begin() + 1, hist.end(), static_cast<int64_t>(n)) == 1) continue;
      for (size_t b = 1; b < hist.size(); ++b) hist[b] += hist[b - 1];
      for (size_t i = 0; i < n; ++i) {
        const int64_t dst = hist[(key[i] >> shift) & ((1u << kBits) - 1)]++;
        key_tmp[dst] = key[i];
        pos_tmp[dst] = pos[i];
      }
      key.swap(key_tmp);
      pos.swap(pos_tmp);
    }
  } else {
    std::stable_sort(pos.begin(), pos.end(),
                     [&](int32_t a, int32_t b) { return depth[ids[a]] < depth[ids[b]]; });
  }
  return pos;
}

// Bins every visible Gaussian of every camera into the tiles it can reach (for_each_tile).
// Each tile's list is sorted front to back (stable: ties keep index order).
template <typename scalar_t>
void bin_gaussians(const PackedSplat<scalar_t>* splats, const Ellipse* ellipses,
                   const at::Tensor& depths,
                   const TileGrid& grid, at::Tensor* tile_offsets_out,
                   at::Tensor* flatten_ids_out) {
  const int64_t C = grid.cameras;
  const int64_t N = depths.size(1);
  const int64_t T = grid.tiles_per_camera();
  const scalar_t* depth_ptr = depths.data_ptr<scalar_t>();

  std::vector<int64_t> counts(grid.num_tiles() + 1, 0);
  // Per camera: its visible Gaussians in index order, their tiles (CSR: the footprint test
  // runs once, reading the packed data sequentially), and the order of those Gaussians
  // front to back (the scatter pass below lists them in that order).
  std::vector<std::vector<int32_t>> visible(C), tiles(C), tile_start(C), order(C);

#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
  for (int64_t c = 0; c < C; ++c) {
    std::vector<int32_t>& ids = visible[c];
    ids.reserve(N);
    for (int64_t n = 0; n < N; ++n) {
      const PackedSplat<scalar_t>& g = splats[c * N + n];
      if (g.rx > 0 && g.ry > 0) ids.push_back(static_cast<int32_t>(n));
    }
    int64_t* count_c = counts.data() + c * T;
    std::vector<int32_t>& tiles_c = tiles[c];
    std::vector<int32_t>& start_c = tile_start[c];
    tiles_c.reserve(ids.size() * 4);
    start_c.resize(ids.size() + 1);
    for (size_t i = 0; i < ids.size(); ++i) {
      start_c[i] = static_cast<int32_t>(tiles_c.size());
      const int64_t cg = c * N + ids[i];
      for_each_tile<scalar_t>(splats[cg], ellipses[cg], grid, [&](int64_t t) {
        ++count_c[t];
        tiles_c.push_back(static_cast<int32_t>(t));
      });
    }
    start_c[ids.size()] = static_cast<int32_t>(tiles_c.size());
    order[c] = depth_order(depth_ptr + c * N, ids);
  }

  at::Tensor tile_offsets = at::empty({grid.num_tiles() + 1}, at::kLong);
  int64_t* offsets = tile_offsets.data_ptr<int64_t>();
  offsets[0] = 0;
  for (int64_t t = 0; t < grid.num_tiles(); ++t) offsets[t + 1] = offsets[t] + counts[t];
  const int64_t total = offsets[grid.num_tiles()];

  at::Tensor flatten_ids = at::empty({total}, at::kInt);
  int32_t* flat = flatten_ids.data_ptr<int32_t>();

#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
  for (int64_t c = 0; c < C; ++c) {
    std::vector<int64_t> cursor(offsets + c * T, offsets + (c + 1) * T);
    const int32_t* t = tiles[c].data();
    const int32_t* start = tile_start[c].data();
    for (const int32_t i : order[c]) {
      const int32_t n = visible[c][i];
      for (int32_t j = start[i]; j < start[i + 1]; ++j) flat[cursor[t[j]]++] = n;
    }
  }
  *tile_offsets_out = tile_offsets;
  *flatten_ids_out = flatten_ids;
}


// A zero-filled, 64-byte aligned per-thread array (std::vector does not promise alignment).
template <typename T>
class AlignedArray {
 public:
  explicit AlignedArray(int64_t n)
      : data_(static_cast<T*>(std::aligned_alloc(64, round_up(n * sizeof(T))))) {
    TORCH_CHECK(data_ != nullptr, "out of memory");
    std::fill(data_, data_ + n, T(0));
  }
  ~AlignedArray() { std::free(data_); }
  AlignedArray(const AlignedArray&) = delete;
  AlignedArray& operator=(const AlignedArray&) = delete;
  T* data() { return data_; }
  T& operator[](int64_t i) { return data_[i]; }

 private:
  static size_t round_up(size_t bytes) { return std::max<size_t>((bytes + 63) / 64 * 64, 64); }
  T* data_;
};

// Tile row stride in the per-tile arrays: the tile width padded to whole chunks of lanes.
inline int64_t padded_row(int64_t tile_size) { return (tile_size + kLanes - 1) / kLanes * kLanes; }

// Both passes walk a tile's list in order and each Gaussian takes a while (its rows of
// pixels), so the packed data and colour of the one kPrefetch entries ahead are requested
// before they are needed (they are scattered over memory: lists are in depth order).
constexpr int64_t kPrefetch = 2;

template <typename scalar_t>
inline void prefetch_splat(const PackedSplat<scalar_t>* splats, const scalar_t* colors,
                           int64_t cg, int64_t D) {
  __builtin_prefetch(splats + cg);
  __builtin_prefetch(colors + cg * D);
  __builtin_prefetch(colors + cg * D + D - 1);
}

// The pixels of tile [px0, px1) x [py0, py1) that a Gaussian can reach: centres with
// |dx| <= rx and |dy| <= ry (beyond that the quadratic form is at least rx^2 / (2 cov_xx) >=
// log(opacity * 255), i.e. alpha < 1/255), within its ellipse box. Both passes take exactly
// the same per-pixel decisions from here on.
template <typename scalar_t>
inline bool splat_pixels(const PackedSplat<scalar_t>& g, int64_t px0, int64_t px1, int64_t py0,
                         int64_t py1, int32_t* x0, int32_t* x1, int32_t* y0, int32_t* y1) {
  const scalar_t half = scalar_t(0.5);
  const int64_t bx0 = static_cast<int64_t>(std::ceil(g.mx - g.rx - half));
  const int64_t bx1 = static_cast<int64_t>(std::floor(g.mx + g.rx - half)) + 1;
  const int64_t by0 = static_cast<int64_t>(std::ceil(g.my - g.ry - half));
  const int64_t by1 = static_cast<int64_t>(std::floor(g.my + g.ry - half)) + 1;
  const int64_t cx0 = std::max<int64_t>({px0, bx0, g.ex0});
  const int64_t cx1 = std::min<int64_t>({px1, bx1, g.ex1});
  const int64_t cy0 = std::max<int64_t>({py0, by0, g.ey0});
  const int64_t cy1 = std::min<int64_t>({py1, by1, g.ey1});
  if (!(cx0 < cx1 && cy0 < cy1)) return false;
  // Inside the tile now: int32 from here on.
  *x0 = static_cast<int32_t>(cx0);
  *x1 = static_cast<int32_t>(cx1);
  *y0 = static_cast<int32_t>(cy0);
  *y1 = static_cast<int32_t>(cy1);
  return true;
}

// One chunk of NL pixels of row dy against one Gaussian: the lanes' alpha = min(0.999, op *
// exp(-sigma)), or 0 where the pixel is skipped (sigma < 0 or alpha < 1/255) or outside
// columns [x0, x1); a kept alpha is >= 1/255, so alpha > 0 means "kept". vis = exp(-sigma),
// dx = mx - pixel centre. The arithmetic is the same whatever NL.
template <typename scalar_t, int NL>
struct ChunkAlpha {
  using L = Lanes<scalar_t, NL>;
  typename L::V alpha, vis, dx;

  ChunkAlpha(const PackedSplat<scalar_t>& g, int32_t cx, int32_t x0, int32_t x1, scalar_t dy,
             scalar_t ccdydy) {
    using V = typename L::V;
    using M = typename L::M;
    const typename L::I cols = viota<typename L::I>() + cx;
    const M in_range = __builtin_convertvector((cols >= x0) & (cols < x1), M);
    dx = g.mx - (__builtin_convertvector(cols, V) + scalar_t(0.5));
    const V sigma = scalar_t(0.5) * (g.ca * dx * dx + ccdydy) + g.cb * dx * dy;
    vis = exp_lanes(-sigma);
    const V raw = g.op * vis;
    const scalar_t max_alpha = static_cast<scalar_t>(kMaxAlpha);
    const V capped = raw < max_alpha ? raw : vsplat<V>(max_alpha);  // std::min(0.999, raw)
    const M kept = in_range & (sigma >= scalar_t(0)) &
                   (raw >= static_cast<scalar_t>(kAlphaThreshold));
    alpha = kept ? capped : V{};
  }
};

// The first chunk column for a Gaussian reaching columns [x0, x1) of a tile starting at
// px0 (row stride R): kLanes-aligned in the tile, or for a narrow footprint (NL = kNarrow)
// its first column, moved left so the chunk stays inside the padded row.
template <int NL>
inline int32_t first_chunk(int32_t x0, int64_t px0, int64_t R) {
  if constexpr (NL == kLanes) return static_cast<int32_t>(px0 + (x0 - px0) / kLanes * kLanes);
  return static_cast<int32_t>(std::min<int64_t>(x0, px0 + R - NL));
}

// A tile's per-pixel state in the forward (colours as D planes, not D interleaved channels,
// so that every access runs over consecutive pixels: the lanes).
template <typename scalar_t>
struct ForwardTile {
  scalar_t* trans;
  scalar_t* accum;
  typename Lanes<scalar_t, kLanes>::MaskElem* done;
  int32_t* last;
  int32_t* row_left;  // pixels of each row not stopped yet
  int64_t live_rows;  // rows with some
  int64_t R, S, D, px0, py0;
};

template <typename scalar_t, int NL>
inline void forward_splat(const PackedSplat<scalar_t>& g, const scalar_t* col, int32_t kid,
                          int32_t x0, int32_t x1, int32_t y0, int32_t y1,
                          ForwardTile<scalar_t>& st) {
  using L = Lanes<scalar_t, NL>;
  using V = typename L::V;
  using M = typename L::M;
  using I = typename L::I;
  const scalar_t t_eps = static_cast<scalar_t>(kTransmittanceEps);
  const int32_t cx0 = first_chunk<NL>(x0, st.px0, st.R);
  for (int32_t y = y0; y < y1; ++y) {
    int32_t& left = st.row_left[y - st.py0];
    if (left == 0) continue;
    const scalar_t dy = g.my - (static_cast<scalar_t>(y) + scalar_t(0.5));
    const scalar_t ccdydy = g.cc * dy * dy;
    for (int32_t cx = cx0; cx < x1; cx += NL) {
      const int64_t p0 = (y - st.py0) * st.R + (cx - st.px0);
      const V alpha = ChunkAlpha<scalar_t, NL>(g, cx, x0, x1, dy, ccdydy).alpha;
      const M dn = vload<M>(st.done + p0);
      const V a = dn ? V{} : alpha;  // stopped pixels take nothing
      const V t = vload<V>(st.trans + p0);
      const V next_t = t * (scalar_t(1) - a);
      // A pixel stops without the Gaussian that would take T to <= 1e-4.
      const M hit = a > scalar_t(0);
      const M stop = hit & (next_t <= t_eps);
      const M take = hit & ~stop;
      vstore(st.done + p0, dn | stop);
      vstore(st.trans + p0, take ? next_t : t);
      const I ls = vload<I>(st.last + p0);
      // As bit operations: GCC turns the select of a loaded value into a masked store, which
      // stalls the next Gaussian's load of the same chunk (no store-to-load forwarding).
      const I take_i = __builtin_convertvector(take, I);
      vstore(st.last + p0, ls ^ ((ls ^ vsplat<I>(kid)) & take_i));
      // The same per-pixel accumulation order as the reference (Gaussian after Gaussian);
      // a lane not taken adds an exact zero.
      const V wt = take ? a * t : V{};
      for (int64_t d = 0; d < st.D; ++d) {
        scalar_t* acc = st.accum + d * st.S + p0;
        vstore(acc, vload<V>(acc) + wt * col[d]);
      }
      const uint32_t stopped = lane_bits(stop);
      if (stopped != 0) {
        left -= std::popcount(stopped);
        if (left == 0) --st.live_rows;
      }
    }
  }
}

// Forward, per tile: Gaussian after Gaussian in depth order, each over the rows and chunks
// of its pixel box, with the tile's per-pixel state (transmittance, colour planes, done
// flags, last contributor) in L1-resident arrays. A row (a lane group) whose pixels have all
// stopped is skipped, and the tile's list is left once every row has.
template <typename scalar_t>
void composite_forward(const PackedSplat<scalar_t>* splats, const at::Tensor& colors,
                       const at::Tensor& tile_offsets, const at::Tensor& flatten_ids,
                       const TileGrid& grid, at::Tensor& render_colors,
                       at::Tensor& render_alphas, at::Tensor& last_ids) {
  const int64_t N = colors.size(1);
  const int64_t D = colors.size(2);
  const int64_t T = grid.tiles_per_camera();
  const int64_t W = grid.width, H = grid.height, ts = grid.tile_size;
  const int64_t R = padded_row(ts), S = R * ts;  // row stride, colour plane stride
  const scalar_t* color_ptr = colors.data_ptr<scalar_t>();
  const int64_t* offsets = tile_offsets.data_ptr<int64_t>();
  const int32_t* flat = flatten_ids.data_ptr<int32_t>();
  scalar_t* out_color = render_colors.data_ptr<scalar_t>();
  scalar_t* out_alpha = render_alphas.data_ptr<scalar_t>();
  int32_t* out_last = last_ids.data_ptr<int32_t>();

#pragma omp parallel num_threads(num_threads())
  {
    AlignedArray<scalar_t> trans(S), accum(S * D);
    AlignedArray<typename Lanes<scalar_t, kLanes>::MaskElem> done(S);
    AlignedArray<int32_t> last(S), row_left(ts);
    ForwardTile<scalar_t> st{trans.data(), accum.data(), done.data(), last.data(),
                             row_left.data(), 0, R, S, D, 0, 0};

#pragma omp for schedule(dynamic, 1)
    for (int64_t tile = 0; tile < grid.num_tiles(); ++tile) {
      const int64_t c = tile / T;
      const int64_t ty = (tile % T) / grid.tiles_x, tx = (tile % T) % grid.tiles_x;
      const int64_t px0 = tx * ts, py0 = ty * ts;
      const int64_t px1 = std::min(px0 + ts, W), py1 = std::min(py0 + ts, H);
      std::fill(trans.data(), trans.data() + S, scalar_t(1));
      std::fill(accum.data(), accum.data() + S * D, scalar_t(0));
      std::fill(last.data(), last.data() + S, 0);
      std::fill(done.data(), done.data() + S, 0);
      std::fill(row_left.data(), row_left.data() + (py1 - py0), static_cast<int32_t>(px1 - px0));
      st.live_rows = py1 - py0;
      st.px0 = px0;
      st.py0 = py0;

      const int64_t begin = offsets[tile], end = offsets[tile + 1];
      for (int64_t k = begin; k < end && st.live_rows > 0; ++k) {
        if (k + kPrefetch < end) prefetch_splat(splats, color_ptr, c * N + flat[k + kPrefetch], D);
        const int64_t cg = c * N + flat[k];
        const PackedSplat<scalar_t>& g = splats[cg];
        int32_t x0, x1, y0, y1;
        if (!splat_pixels(g, px0, px1, py0, py1, &x0, &x1, &y0, &y1)) continue;
        const scalar_t* col = color_ptr + cg * D;
        const int32_t kid = static_cast<int32_t>(k - begin + 1);
        if (x1 - x0 <= kNarrow)
          forward_splat<scalar_t, kNarrow>(g, col, kid, x0, x1, y0, y1, st);
        else
          forward_splat<scalar_t, kLanes>(g, col, kid, x0, x1, y0, y1, st);
      }

      for (int64_t y = py0; y < py1; ++y) {
        for (int64_t x = px0; x < px1; ++x) {
          const int64_t p = (y - py0) * R + (x - px0);
          const int64_t pix = (c * H + y) * W + x;
          for (int64_t d = 0; d < D; ++d) out_color[pix * D + d] = accum[d * S + p];
          out_alpha[pix] = scalar_t(1) - trans[p];
          out_last[pix] = last[p];
        }
      }
    }
  }
}

// A tile's per-pixel state in the backward (colours as D planes, as in the forward; the
// padding stays zero) and the largest last contributor of each row.
template <typename scalar_t>
struct BackwardTile {
  scalar_t* trans;
  const scalar_t* t_final;
  const scalar_t* v_alpha;
  scalar_t* buffer;
  const scalar_t* v_color;
  const int32_t* last;
  const int32_t* row_last;
  int64_t R, S, D, px0, py0;
};

// One Gaussian's gradient sums over its pixels, per lane (summed across lanes once, at the
// end); the colour sums are in `color` (D x NL, memory: D is not fixed).
template <typename scalar_t, int NL>
struct GradLanes {
  using V = typename Lanes<scalar_t, NL>::V;
  V mx{}, my{}, ca{}, cb{}, cc{}, op{}, mx_abs{}, my_abs{};
  scalar_t* color;

  // Sums across lanes, in lane order, into out[P] (2 mean, 3 conic, 1 opacity, D colour,
  // 2 |mean|).
  void write(scalar_t* out, int64_t D) const {
    auto sum = [](const scalar_t* v) {
      scalar_t s = 0;
      for (int32_t l = 0; l < NL; ++l) s += v[l];
      return s;
    };
    alignas(64) scalar_t v[8][NL];
    vstore(v[0], mx);
    vstore(v[1], my);
    vstore(v[2], ca);
    vstore(v[3], cb);
    vstore(v[4], cc);
    vstore(v[5], op);
    vstore(v[6], mx_abs);
    vstore(v[7], my_abs);
    for (int32_t q = 0; q < 6; ++q) out[q] = sum(v[q]);
    for (int64_t d = 0; d < D; ++d) out[6 + d] = sum(color + d * NL);
    out[6 + D] = sum(v[6]);
    out[7 + D] = sum(v[7]);
  }
};

// The reverse walk's step for one Gaussian over its pixel box; returns whether it hit a
// pixel.
template <typename scalar_t, int NL>
inline bool backward_splat(const PackedSplat<scalar_t>& g, const scalar_t* col, int32_t kl,
                           int32_t x0, int32_t x1, int32_t y0, int32_t y1,
                           const BackwardTile<scalar_t>& st, GradLanes<scalar_t, NL>& gr) {
  using L = Lanes<scalar_t, NL>;
  using V = typename L::V;
  using M = typename L::M;
  using I = typename L::I;
  const scalar_t max_alpha = static_cast<scalar_t>(kMaxAlpha);
  const scalar_t ca = g.ca, cb = g.cb, cc = g.cc, neg_op = -g.op;
  const int32_t cx0 = first_chunk<NL>(x0, st.px0, st.R);
  const int64_t D = st.D;
  std::fill(gr.color, gr.color + D * NL, scalar_t(0));
  M any_hit{};
  for (int32_t y = y0; y < y1; ++y) {
    if (kl >= st.row_last[y - st.py0]) continue;  // every pixel of the row stops before
    const scalar_t dy = g.my - (static_cast<scalar_t>(y) + scalar_t(0.5));
    const scalar_t ccdydy = cc * dy * dy, cbdy = cb * dy, ccdy = cc * dy;
    for (int32_t cx = cx0; cx < x1; cx += NL) {
      const int64_t p0 = (y - st.py0) * st.R + (cx - st.px0);
      const ChunkAlpha<scalar_t, NL> ch(g, cx, x0, x1, dy, ccdydy);
      // 1. The same alphas as the forward (0 behind the pixel's last contributor) and the
      //    transmittance in front of the Gaussian.
      const M behind = __builtin_convertvector(kl < vload<I>(st.last + p0), M);
      const V alpha = behind ? ch.alpha : V{};
      const V ra = scalar_t(1) / (scalar_t(1) - alpha);  // 1 if not hit
      const V tr = vload<V>(st.trans + p0) * ra;
      vstore(st.trans + p0, tr);
      V v_alpha = vload<V>(st.t_final + p0) * ra * vload<V>(st.v_alpha + p0);
      const M hit = alpha > scalar_t(0);
      any_hit |= hit;
      const V fac = alpha * tr;
      // 2. Colour gradients and dL/dalpha, channel by channel.
      for (int64_t d = 0; d < D; ++d) {
        const scalar_t cd = col[d];
        const V vc = vload<V>(st.v_color + d * st.S + p0);
        scalar_t* buf_ptr = st.buffer + d * st.S + p0;
        const V buf = vload<V>(buf_ptr);
        scalar_t* gc = gr.color + d * NL;
        vstore(gc, vload<V>(gc) + (hit ? fac * vc : V{}));
        v_alpha += (cd * tr - buf * ra) * vc;
        vstore(buf_ptr, hit ? buf + cd * fac : buf);
      }
      // 3. Through alpha = opacity * exp(-sigma) (not where alpha was capped).
      const V dx = ch.dx, vis = ch.vis;
      const M live = hit & (g.op * vis <= max_alpha);
      const V v_sigma = live ? neg_op * vis * v_alpha : V{};
      const V gx = v_sigma * (ca * dx + cbdy);
      const V gy = v_sigma * (cb * dx + ccdy);
      gr.mx += gx;
      gr.my += gy;
      gr.ca += scalar_t(0.5) * v_sigma * dx * dx;
      gr.cb += v_sigma * dx * dy;
      gr.cc += scalar_t(0.5) * v_sigma * dy * dy;
      gr.op += live ? vis * v_alpha : V{};
      gr.mx_abs += vabs(gx);
      gr.my_abs += vabs(gy);
    }
  }
  return lane_bits(any_hit) != 0;
}

// Backward, per tile: gsplat's reverse walk from the tile's last contributor back to the
// front, undoing each Gaussian's factor on the saved final transmittance (T_i = T_{i+1} /
// (1 - alpha_i)) and carrying the colour of what lies behind in `buffer`; rows none of
// whose pixels reach the Gaussian (by their last contributor) are skipped. A Gaussian's
// gradient sums stay in vector registers over all its rows and are summed across lanes
// once, into one gradient row per (tile, Gaussian) intersection; those rows are reduced in a
// fixed order (reduce_intersections), so gradients are bit-for-bit deterministic whatever
// the thread count (private per-thread sums would depend on which thread got which tile),
// without atomics.
template <typename scalar_t>
void composite_backward(const PackedSplat<scalar_t>* splats, const at::Tensor& colors,
                        const at::Tensor& render_alphas,
                        const at::Tensor& last_ids, const at::Tensor& tile_offsets,
                        const at::Tensor& flatten_ids, const at::Tensor& v_render_colors,
                        const at::Tensor& v_render_alphas, const TileGrid& grid,
                        at::Tensor& v_isect) {
  const int64_t N = colors.size(1);
  const int64_t D = colors.size(2);
  const int64_t P = v_isect.size(1);  // 2 mean + 3 conic + 1 opacity + D colour + 2 |mean|
  const int64_t T = grid.tiles_per_camera();
  const int64_t W = grid.width, H = grid.height, ts = grid.tile_size;
  const int64_t R = padded_row(ts), S = R * ts;  // row stride, colour plane stride
  const scalar_t* color_ptr = colors.data_ptr<scalar_t>();
  const scalar_t* alpha_ptr = render_alphas.data_ptr<scalar_t>();
  const int32_t* last_ptr = last_ids.data_ptr<int32_t>();
  const int64_t* offsets = tile_offsets.data_ptr<int64_t>();
  const int32_t* flat = flatten_ids.data_ptr<int32_t>();
  const scalar_t* vc_ptr = v_render_colors.data_ptr<scalar_t>();
  const scalar_t* va_ptr = v_render_alphas.data_ptr<scalar_t>();
  scalar_t* v_out = v_isect.data_ptr<scalar_t>();

#pragma omp parallel num_threads(num_threads())
  {
    AlignedArray<scalar_t> trans(S), t_final(S), v_alpha_px(S), buffer(S * D), v_color_px(S * D);
    AlignedArray<scalar_t> color_wide(D * kLanes), color_narrow(D * kNarrow);
    AlignedArray<int32_t> last(S), row_last(ts);
    BackwardTile<scalar_t> st{trans.data(), t_final.data(), v_alpha_px.data(), buffer.data(),
                              v_color_px.data(), last.data(), row_last.data(), R, S, D, 0, 0};

#pragma omp for schedule(dynamic, 1)
    for (int64_t tile = 0; tile < grid.num_tiles(); ++tile) {
      const int64_t c = tile / T;
      const int64_t ty = (tile % T) / grid.tiles_x, tx = (tile % T) % grid.tiles_x;
      const int64_t px0 = tx * ts, py0 = ty * ts;
      const int64_t px1 = std::min(px0 + ts, W), py1 = std::min(py0 + ts, H);
      st.px0 = px0;
      st.py0 = py0;
      int32_t max_last = 0;
      for (int64_t y = py0; y < py1; ++y) {
        int32_t row_max = 0;
        for (int64_t x = px0; x < px1; ++x) {
          const int64_t p = (y - py0) * R + (x - px0);
          const int64_t pix = (c * H + y) * W + x;
          t_final[p] = scalar_t(1) - alpha_ptr[pix];
          trans[p] = t_final[p];
          v_alpha_px[p] = va_ptr[pix];
          last[p] = last_ptr[pix];
          row_max = std::max(row_max, last[p]);
          for (int64_t d = 0; d < D; ++d) {
            buffer[d * S + p] = 0;
            v_color_px[d * S + p] = vc_ptr[pix * D + d];
          }
        }
        row_last[y - py0] = row_max;
        max_last = std::max(max_last, row_max);
      }

      const int64_t begin = offsets[tile];
      // This tile's gradient rows start at zero (rows of Gaussians that reach no pixel stay
      // so): zeroed here, by the thread that fills them, instead of the whole [M, P] array
      // up front.
      std::fill(v_out + begin * P, v_out + offsets[tile + 1] * P, scalar_t(0));
      for (int64_t kl = static_cast<int64_t>(max_last) - 1; kl >= 0; --kl) {
        const int64_t k = begin + kl;
        if (kl >= kPrefetch) prefetch_splat(splats, color_ptr, c * N + flat[k - kPrefetch], D);
        const int64_t cg = c * N + flat[k];
        const PackedSplat<scalar_t>& g = splats[cg];
        int32_t x0, x1, y0, y1;
        if (!splat_pixels(g, px0, px1, py0, py1, &x0, &x1, &y0, &y1)) continue;
        const scalar_t* col = color_ptr + cg * D;
        const int32_t kl32 = static_cast<int32_t>(kl);
        if (x1 - x0 <= kNarrow) {
          GradLanes<scalar_t, kNarrow> gr;
          gr.color = color_narrow.data();
          if (backward_splat(g, col, kl32, x0, x1, y0, y1, st, gr)) gr.write(v_out + k * P, D);
        } else {
          GradLanes<scalar_t, kLanes> gr;
          gr.color = color_wide.data();
          if (backward_splat(g, col, kl32, x0, x1, y0, y1, st, gr)) gr.write(v_out + k * P, D);
        }
      }
    }
  }
}

// Sums the per-intersection gradient rows into per-Gaussian gradients [C,N,P], in a fixed
// order per camera so the result does not depend on the thread count.
template <typename scalar_t>
void reduce_intersections(const at::Tensor& v_isect, const at::Tensor& tile_offsets,
                          const at::Tensor& flatten_ids, const TileGrid& grid,
                          at::Tensor& v_all) {
  const int64_t C = v_all.size(0), N = v_all.size(1), P = v_all.size(2);
  const int64_t T = grid.tiles_per_camera();
  const int64_t* offsets = tile_offsets.data_ptr<int64_t>();
  const int32_t* flat = flatten_ids.data_ptr<int32_t>();
  const scalar_t* src = v_isect.data_ptr<scalar_t>();
  scalar_t* dst = v_all.data_ptr<scalar_t>();
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t k = offsets[c * T]; k < offsets[(c + 1) * T]; ++k) {
      scalar_t* out = dst + (c * N + flat[k]) * P;
      const scalar_t* row = src + k * P;
      for (int64_t j = 0; j < P; ++j) out[j] += row[j];
    }
  }
}

void check_inputs(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& colors,
                  const at::Tensor& opacities, const at::Tensor& radii, int64_t width,
                  int64_t height, int64_t tile_size) {
  TORCH_CHECK(means2d.dim() == 3 && means2d.size(2) == 2, "means2d must be [C,N,2]");
  const int64_t C = means2d.size(0), N = means2d.size(1);
  TORCH_CHECK(conics.sizes() == at::IntArrayRef({C, N, 3}), "conics must be [C,N,3]");
  TORCH_CHECK(colors.dim() == 3 && colors.size(0) == C && colors.size(1) == N,
              "colors must be [C,N,D]");
  TORCH_CHECK(opacities.sizes() == at::IntArrayRef({C, N}), "opacities must be [C,N]");
  TORCH_CHECK(radii.sizes() == at::IntArrayRef({C, N, 2}) && radii.scalar_type() == at::kInt,
              "radii must be int32 [C,N,2]");
  for (const at::Tensor* t : {&means2d, &conics, &colors, &opacities, &radii}) {
    TORCH_CHECK(t->is_contiguous() && t->device().is_cpu(), "inputs must be contiguous CPU");
  }
  TORCH_CHECK(conics.scalar_type() == means2d.scalar_type() &&
                  colors.scalar_type() == means2d.scalar_type() &&
                  opacities.scalar_type() == means2d.scalar_type(),
              "float inputs must share one dtype");
  TORCH_CHECK(width > 0 && height > 0 && tile_size > 0, "width, height, tile_size must be > 0");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rasterize_fwd_cpu(
    const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& colors,
    const at::Tensor& opacities, const at::Tensor& depths, const at::Tensor& radii,
    int64_t width, int64_t height, int64_t tile_size) {
  check_inputs(means2d, conics, colors, opacities, radii, width, height, tile_size);
  TORCH_CHECK(depths.sizes() == opacities.sizes() && depths.is_contiguous() &&
                  depths.scalar_type() == means2d.scalar_type(),
              "depths must be [C,N] like opacities");
  const int64_t C = means2d.size(0), D = colors.size(2);
  const TileGrid grid(C, width, height, tile_size);
  const auto opts = means2d.options();
  at::Tensor render_colors = at::empty({C, height, width, D}, opts);
  at::Tensor render_alphas = at::empty({C, height, width, 1}, opts);
  at::Tensor last_ids = at::empty({C, height, width}, opts.dtype(at::kInt));
  at::Tensor tile_offsets, flatten_ids;
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "rasterize_to_pixels_fwd", [&] {
    std::vector<Ellipse> ellipses;
    const auto splats = pack_splats<scalar_t>(means2d, conics, opacities, radii, &ellipses);
    bin_gaussians<scalar_t>(splats.data(), ellipses.data(), depths, grid, &tile_offsets,
                            &flatten_ids);
    composite_forward<scalar_t>(splats.data(), colors, tile_offsets, flatten_ids, grid,
                                render_colors, render_alphas, last_ids);
  });
  return {render_colors, render_alphas, last_ids, tile_offsets, flatten_ids};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rasterize_bwd_cpu(
    const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& colors,
    const at::Tensor& opacities, const at::Tensor& radii, const at::Tensor& render_alphas,
    const at::Tensor& last_ids, const at::Tensor& tile_offsets, const at::Tensor& flatten_ids,
    const at::Tensor& v_render_colors, const at::Tensor& v_render_alphas, int64_t width,
    int64_t height, int64_t tile_size) {
  check_inputs(means2d, conics, colors, opacities, radii, width, height, tile_size);
  const int64_t C = means2d.size(0), N = means2d.size(1), D = colors.size(2);
  TORCH_CHECK(v_render_colors.sizes() == at::IntArrayRef({C, height, width, D}) &&
                  v_render_alphas.sizes() == at::IntArrayRef({C, height, width, 1}),
              "gradient shapes do not match the render");
  const TileGrid grid(C, width, height, tile_size);
  const at::Tensor vc = v_render_colors.contiguous().to(means2d.scalar_type());
  const at::Tensor va = v_render_alphas.contiguous().to(means2d.scalar_type());
  const int64_t M = flatten_ids.size(0);
  const int64_t P = 8 + D;
  at::Tensor v_isect = at::empty({M, P}, means2d.options());  // zeroed per tile
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "rasterize_to_pixels_bwd", [&] {
    const auto splats = pack_splats<scalar_t>(means2d, conics, opacities, radii);
    composite_backward<scalar_t>(splats.data(), colors, render_alphas.contiguous(),
                                 last_ids.contiguous(),
                                 tile_offsets, flatten_ids, vc, va, grid, v_isect);
  });

  at::Tensor v_all = at::zeros({C, N, P}, means2d.options());
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "rasterize_reduce", [&] {
    reduce_intersections<scalar_t>(v_isect, tile_offsets, flatten_ids, grid, v_all);
  });
  return {v_all.narrow(2, 0, 2).contiguous(), v_all.narrow(2, 2, 3).contiguous(),
          v_all.narrow(2, 6, D).contiguous(), v_all.select(2, 5).contiguous(),
          v_all.narrow(2, 6 + D, 2).contiguous()};
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseview, CPU, m) {
  m.impl("rasterize_to_pixels_fwd", &rasterize_fwd_cpu);
  m.impl("rasterize_to_pixels_bwd", &rasterize_bwd_cpu);
}

}  // namespace sparseview
