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
// tile the loop runs Gaussian-outer / pixel-inner over the pixels of the Gaussian's
// alpha-cut ellipse (per row, the span of its bounding box that the ellipse reaches; tiles
// it does not reach are not binned at all: PackedSplat), so each Gaussian's parameters are
// loaded once per tile (one packed cache line, prefetched); the pixels of a row are SIMD
// lanes (see kLanes), branch-free, with a vectorisable exp (exp_lanes) for float. The
// forward saves per pixel the last contributor and the final transmittance (1 - alpha);
// the backward walks each tile's list back from its last contributor (gsplat's scheme),
// writes one gradient row per (tile, Gaussian) intersection and reduces them in a fixed
// order, so gradients are bit-for-bit deterministic whatever the thread count (private
// per-thread sums would depend on which thread got which tile).

// The pixel loops below vectorise only without -ftrapping-math (GCC 12 does not if-convert
// selects on float comparisons under it): geometry/ops/loader.py builds with
// -fno-trapping-math, which changes no result (unlike -ffast-math: no reassociation, no
// reciprocals, no contraction). The pragma as well, before the includes: measured in one
// run of tests/benchmarks/bench_train_step.py, the flag alone leaves the compositing ~15 %
// slower than flag + pragma (GCC 12 then vectorises more of the inlined helpers).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math", "no-math-errno")
#endif

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

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

// Pixels of a tile that a Gaussian can reach: centres with |dx| <= rx and |dy| <= ry.
// Beyond that the quadratic form is at least rx^2 / (2 cov_xx) >= log(opacity * 255), i.e.
// alpha < 1/255, so restricting the loop is exact, not an approximation.
struct PixelRange {
  int64_t x0, x1, y0, y1;  // [x0, x1) x [y0, y1), in image pixels
};

template <typename scalar_t>
inline PixelRange pixel_range(scalar_t mx, scalar_t my, int32_t rx, int32_t ry, int64_t px0,
                              int64_t px1, int64_t py0, int64_t py1) {
  PixelRange r;
  r.x0 = std::max<int64_t>(px0, static_cast<int64_t>(std::ceil(mx - rx - scalar_t(0.5))));
  r.x1 = std::min<int64_t>(px1, static_cast<int64_t>(std::floor(mx + rx - scalar_t(0.5))) + 1);
  r.y0 = std::max<int64_t>(py0, static_cast<int64_t>(std::ceil(my - ry - scalar_t(0.5))));
  r.y1 = std::min<int64_t>(py1, static_cast<int64_t>(std::floor(my + ry - scalar_t(0.5))) + 1);
  return r;
}

// exp for the pixel loops. float: Cephes' expf (x = n ln2 + r with ln2 split in two, e^r
// by a degree-6 polynomial on |r| <= ln2 / 2, 2^n built in the exponent bits), within about
// 1 ulp of std::exp; it is plain arithmetic without calls or branches, so the loops calling
// it vectorise (the libm exp would keep them scalar). The argument is clamped so that every
// lane, including masked-out ones with a meaningless argument, stays finite and the float
// to int conversion defined. double (float64 gradcheck, parity at 1e-12): std::exp.
inline float exp_lanes(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  return y * std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
}

inline double exp_lanes(double x) { return std::exp(x); }

