// CPU backend of sparseview::sh_to_color_{fwd,bwd}: 3DGS's view-dependent colour
//   colour = max(sum_k basis_k(d / |d|) coeffs_k + 0.5, 0)
// for C cameras sharing one set of SH coefficients, forward and backward (to the
// coefficients and to the directions, through the normalisation), in one pass per
// Gaussian instead of PyTorch's expanded [C,N,K,3] products. The basis, its sign convention
// and the normalisation (d / max(|d|, 1e-12)) are those of reconstruction/splatting/sh.py,
// the reference it is tested against (forward, gradients, float64 gradcheck).
// Deterministic: each Gaussian's coefficient gradient sums its cameras in order.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace sparseview {
namespace {

constexpr double kC0 = 0.28209479177387814;
constexpr double kC1 = 0.4886025119029199;
constexpr double kC2[5] = {1.0925484305920792, -1.0925484305920792, 0.31539156525252005,
                           -1.0925484305920792, 0.5462742152960396};
constexpr double kC3[7] = {-0.5900435899266435, 2.890611442640554, -0.4570457994644658,
                           0.3731763325901154,  -0.4570457994644658, 1.445305721320277,
                           -0.5900435899266435};
constexpr double kNormEps = 1e-12;  // torch.nn.functional.normalize's eps

// Basis values b[0..k) at the unit direction (x, y, z), and if grad is given their partial
// derivatives (x, y, z treated as independent) in grad[3 * i .. 3 * i + 3).
template <typename T>
inline void sh_basis(int64_t degree, T x, T y, T z, T* b, T* grad) {
  b[0] = T(kC0);
  if (grad) grad[0] = grad[1] = grad[2] = T(0);
  if (degree < 1) return;
  const T c1 = T(kC1);
  b[1] = -c1 * y;
  b[2] = c1 * z;
  b[3] = -c1 * x;
  if (grad) {
    T g[9] = {0, -c1, 0, 0, 0, c1, -c1, 0, 0};
    std::copy(g, g + 9, grad + 3);
  }
  if (degree < 2) return;
  const T xx = x * x, yy = y * y, zz = z * z;
  const T c20 = T(kC2[0]), c21 = T(kC2[1]), c22 = T(kC2[2]), c23 = T(kC2[3]), c24 = T(kC2[4]);
  b[4] = c20 * x * y;
  b[5] = c21 * y * z;
  b[6] = c22 * (T(2) * zz - xx - yy);
  b[7] = c23 * x * z;
  b[8] = c24 * (xx - yy);
  if (grad) {
    T g[15] = {c20 * y, c20 * x, 0,
               0, c21 * z, c21 * y,
               c22 * T(-2) * x, c22 * T(-2) * y, c22 * T(4) * z,
               c23 * z, 0, c23 * x,
               c24 * T(2) * x, c24 * T(-2) * y, 0};
    std::copy(g, g + 15, grad + 12);
  }
  if (degree < 3) return;
  const T c30 = T(kC3[0]), c31 = T(kC3[1]), c32 = T(kC3[2]), c33 = T(kC3[3]), c34 = T(kC3[4]),
          c35 = T(kC3[5]), c36 = T(kC3[6]);
  b[9] = c30 * y * (T(3) * xx - yy);
  b[10] = c31 * x * y * z;
  b[11] = c32 * y * (T(4) * zz - xx - yy);
  b[12] = c33 * z * (T(2) * zz - T(3) * xx - T(3) * yy);
  b[13] = c34 * x * (T(4) * zz - xx - yy);
  b[14] = c35 * z * (xx - yy);
  b[15] = c36 * x * (xx - T(3) * yy);
  if (grad) {
    T g[21] = {c30 * T(6) * x * y, c30 * (T(3) * xx - T(3) * yy), 0,
               c31 * y * z, c31 * x * z, c31 * x * y,
               c32 * T(-2) * x * y, c32 * (T(4) * zz - xx - T(3) * yy), c32 * T(8) * y * z,
               c33 * T(-6) * x * z, c33 * T(-6) * y * z, c33 * (T(6) * zz - T(3) * xx - T(3) * yy),
               c34 * (T(4) * zz - T(3) * xx - yy), c34 * T(-2) * x * y, c34 * T(8) * x * z,
               c35 * T(2) * x * z, c35 * T(-2) * y * z, c35 * (xx - yy),
               c36 * (T(3) * xx - T(3) * yy), c36 * T(-6) * x * y, 0};
    std::copy(g, g + 21, grad + 27);
  }
}

void check(int64_t degree, const at::Tensor& dirs, const at::Tensor& coeffs) {
  TORCH_CHECK(degree >= 0 && degree <= 3, "sh degree must be in 0..3");
  TORCH_CHECK(dirs.dim() == 3 && dirs.size(2) == 3, "dirs must be [C,N,3]");
  TORCH_CHECK(coeffs.dim() == 3 && coeffs.size(0) == dirs.size(1) && coeffs.size(2) == 3,
              "coeffs must be [N,K,3]");
  TORCH_CHECK(coeffs.size(1) >= (degree + 1) * (degree + 1), "too few SH coefficients");
  TORCH_CHECK(dirs.scalar_type() == coeffs.scalar_type(), "dirs and coeffs must share a dtype");
  TORCH_CHECK(dirs.device().is_cpu() && coeffs.device().is_cpu(), "inputs must be CPU");
}

// Unit direction of d (d / max(|d|, eps)) and the norm used.
template <typename T>
inline T unit(const T* d, T* n) {
  const T norm = std::max(std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]), T(kNormEps));
  n[0] = d[0] / norm;
  n[1] = d[1] / norm;
  n[2] = d[2] / norm;
  return norm;
}

