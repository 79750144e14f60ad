// CPU backend of sparseview::ssim_l1_{fwd,bwd}: the two terms of 3DGS's photometric loss
// in one pass over the images, forward and backward,
//   ssim = mean over the 'valid' window positions and channels of
//          (2 mu_x mu_y + C1)(2 cov + C2) / ((mu_x^2 + mu_y^2 + C1)(var_x + var_y + C2)),
//   l1   = mean |x - y|,
// with a separable Gaussian window (its taps are an input). mu, var and cov are the window
// means of x, y, x^2, y^2 and x y ("five maps"), as reconstruction/engine/losses.py::ssim,
// the PyTorch reference it is tested against (values, gradients, float64 gradcheck).
//
// Images are channels-last [B, H, W, C] (the trainer's layout; no permute), so a row of
// W * C values is contiguous and every filter tap is a contiguous multiply-add that the
// compiler vectorises. The backward applies the filter's adjoint (a 'full' correlation)
// to three (four with y's gradient) per-pixel gradient maps.
//
// Deterministic for any thread count: rows are independent; the means sum per-row partial
// sums (double) in row order.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace sparseview {
namespace {

constexpr double kC1 = 0.01 * 0.01;  // SSIM's stabilisers for a dynamic range of 1
constexpr double kC2 = 0.03 * 0.03;
constexpr int kMaps = 5;             // mu_x, mu_y, E[x^2], E[y^2], E[x y]

void check(const at::Tensor& x, const at::Tensor& y, const at::Tensor& window) {
  TORCH_CHECK(x.dim() == 4, "x must be [B,H,W,C]");
  TORCH_CHECK(y.sizes() == x.sizes(), "y must have the shape of x");
  TORCH_CHECK(window.dim() == 1 && window.size(0) >= 1, "window must be [k]");
  const int64_t k = window.size(0);
  TORCH_CHECK(k <= x.size(1) && k <= x.size(2), "the window is larger than the image");
  TORCH_CHECK(y.scalar_type() == x.scalar_type() && window.scalar_type() == x.scalar_type(),
              "x, y and window must share a dtype");
  TORCH_CHECK(x.device().is_cpu() && y.device().is_cpu() && window.device().is_cpu(),
              "inputs must be CPU tensors");
}

// Returns ssim (mean), l1 (mean) and the five window means, stats [B, 5, Ho, Wo, C].
std::tuple<at::Tensor, at::Tensor, at::Tensor> ssim_l1_fwd_cpu(const at::Tensor& x_in,
                                                               const at::Tensor& y_in,
                                                               const at::Tensor& window_in) {
  check(x_in, y_in, window_in);
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous(), window = window_in.contiguous();
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const int64_t k = window.size(0), Ho = H - k + 1, Wo = W - k + 1;
  const int64_t row = W * C, orow = Wo * C;  // values in an input / output row
  at::Tensor stats = at::empty({B, kMaps, Ho, Wo, C}, x.options());
  at::Tensor tmp = at::empty({B, kMaps, H, Wo, C}, x.options());
  std::vector<double> ssim_rows(B * Ho), l1_rows(B * H);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ssim_l1_fwd", [&] {
    using T = scalar_t;
    const T* xp = x.data_ptr<T>();
    const T* yp = y.data_ptr<T>();
    const T* w = window.data_ptr<T>();
    T* sp = stats.data_ptr<T>();
    T* tp = tmp.data_ptr<T>();
    // Horizontal pass (and the L1 sums): input row r -> five rows of Wo * C.
    at::parallel_for(0, B * H, 16, [&](int64_t begin, int64_t end) {
      for (int64_t br = begin; br < end; ++br) {
        const int64_t b = br / H, r = br % H;
        const T* xr = xp + br * row;
        const T* yr = yp + br * row;
        T* out[kMaps];
        for (int q = 0; q < kMaps; ++q) {
          out[q] = tp + ((b * kMaps + q) * H + r) * orow;
          std::fill(out[q], out[q] + orow, T(0));
        }
        for (int64_t t = 0; t < k; ++t) {
          const T wt = w[t];
          const T* __restrict__ xs = xr + t * C;
          const T* __restrict__ ys = yr + t * C;
          T* __restrict__ o0 = out[0];
          T* __restrict__ o1 = out[1];
          T* __restrict__ o2 = out[2];
          T* __restrict__ o3 = out[3];
          T* __restrict__ o4 = out[4];
          for (int64_t i = 0; i < orow; ++i) {
            const T xv = xs[i], yv = ys[i];
            o0[i] += wt * xv;
            o1[i] += wt * yv;
            o2[i] += wt * (xv * xv);
            o3[i] += wt * (yv * yv);
            o4[i] += wt * (xv * yv);
          }
        }
        double l1 = 0;
        for (int64_t i = 0; i < row; ++i) l1 += double(std::abs(xr[i] - yr[i]));
        l1_rows[br] = l1;
      }
    });
    // Vertical pass and the SSIM map: output row i.
    at::parallel_for(0, B * Ho, 16, [&](int64_t begin, int64_t end) {
      std::vector<T> map(orow);
      for (int64_t bi = begin; bi < end; ++bi) {
        const int64_t b = bi / Ho, i = bi % Ho;
        T* s[kMaps];
        for (int q = 0; q < kMaps; ++q) {
          s[q] = sp + ((b * kMaps + q) * Ho + i) * orow;
          std::fill(s[q], s[q] + orow, T(0));
          for (int64_t t = 0; t < k; ++t) {
            const T wt = w[t];
            const T* __restrict__ in = tp + ((b * kMaps + q) * H + i + t) * orow;
            T* __restrict__ o = s[q];
            for (int64_t j = 0; j < orow; ++j) o[j] += wt * in[j];
          }
        }
        const T c1 = T(kC1), c2 = T(kC2);
        for (int64_t j = 0; j < orow; ++j) {
          const T mx = s[0][j], my = s[1][j];
          const T vx = s[2][j] - mx * mx, vy = s[3][j] - my * my, cov = s[4][j] - mx * my;
          const T num = (T(2) * mx * my + c1) * (T(2) * cov + c2);
          const T den = (mx * mx + my * my + c1) * (vx + vy + c2);
          map[j] = num / den;
        }
        double sum = 0;
        for (int64_t j = 0; j < orow; ++j) sum += double(map[j]);
        ssim_rows[bi] = sum;
      }
    });
  });
  double ssim_sum = 0, l1_sum = 0;
  for (double v : ssim_rows) ssim_sum += v;
  for (double v : l1_rows) l1_sum += v;
  const at::Tensor ssim = at::scalar_tensor(ssim_sum / double(B * Ho * orow), x.options());
  const at::Tensor l1 = at::scalar_tensor(l1_sum / double(B * H * row), x.options());
  return {ssim, l1, stats};
}