// The pixels a Gaussian can keep, tighter than its bounding box: the ellipse where the
// alpha cut can pass (the exact footprint of Speedy-Splat / gsplat). A pixel is kept only
// if op * exp(-sigma) >= 1/255, i.e. sigma <= ln(255 op), where sigma is the quadratic
// form q(dx, dy) = 0.5 (a dx^2 + c dy^2) + b dx dy. The ellipse here is q <= t, with t
// above ln(255 op) by more than every rounding error of the kernel's sigma (float products
// of terms no larger than q's absolute terms over the bounding box, m below) and of its exp
// (a few ulps), and its spans are widened by a small slack: it holds every pixel either
// pass can keep, so the pixels and tiles it leaves out are ones whose alpha is 0 anyway
// (the renders and gradients stay the same, bit for bit). Computed in double, once per
// Gaussian and pass. Where the conic is not safely positive definite or something is not
// finite, `mode` is kBox and the whole bounding box is used, as before.
//
// In pixel columns x (centre x + 0.5, dx = mx - x - 0.5) and for a row at dy, q <= t is
//   x in centre(dy) -/+ half(dy),  centre = mx - 0.5 + (b / a) dy,
//   half^2 = 2t / a - (det / a^2) dy^2,  det = a c - b^2.
//
// Everything a pass reads of one Gaussian (apart from its colour) is packed into one
// cache line per Gaussian (PackedSplat), built once per pass: a tile reads its Gaussians
// in depth order, i.e. scattered over memory, and loading six separate arrays per
// Gaussian (means, conics, opacities, radii, footprint) cost a cache miss each.
template <typename scalar_t>
struct alignas(64) PackedSplat {
  enum Mode : int32_t { kBox = 0, kEllipse = 1, kEmpty = 2 };
  scalar_t mx, my, ca, cb, cc, op;
  int32_t rx, ry, mode;
  double slope, k0, k1;  // kEllipse: centre slope b / a, 2t / a, det / a^2

  static PackedSplat make(const scalar_t* mean, const scalar_t* conic, scalar_t opacity,
                          const int32_t* radii) {
    PackedSplat g{};
    g.mx = mean[0];
    g.my = mean[1];
    g.ca = conic[0];
    g.cb = conic[1];
    g.cc = conic[2];
    g.op = opacity;
    g.rx = radii[0];
    g.ry = radii[1];
    g.mode = kBox;
    const double A = g.ca, B = g.cb, C = g.cc, O = g.op;
    if (!(std::isfinite(A) && std::isfinite(B) && std::isfinite(C) && std::isfinite(O) &&
          std::isfinite(static_cast<double>(g.mx)) && std::isfinite(static_cast<double>(g.my))))
      return g;
    if (!(A > 0 && C > 0)) return g;
    const double det = A * C - B * B;
    // Well conditioned only, so that det is accurate in double whatever scalar_t is.
    if (!(det > 1e-6 * A * C)) return g;
    if (!(O > 0)) {  // raw alpha = op * exp(-sigma) <= 0: never kept
      g.mode = kEmpty;
      return g;
    }
    const double thr = std::log(255.0 * O);
    // exp_lanes clamps its argument at -87; beyond that sigma the bound would not hold
    // unless op * e^-87 < 1/255 (thr < 87), true for any op <= 1.
    if (!(thr < 80.0)) return g;
    const double rxd = static_cast<double>(g.rx) + 1.0, ryd = static_cast<double>(g.ry) + 1.0;
    const double m = 0.5 * A * rxd * rxd + std::abs(B) * rxd * ryd + 0.5 * C * ryd * ryd;
    const double eps = static_cast<double>(std::numeric_limits<scalar_t>::epsilon());
    const double t = thr + 1e-5 * (1.0 + std::abs(thr)) + 16.0 * eps * m;
    if (!(t > 0)) {
      g.mode = kEmpty;
      return g;
    }
    g.mode = kEllipse;
    g.slope = B / A;
    g.k0 = 2.0 * t / A;
    g.k1 = det / (A * A);
    return g;
  }

  inline double slack() const {
    return 1e-3 + 1e-9 * (std::abs(static_cast<double>(mx)) + std::abs(static_cast<double>(my)));
  }

  // kEllipse: pixel columns [*x0, *x1] (inclusive; empty when *x0 > *x1) of the pixel row
  // whose centre is at my - dy.
  inline void row(double dy, double slack, double* x0, double* x1) const {
    const double h2 = k0 - k1 * dy * dy;
    const double half = std::sqrt(std::max(h2, 0.0)) + slack;
    const double centre = (static_cast<double>(mx) - 0.5) + slope * dy;
    const bool none = h2 < 0.0;
    *x0 = none ? 1.0 : std::ceil(centre - half);
    *x1 = none ? 0.0 : std::floor(centre + half);
  }