at::Tensor sh_to_color_fwd_cpu(int64_t degree, const at::Tensor& dirs_in,
                               const at::Tensor& coeffs_in) {
  check(degree, dirs_in, coeffs_in);
  const at::Tensor dirs = dirs_in.contiguous(), coeffs = coeffs_in.contiguous();
  const int64_t C = dirs.size(0), N = dirs.size(1), K = coeffs.size(1);
  const int64_t k = (degree + 1) * (degree + 1);
  at::Tensor out = at::empty({C, N, 3}, dirs.options());
  AT_DISPATCH_FLOATING_TYPES(dirs.scalar_type(), "sh_to_color_fwd", [&] {
    const scalar_t* d = dirs.data_ptr<scalar_t>();
    const scalar_t* q = coeffs.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, C * N, 1024, [&](int64_t begin, int64_t end) {
      scalar_t b[16], n[3];
      for (int64_t i = begin; i < end; ++i) {
        unit(d + i * 3, n);
        sh_basis<scalar_t>(degree, n[0], n[1], n[2], b, nullptr);
        const scalar_t* qi = q + (i % N) * K * 3;
        for (int64_t ch = 0; ch < 3; ++ch) {
          scalar_t s = 0;
          for (int64_t j = 0; j < k; ++j) s += b[j] * qi[j * 3 + ch];
          o[i * 3 + ch] = std::max(s + scalar_t(0.5), scalar_t(0));
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> sh_to_color_bwd_cpu(int64_t degree, const at::Tensor& dirs_in,
                                                       const at::Tensor& coeffs_in,
                                                       const at::Tensor& v_colors_in) {
  check(degree, dirs_in, coeffs_in);
  const at::Tensor dirs = dirs_in.contiguous(), coeffs = coeffs_in.contiguous();
  const at::Tensor v_colors = v_colors_in.contiguous().to(dirs.scalar_type());
  const int64_t C = dirs.size(0), N = dirs.size(1), K = coeffs.size(1);
  TORCH_CHECK(v_colors.sizes() == at::IntArrayRef({C, N, 3}), "v_colors must be [C,N,3]");
  const int64_t k = (degree + 1) * (degree + 1);
  at::Tensor v_dirs = at::empty({C, N, 3}, dirs.options());
  at::Tensor v_coeffs = at::zeros({N, K, 3}, dirs.options());
  AT_DISPATCH_FLOATING_TYPES(dirs.scalar_type(), "sh_to_color_bwd", [&] {
    const scalar_t* d = dirs.data_ptr<scalar_t>();
    const scalar_t* q = coeffs.data_ptr<scalar_t>();
    const scalar_t* vc = v_colors.data_ptr<scalar_t>();
    scalar_t* vd = v_dirs.data_ptr<scalar_t>();
    scalar_t* vq = v_coeffs.data_ptr<scalar_t>();
    // By Gaussian, its cameras in order: the coefficient gradient sums in a fixed order.
    at::parallel_for(0, N, 512, [&](int64_t begin, int64_t end) {
      scalar_t b[16], g[48], n[3];
      for (int64_t gi = begin; gi < end; ++gi) {
        const scalar_t* qi = q + gi * K * 3;
        scalar_t* vqi = vq + gi * K * 3;
        for (int64_t c = 0; c < C; ++c) {
          const int64_t i = c * N + gi;
          const scalar_t norm = unit(d + i * 3, n);
          sh_basis<scalar_t>(degree, n[0], n[1], n[2], b, g);
          // clamp_min(x, 0) passes the gradient where x >= 0 (as torch.clamp_min).
          scalar_t v[3];
          for (int64_t ch = 0; ch < 3; ++ch) {
            scalar_t s = 0;
            for (int64_t j = 0; j < k; ++j) s += b[j] * qi[j * 3 + ch];
            v[ch] = s + scalar_t(0.5) >= scalar_t(0) ? vc[i * 3 + ch] : scalar_t(0);
          }
          scalar_t vn[3] = {0, 0, 0};
          for (int64_t j = 0; j < k; ++j) {
            const scalar_t v_b = qi[j * 3] * v[0] + qi[j * 3 + 1] * v[1] + qi[j * 3 + 2] * v[2];
            for (int64_t ch = 0; ch < 3; ++ch) vqi[j * 3 + ch] += b[j] * v[ch];
            vn[0] += v_b * g[j * 3];
            vn[1] += v_b * g[j * 3 + 1];
            vn[2] += v_b * g[j * 3 + 2];
          }
          // Through n = d / max(|d|, eps): (vn - n (n . vn)) / |d|, or vn / eps below eps.
          scalar_t* vdi = vd + i * 3;
          if (norm > scalar_t(kNormEps)) {
            const scalar_t dot = n[0] * vn[0] + n[1] * vn[1] + n[2] * vn[2];
            for (int64_t ax = 0; ax < 3; ++ax) vdi[ax] = (vn[ax] - n[ax] * dot) / norm;
          } else {
            for (int64_t ax = 0; ax < 3; ++ax) vdi[ax] = vn[ax] / norm;
          }
        }
      }
    });
  });
  return {v_dirs, v_coeffs};
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseview, CPU, m) {
  m.impl("sh_to_color_fwd", &sh_to_color_fwd_cpu);
  m.impl("sh_to_color_bwd", &sh_to_color_bwd_cpu);
}

}  // namespace sparseview