// Gradients of ssim and l1 (scalars v_ssim, v_l1) to x and, with y_grad, to y (else an
// empty tensor).
std::tuple<at::Tensor, at::Tensor> ssim_l1_bwd_cpu(const at::Tensor& x_in, const at::Tensor& y_in,
                                                   const at::Tensor& window_in,
                                                   const at::Tensor& stats,
                                                   const at::Tensor& v_ssim_in,
                                                   const at::Tensor& v_l1_in, bool y_grad) {
  check(x_in, y_in, window_in);
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous(), window = window_in.contiguous();
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const int64_t k = window.size(0), Ho = H - k + 1, Wo = W - k + 1;
  const int64_t row = W * C, orow = Wo * C;
  TORCH_CHECK(stats.sizes() == at::IntArrayRef({B, kMaps, Ho, Wo, C}) && stats.is_contiguous(),
              "stats must be the forward's [B,5,Ho,Wo,C]");
  const int G = y_grad ? 4 : 3;  // gradient maps: d mu_x, d E[x^2] (= d E[y^2]), d E[xy], d mu_y
  at::Tensor grads = at::empty({B, G, Ho, Wo, C}, x.options());
  at::Tensor tmp = at::empty({B, G, H, Wo, C}, x.options());
  at::Tensor v_x = at::empty_like(x);
  at::Tensor v_y = y_grad ? at::empty_like(y) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ssim_l1_bwd", [&] {
    using T = scalar_t;
    const T v_ssim = v_ssim_in.item<T>() / T(double(B * Ho * orow));
    const T v_l1 = v_l1_in.item<T>() / T(double(B * H * row));
    const T* xp = x.data_ptr<T>();
    const T* yp = y.data_ptr<T>();
    const T* w = window.data_ptr<T>();
    const T* sp = stats.data_ptr<T>();
    T* gp = grads.data_ptr<T>();
    T* tp = tmp.data_ptr<T>();
    T* vxp = v_x.data_ptr<T>();
    T* vyp = y_grad ? v_y.data_ptr<T>() : nullptr;
    // Per window position: the gradient of the SSIM map to the five window means.
    at::parallel_for(0, B * Ho, 16, [&](int64_t begin, int64_t end) {
      const T c1 = T(kC1), c2 = T(kC2);
      for (int64_t bi = begin; bi < end; ++bi) {
        const int64_t b = bi / Ho, i = bi % Ho;
        const T* s[kMaps];
        for (int q = 0; q < kMaps; ++q) s[q] = sp + ((b * kMaps + q) * Ho + i) * orow;
        T* g[4];
        for (int q = 0; q < G; ++q) g[q] = gp + ((b * G + q) * Ho + i) * orow;
        for (int64_t j = 0; j < orow; ++j) {
          const T mx = s[0][j], my = s[1][j];
          const T vx = s[2][j] - mx * mx, vy = s[3][j] - my * my, cov = s[4][j] - mx * my;
          const T a1 = T(2) * mx * my + c1, a2 = T(2) * cov + c2;
          const T b1 = mx * mx + my * my + c1, b2 = vx + vy + c2;
          const T den = b1 * b2;
          const T d_a1 = v_ssim * a2 / den, d_a2 = v_ssim * a1 / den;
          const T map = a1 * a2 / den;
          const T d_b1 = -v_ssim * map / b1, d_b2 = -v_ssim * map / b2;
          g[0][j] = T(2) * my * (d_a1 - d_a2) + T(2) * mx * (d_b1 - d_b2);
          g[1][j] = d_b2;
          g[2][j] = T(2) * d_a2;
          if (G == 4) g[3][j] = T(2) * mx * (d_a1 - d_a2) + T(2) * my * (d_b1 - d_b2);
        }
      }
    });
    // Adjoint of the vertical pass: input row r gathers the window positions covering it.
    at::parallel_for(0, B * H, 16, [&](int64_t begin, int64_t end) {
      for (int64_t br = begin; br < end; ++br) {
        const int64_t b = br / H, r = br % H;
        for (int q = 0; q < G; ++q) {
          T* __restrict__ o = tp + ((b * G + q) * H + r) * orow;
          std::fill(o, o + orow, T(0));
          for (int64_t t = 0; t < k; ++t) {
            const int64_t i = r - t;
            if (i < 0 || i >= Ho) continue;
            const T wt = w[t];
            const T* __restrict__ in = gp + ((b * G + q) * Ho + i) * orow;
            for (int64_t j = 0; j < orow; ++j) o[j] += wt * in[j];
          }
        }
      }
    });
    // Adjoint of the horizontal pass, then the chain rule through x^2, y^2 and x y.
    at::parallel_for(0, B * H, 16, [&](int64_t begin, int64_t end) {
      std::vector<T> z(G * row);
      for (int64_t br = begin; br < end; ++br) {
        const int64_t b = br / H, r = br % H;
        std::fill(z.begin(), z.end(), T(0));
        for (int q = 0; q < G; ++q) {
          const T* __restrict__ in = tp + ((b * G + q) * H + r) * orow;
          T* zq = z.data() + q * row;
          for (int64_t t = 0; t < k; ++t) {
            const T wt = w[t];
            T* __restrict__ o = zq + t * C;
            for (int64_t j = 0; j < orow; ++j) o[j] += wt * in[j];
          }
        }
        const T* xr = xp + br * row;
        const T* yr = yp + br * row;
        T* vx = vxp + br * row;
        const T *z_mx = z.data(), *z_ee = z.data() + row, *z_xy = z.data() + 2 * row;
        for (int64_t j = 0; j < row; ++j) {
          const T d = xr[j] - yr[j];
          const T sgn = d > T(0) ? T(1) : (d < T(0) ? T(-1) : T(0));
          vx[j] = z_mx[j] + T(2) * xr[j] * z_ee[j] + yr[j] * z_xy[j] + v_l1 * sgn;
        }
        if (G == 4) {
          const T* z_my = z.data() + 3 * row;
          T* vy = vyp + br * row;
          for (int64_t j = 0; j < row; ++j) {
            const T d = xr[j] - yr[j];
            const T sgn = d > T(0) ? T(1) : (d < T(0) ? T(-1) : T(0));
            vy[j] = z_my[j] + T(2) * yr[j] * z_ee[j] + xr[j] * z_xy[j] - v_l1 * sgn;
          }
        }
      }
    });
  });
  return {v_x, v_y};
}

}  // namespace

// The schemas live with their only backend (a fragment of the library cuda/registry.cpp
// declares).
TORCH_LIBRARY_IMPL(sparseview, CPU, m) {
  m.impl("ssim_l1_fwd", &ssim_l1_fwd_cpu);
  m.impl("ssim_l1_bwd", &ssim_l1_bwd_cpu);
}

}  // namespace sparseview