  // The same over all rows with dy in [dy_lo, dy_hi]: centre + half is concave in dy and
  // largest at dy_peak, centre - half convex and smallest at -dy_peak.
  inline void band(double dy_lo, double dy_hi, double* x0, double* x1) const {
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
    const double centre = static_cast<double>(mx) - 0.5;
    *x0 = std::ceil(centre + slope * yl - hl);
    *x1 = std::floor(centre + slope * yr + hr);
  }
};

// One projected Gaussian as both passes read it. Forward and backward must take exactly
// the same per-pixel decisions (which pixels, which alphas), so both go through this.
template <typename scalar_t>
struct Splat2D {
  scalar_t mx, my, ca, cb, cc, op;
  const scalar_t* color;
  PixelRange pixels;
  const PackedSplat<scalar_t>& packed;

  Splat2D(const PackedSplat<scalar_t>& g, const scalar_t* color_, int64_t px0, int64_t px1,
          int64_t py0, int64_t py1)
      : mx(g.mx), my(g.my), ca(g.ca), cb(g.cb), cc(g.cc), op(g.op), color(color_),
        pixels(pixel_range<scalar_t>(mx, my, g.rx, g.ry, px0, px1, py0, py1)), packed(g) {}

  // Per row y of `pixels` (index y - pixels.y0): the pixel columns [x0[i], x1[i]) the
  // Gaussian can keep (x0 >= x1: none), within `pixels`. Both passes loop over these.
  inline void row_spans(int32_t* x0, int32_t* x1) const {
    const int32_t rows = static_cast<int32_t>(std::max<int64_t>(pixels.y1 - pixels.y0, 0));
    const int32_t lo = static_cast<int32_t>(pixels.x0), hi = static_cast<int32_t>(pixels.x1);
    const PackedSplat<scalar_t> g = packed;
    if (g.mode != PackedSplat<scalar_t>::kEllipse) {
      const int32_t h = g.mode == PackedSplat<scalar_t>::kEmpty ? lo : hi;
      for (int32_t i = 0; i < rows; ++i) {
        x0[i] = lo;
        x1[i] = h;
      }
      return;
    }
    const double flo = lo, fhi = hi, slack = g.slack();
    const double dy0 = static_cast<double>(g.my) - (static_cast<double>(pixels.y0) + 0.5);
#pragma omp simd
    for (int32_t i = 0; i < rows; ++i) {
      double a, b;
      g.row(dy0 - i, slack, &a, &b);
      // Clamped in double before the conversion (the span may be far off the tile).
      x0[i] = static_cast<int32_t>(std::min(std::max(a, flo), fhi));
      x1[i] = static_cast<int32_t>(std::min(std::max(b + 1.0, flo), fhi));
    }
  }

  // alpha = min(0.999, op * exp(-sigma)) at offset (dx, dy), or 0 where the pixel is
  // skipped (sigma < 0 or alpha < 1/255): a kept alpha is >= 1/255, so alpha > 0 means
  // "kept". vis = exp(-sigma) for the backward. Computed for every SIMD lane, branch-free.
  inline scalar_t alpha_lane(scalar_t dx, scalar_t dy, scalar_t* vis) const {
    const scalar_t sigma = scalar_t(0.5) * (ca * dx * dx + cc * dy * dy) + cb * dx * dy;
    *vis = exp_lanes(-sigma);
    const scalar_t raw = op * *vis;
    // The threshold is tested before the cap (the same: 0.999 > 1/255), and with `&` rather
    // than `&&`: GCC if-converts (vectorises) this form, not the nested one.
    const bool kept = (sigma >= 0) & (raw >= static_cast<scalar_t>(kAlphaThreshold));
    return kept ? std::min(static_cast<scalar_t>(kMaxAlpha), raw) : scalar_t(0);
  }
};

int num_threads() {
  return std::max(1, at::get_num_threads());
}

// The packed Gaussians of all cameras, [C*N] (culled ones, radii 0, are never read).
template <typename scalar_t>
std::vector<PackedSplat<scalar_t>> pack_splats(const at::Tensor& means2d,
                                               const at::Tensor& conics,
                                               const at::Tensor& opacities,
                                               const at::Tensor& radii) {
  const int64_t total = means2d.size(0) * means2d.size(1);
  const scalar_t* m = means2d.data_ptr<scalar_t>();
  const scalar_t* q = conics.data_ptr<scalar_t>();
  const scalar_t* o = opacities.data_ptr<scalar_t>();
  const int32_t* r = radii.data_ptr<int32_t>();
  std::vector<PackedSplat<scalar_t>> out(total);
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t i = 0; i < total; ++i) {
    if (r[i * 2] > 0 && r[i * 2 + 1] > 0)
      out[i] = PackedSplat<scalar_t>::make(m + i * 2, q + i * 3, o[i], r + i * 2);
  }
  return out;
}

template <typename scalar_t, typename Fn>
inline void for_each_tile(const PackedSplat<scalar_t>& f, const TileGrid& grid, Fn&& fn) {
  int64_t x0, x1, y0, y1;
  tile_rect<scalar_t>(f.mx, f.my, f.rx, f.ry, grid, &x0, &x1, &y0, &y1);
  // A single column of tiles: the ellipse's rows reach each of them (up to the rounding of
  // the radius), not worth the test.
  if (f.mode == PackedSplat<scalar_t>::kBox || x1 - x0 < 2) {
    if (f.mode == PackedSplat<scalar_t>::kEmpty) return;
    for (int64_t ty = y0; ty < y1; ++ty)
      for (int64_t tx = x0; tx < x1; ++tx) fn(ty * grid.tiles_x + tx);
    return;
  }
  if (f.mode == PackedSplat<scalar_t>::kEmpty) return;
  const int64_t ts = grid.tile_size;
  for (int64_t ty = y0; ty < y1; ++ty) {
    const int64_t row0 = ty * ts, row1 = std::min(row0 + ts, grid.height) - 1;
    double c0, c1;
    const double my = f.my;
    f.band(my - (static_cast<double>(row1) + 0.5), my - (static_cast<double>(row0) + 0.5), &c0,
           &c1);
    c0 = std::max(c0, static_cast<double>(x0 * ts));
    c1 = std::min(c1, static_cast<double>(std::min(x1 * ts, grid.width) - 1));
    if (!(c0 <= c1)) continue;
    const int64_t tx0 = static_cast<int64_t>(c0) / ts, tx1 = static_cast<int64_t>(c1) / ts + 1;
    for (int64_t tx = tx0; tx < tx1; ++tx) fn(ty * grid.tiles_x + tx);
  }
}

// Bins every visible Gaussian of every camera into the tiles it can reach (for_each_tile).
// Each tile's list is sorted front to back (stable: ties keep index order).
template <typename scalar_t>
void bin_gaussians(const PackedSplat<scalar_t>* splats, const at::Tensor& depths,
                   const TileGrid& grid, at::Tensor* tile_offsets_out,
                   at::Tensor* flatten_ids_out) {
  const int64_t C = grid.cameras;
  const int64_t N = depths.size(1);
  const int64_t T = grid.tiles_per_camera();
  const scalar_t* depth_ptr = depths.data_ptr<scalar_t>();

  std::vector<int64_t> counts(grid.num_tiles() + 1, 0);
  // Per camera: its visible Gaussians front to back, and their tiles in that order (the
  // footprint test runs once; the second pass only scatters).
  std::vector<std::vector<int32_t>> order(C), tiles(C), n_tiles(C);

#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
  for (int64_t c = 0; c < C; ++c) {
    std::vector<int32_t>& ids = order[c];
    ids.reserve(N);
    for (int64_t n = 0; n < N; ++n) {
      const PackedSplat<scalar_t>& g = splats[c * N + n];
      if (g.rx > 0 && g.ry > 0) ids.push_back(static_cast<int32_t>(n));
    }
    const scalar_t* depth_c = depth_ptr + c * N;
    std::stable_sort(ids.begin(), ids.end(),
                     [depth_c](int32_t a, int32_t b) { return depth_c[a] < depth_c[b]; });
    int64_t* count_c = counts.data() + c * T;
    std::vector<int32_t>& tiles_c = tiles[c];
    std::vector<int32_t>& n_tiles_c = n_tiles[c];
    tiles_c.reserve(ids.size() * 4);
    n_tiles_c.resize(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      const size_t before = tiles_c.size();
      for_each_tile<scalar_t>(splats[c * N + ids[i]], grid, [&](int64_t t) {
        ++count_c[t];
        tiles_c.push_back(static_cast<int32_t>(t));
      });
      n_tiles_c[i] = static_cast<int32_t>(tiles_c.size() - before);
    }
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
    for (size_t i = 0; i < order[c].size(); ++i) {
      const int32_t n = order[c][i];
      for (int32_t j = 0; j < n_tiles[c][i]; ++j) flat[cursor[*t++]++] = n;
    }
  }
  *tile_offsets_out = tile_offsets;
  *flatten_ids_out = flatten_ids;
}

// SIMD lanes: the pixel loops run over chunks of kLanes consecutive pixels of a tile row,
// aligned to kLanes within the tile (for the default 16-pixel tiles: the whole row). Each
// chunk is one AVX-512 vector (or two AVX2 vectors) of floats: the trip count is a
// constant and the per-tile arrays are 64-byte aligned with rows padded to a multiple of
// kLanes, so the compiler emits whole vectors with neither alignment peeling nor scalar
// remainders (looping over just the Gaussian's few pixels ran mostly in those). Only the
// rows whose footprint span (PackedSplat::row) is not empty are run. Lanes outside the
// span are masked: they leave their pixel's state unchanged. (Half-row chunks of 8, run
// only where the span reaches, were measured slower: 8-lane chunks cost about as much as
// 16-lane ones here, and the forward got slower overall, in CPU time over alternating runs.)
constexpr int32_t kLanes = 16;
// The backward's per-lane gradient sums are kept per pixel column modulo kGradLanes (a
// chunk adds into the kLanes of them its columns map to) and summed in column order.
constexpr int32_t kGradLanes = 16;
static_assert(kGradLanes % kLanes == 0, "a chunk must map to whole gradient lanes");

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

  const scalar_t t_eps = static_cast<scalar_t>(kTransmittanceEps);

#pragma omp parallel num_threads(num_threads())
  {
    // Per-pixel state of one tile. Colours are stored as D planes (not D interleaved
    // channels) so that every loop below runs over consecutive pixels: the SIMD lanes.
    AlignedArray<scalar_t> trans(S), accum(S * D), weight(kLanes);
    AlignedArray<int32_t> last(S), done(S), span_x0(ts), span_x1(ts);

#pragma omp for schedule(dynamic, 1)
    for (int64_t tile = 0; tile < grid.num_tiles(); ++tile) {
      const int64_t c = tile / T;
      const int64_t ty = (tile % T) / grid.tiles_x, tx = (tile % T) % grid.tiles_x;
      const int64_t px0 = tx * ts, py0 = ty * ts;
      const int64_t px1 = std::min(px0 + ts, W), py1 = std::min(py0 + ts, H);
      const int64_t npix = (px1 - px0) * (py1 - py0);
      std::fill(trans.data(), trans.data() + S, scalar_t(1));
      std::fill(accum.data(), accum.data() + S * D, scalar_t(0));
      std::fill(last.data(), last.data() + S, 0);
      std::fill(done.data(), done.data() + S, 0);
      int64_t n_done = 0;

      const int64_t begin = offsets[tile], end = offsets[tile + 1];
      for (int64_t k = begin; k < end && n_done < npix; ++k) {
        if (k + kPrefetch < end) prefetch_splat(splats, color_ptr, c * N + flat[k + kPrefetch], D);
        const int64_t cg = c * N + flat[k];
        const Splat2D<scalar_t> sp(splats[cg], color_ptr + cg * D, px0, px1, py0, py1);
        const PixelRange& pr = sp.pixels;
        const int32_t kid = static_cast<int32_t>(k - begin + 1);
        sp.row_spans(span_x0.data(), span_x1.data());
        for (int64_t y = pr.y0; y < pr.y1; ++y) {
          const int64_t row_x0 = span_x0[y - pr.y0], row_x1 = span_x1[y - pr.y0];
          const scalar_t dy = sp.my - (static_cast<scalar_t>(y) + scalar_t(0.5));
          for (int64_t cx = px0 + (row_x0 - px0) / kLanes * kLanes; cx < row_x1; cx += kLanes) {
            const int64_t p0 = (y - py0) * R + (cx - px0);
            const int32_t x0 = static_cast<int32_t>(cx);
            // Lanes [lane0, lane1) of the chunk are the Gaussian's pixels.
            const int32_t lane0 = static_cast<int32_t>(row_x0 - cx);
            const int32_t lane1 = static_cast<int32_t>(row_x1 - cx);
            scalar_t* tr = trans.data() + p0;
            int32_t* dn = done.data() + p0;
            int32_t* ls = last.data() + p0;
            scalar_t* wt = weight.data();
            // Branch-free: every lane computes its alpha, and the decisions (outside the
            // range, skipped, stop, take) become selects.
            int32_t stopped = 0;
#pragma omp simd aligned(tr, dn, ls, wt : 64) reduction(+ : stopped)
            for (int32_t l = 0; l < kLanes; ++l) {
              const scalar_t dx = sp.mx - (static_cast<scalar_t>(x0 + l) + scalar_t(0.5));
              scalar_t vis;
              const scalar_t alpha_px = sp.alpha_lane(dx, dy, &vis);
              const bool in_range = (l >= lane0) & (l < lane1);
              const scalar_t alpha = in_range & (dn[l] == 0) ? alpha_px : scalar_t(0);
              const scalar_t t = tr[l];
              const scalar_t next_t = t * (scalar_t(1) - alpha);
              // A pixel stops without the Gaussian that would take T to <= 1e-4.
              const bool stop = (alpha > 0) & (next_t <= t_eps);
              const bool take = (alpha > 0) & !stop;
              dn[l] = dn[l] | static_cast<int32_t>(stop);
              stopped += static_cast<int32_t>(stop);
              wt[l] = take ? alpha * t : scalar_t(0);
              tr[l] = take ? next_t : t;
              ls[l] = take ? kid : ls[l];
            }
            n_done += stopped;
            // The same per-pixel accumulation order as the reference (Gaussian after
            // Gaussian); a lane not taken adds an exact zero.
            for (int64_t d = 0; d < D; ++d) {
              const scalar_t col = sp.color[d];
              scalar_t* acc = accum.data() + d * S + p0;
#pragma omp simd aligned(acc, wt : 64)
              for (int32_t l = 0; l < kLanes; ++l) acc[l] += wt[l] * col;
            }
          }
        }
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

  const scalar_t max_alpha = static_cast<scalar_t>(kMaxAlpha);

#pragma omp parallel num_threads(num_threads())
  {
    // Per-pixel state of one tile (colours as D planes, as in the forward; the padding
    // stays zero), and per-lane scratch of the Gaussian being walked.
    AlignedArray<scalar_t> trans(S), t_final(S), v_alpha_px(S), buffer(S * D), v_color_px(S * D);
    AlignedArray<int32_t> last(S), span_x0(ts), span_x1(ts);
    AlignedArray<scalar_t> lanes_buf(5 * kLanes);
    scalar_t* r_alpha = lanes_buf.data();
    scalar_t* r_vis = r_alpha + kLanes;
    scalar_t* r_ra = r_vis + kLanes;
    scalar_t* r_trans = r_ra + kLanes;
    scalar_t* r_v_alpha = r_trans + kLanes;
    // Gradient sums of the Gaussian being walked, kept per lane over all its rows and
    // summed across lanes once at the end (in lane order): one horizontal sum per
    // Gaussian instead of one per row.
    AlignedArray<scalar_t> lane_grad(P * kGradLanes);

#pragma omp for schedule(dynamic, 1)
    for (int64_t tile = 0; tile < grid.num_tiles(); ++tile) {
      const int64_t c = tile / T;
      const int64_t ty = (tile % T) / grid.tiles_x, tx = (tile % T) % grid.tiles_x;
      const int64_t px0 = tx * ts, py0 = ty * ts;
      const int64_t px1 = std::min(px0 + ts, W), py1 = std::min(py0 + ts, H);
      int32_t max_last = 0;
      for (int64_t y = py0; y < py1; ++y) {
        for (int64_t x = px0; x < px1; ++x) {
          const int64_t p = (y - py0) * R + (x - px0);
          const int64_t pix = (c * H + y) * W + x;
          t_final[p] = scalar_t(1) - alpha_ptr[pix];
          trans[p] = t_final[p];
          v_alpha_px[p] = va_ptr[pix];
          last[p] = last_ptr[pix];
          max_last = std::max(max_last, last[p]);
          for (int64_t d = 0; d < D; ++d) {
            buffer[d * S + p] = 0;
            v_color_px[d * S + p] = vc_ptr[pix * D + d];
          }
        }
      }

      // gsplat's reverse walk: from the tile's last contributor back to the front,
      // undoing each Gaussian's factor on the final transmittance (T_i = T_{i+1} / (1 -
      // alpha_i)) and carrying the colour of what lies behind in `buffer`.
      const int64_t begin = offsets[tile];
      for (int64_t kl = static_cast<int64_t>(max_last) - 1; kl >= 0; --kl) {
        const int64_t k = begin + kl;
        if (kl >= kPrefetch) prefetch_splat(splats, color_ptr, c * N + flat[k - kPrefetch], D);
        const int64_t cg = c * N + flat[k];
        const Splat2D<scalar_t> sp(splats[cg], color_ptr + cg * D, px0, px1, py0, py1);
        const PixelRange& pr = sp.pixels;
        const scalar_t ca = sp.ca, cb = sp.cb, cc = sp.cc, op = sp.op;
        const scalar_t* col = sp.color;
        const int32_t kl32 = static_cast<int32_t>(kl);
        std::fill(lane_grad.data(), lane_grad.data() + P * kGradLanes, scalar_t(0));
        int32_t hits = 0;
        sp.row_spans(span_x0.data(), span_x1.data());
        for (int64_t y = pr.y0; y < pr.y1; ++y) {
          const int64_t row_x0 = span_x0[y - pr.y0], row_x1 = span_x1[y - pr.y0];
          const scalar_t dy = sp.my - (static_cast<scalar_t>(y) + scalar_t(0.5));
          for (int64_t cx = px0 + (row_x0 - px0) / kLanes * kLanes; cx < row_x1; cx += kLanes) {
            const int64_t p0 = (y - py0) * R + (cx - px0);
            const int32_t x0 = static_cast<int32_t>(cx);
            // Lanes [lane0, lane1) of the chunk are the Gaussian's pixels.
            const int32_t lane0 = static_cast<int32_t>(row_x0 - cx);
            const int32_t lane1 = static_cast<int32_t>(row_x1 - cx);
            // This chunk's columns in the per-lane gradient sums.
            const int64_t g_off = (cx - px0) % kGradLanes;
            scalar_t* tr = trans.data() + p0;
            const scalar_t* tf = t_final.data() + p0;
            const scalar_t* va = v_alpha_px.data() + p0;
            const int32_t* ls = last.data() + p0;
            // 1. The same alphas as the forward (0 where the lane is outside the range, the
            //    pixel skipped, or the Gaussian behind its last contributor), and the
            //    transmittance in front of the Gaussian.
#pragma omp simd aligned(tr, tf, va, ls, r_alpha, r_vis, r_ra, r_trans, r_v_alpha : 64) \
    reduction(+ : hits)
            for (int32_t l = 0; l < kLanes; ++l) {
              const scalar_t dx = sp.mx - (static_cast<scalar_t>(x0 + l) + scalar_t(0.5));
              scalar_t vis;
              const scalar_t alpha_px = sp.alpha_lane(dx, dy, &vis);
              const bool in_range = (l >= lane0) & (l < lane1);
              const scalar_t alpha = in_range & (kl32 < ls[l]) ? alpha_px : scalar_t(0);
              const scalar_t ra = scalar_t(1) / (scalar_t(1) - alpha);  // 1 if not hit
              tr[l] *= ra;
              r_alpha[l] = alpha;
              r_vis[l] = vis;
              r_ra[l] = ra;
              r_trans[l] = tr[l];
              r_v_alpha[l] = tf[l] * ra * va[l];
              hits += static_cast<int32_t>(alpha > 0);
            }
            // 2. Colour gradients and dL/dalpha, channel by channel.
            for (int64_t d = 0; d < D; ++d) {
              const scalar_t cd = col[d];
              const scalar_t* vc = v_color_px.data() + d * S + p0;
              scalar_t* buf = buffer.data() + d * S + p0;
              scalar_t* g_color = lane_grad.data() + (6 + d) * kGradLanes + g_off;
#pragma omp simd aligned(vc, buf, g_color, r_alpha, r_ra, r_trans, r_v_alpha : 64)
              for (int32_t l = 0; l < kLanes; ++l) {
                const bool hit = r_alpha[l] > 0;
                const scalar_t fac = r_alpha[l] * r_trans[l];
                g_color[l] += hit ? fac * vc[l] : scalar_t(0);
                r_v_alpha[l] += (cd * r_trans[l] - buf[l] * r_ra[l]) * vc[l];
                buf[l] = hit ? buf[l] + cd * fac : buf[l];
              }
            }
            // 3. Through alpha = opacity * exp(-sigma) (not where alpha was capped).
            scalar_t* g0 = lane_grad.data() + g_off;
            scalar_t* g1 = g0 + kGradLanes;
            scalar_t* g2 = g1 + kGradLanes;
            scalar_t* g3 = g2 + kGradLanes;
            scalar_t* g4 = g3 + kGradLanes;
            scalar_t* g5 = g4 + kGradLanes;
            scalar_t* gx_abs = lane_grad.data() + (6 + D) * kGradLanes + g_off;
            scalar_t* gy_abs = gx_abs + kGradLanes;
#pragma omp simd aligned(g0, g1, g2, g3, g4, g5, gx_abs, gy_abs, r_alpha, r_vis, r_v_alpha : 64)
            for (int32_t l = 0; l < kLanes; ++l) {
              const scalar_t dx = sp.mx - (static_cast<scalar_t>(x0 + l) + scalar_t(0.5));
              const bool live = (r_alpha[l] > 0) & (op * r_vis[l] <= max_alpha);
              const scalar_t v_sigma = live ? -op * r_vis[l] * r_v_alpha[l] : scalar_t(0);
              const scalar_t gx = v_sigma * (ca * dx + cb * dy);
              const scalar_t gy = v_sigma * (cb * dx + cc * dy);
              g0[l] += gx;
              g1[l] += gy;
              g2[l] += scalar_t(0.5) * v_sigma * dx * dx;
              g3[l] += v_sigma * dx * dy;
              g4[l] += scalar_t(0.5) * v_sigma * dy * dy;
              g5[l] += live ? r_vis[l] * r_v_alpha[l] : scalar_t(0);
              gx_abs[l] += std::abs(gx);
              gy_abs[l] += std::abs(gy);
            }
          }
        }
        if (hits > 0) {
          for (int64_t q = 0; q < P; ++q) {
            const scalar_t* g = lane_grad.data() + q * kGradLanes;
            scalar_t sum = 0;
            for (int32_t l = 0; l < kGradLanes; ++l) sum += g[l];
            v_out[k * P + q] = sum;
          }
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
    const auto splats = pack_splats<scalar_t>(means2d, conics, opacities, radii);
    bin_gaussians<scalar_t>(splats.data(), depths, grid, &tile_offsets, &flatten_ids);
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
  at::Tensor v_isect = at::zeros({M, P}, means2d.options());
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
