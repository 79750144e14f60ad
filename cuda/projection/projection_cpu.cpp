// CPU backend of sparseview::project_gaussians_{fwd,bwd}: EWA projection of 3D Gaussians
// into C pinhole cameras (gsplat's fully_fused_projection), forward and a hand-written
// backward to the Gaussians (means, quaternions, scales, opacities) and to the cameras
// (viewmats, Ks), in one pass per Gaussian instead of a few hundred PyTorch elementwise
// ops and their autograd nodes.
//
// The maths, its order of operations and every special case (quaternion normalisation
// with eps 1e-12, the Jacobian at the mean clamped to 1.3x the field of view, the culled
// depth replaced by 1, det <= 0 replaced by 1, ties of min/max splitting the gradient in
// half, clamp passing the gradient at the bound) are those of
// reconstruction/splatting/_projection.py::project_gaussians, the PyTorch reference it is
// tested against (outputs, gradients, float64 gradcheck).
//
// Deterministic for any thread count: a Gaussian's gradient sums its cameras in order;
// the camera gradients are summed per fixed block of Gaussians (in double), then over the
// blocks in order.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace sparseview {
namespace {

constexpr double kQuatEps = 1e-12;  // geometry.so3.quat_normalize's eps
constexpr int64_t kBlock = 1024;    // Gaussians per block of the camera-gradient sums
constexpr int kCamGrads = 16;       // R (9), t (3), fx, fy, cx, cy

// One camera: rotation (row major), translation, intrinsics, and the limits of the
// clamped mean (x / z in [-lxn, lxp], y / z in [-lyn, lyp]).
template <typename T>
struct Camera {
  T R[9], t[3], fx, fy, cx, cy, lxp, lxn, lyp, lyn;
  // d lim / d (fx, cx) and d lim / d (fy, cy), for the backward
  T dlxp_dfx, dlxn_dfx, dlyp_dfy, dlyn_dfy;
};

template <typename T>
Camera<T> camera(const T* viewmat, const T* K, int64_t width, int64_t height) {
  Camera<T> cam;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) cam.R[i * 3 + j] = viewmat[i * 4 + j];
    cam.t[i] = viewmat[i * 4 + 3];
  }
  cam.fx = K[0];
  cam.fy = K[4];
  cam.cx = K[2];
  cam.cy = K[5];
  const T W = T(width), H = T(height);
  const T tan_x = T(0.5 * double(width)) / cam.fx, tan_y = T(0.5 * double(height)) / cam.fy;
  cam.lxp = (W - cam.cx) / cam.fx + T(0.3) * tan_x;
  cam.lxn = cam.cx / cam.fx + T(0.3) * tan_x;
  cam.lyp = (H - cam.cy) / cam.fy + T(0.3) * tan_y;
  cam.lyn = cam.cy / cam.fy + T(0.3) * tan_y;
  const T fx2 = cam.fx * cam.fx, fy2 = cam.fy * cam.fy;
  const T k_x = T(0.3 * 0.5 * double(width)), k_y = T(0.3 * 0.5 * double(height));
  cam.dlxp_dfx = -(W - cam.cx) / fx2 - k_x / fx2;
  cam.dlxn_dfx = -cam.cx / fx2 - k_x / fx2;
  cam.dlyp_dfy = -(H - cam.cy) / fy2 - k_y / fy2;
  cam.dlyn_dfy = -cam.cy / fy2 - k_y / fy2;
  return cam;
}

// The C cameras of viewmats [C,4,4] and Ks [C,3,3] (contiguous, of type T).
template <typename T>
std::vector<Camera<T>> cameras(const at::Tensor& viewmats, const at::Tensor& Ks,
                               int64_t width, int64_t height) {
  std::vector<Camera<T>> cams;
  for (int64_t c = 0; c < viewmats.size(0); ++c)
    cams.push_back(camera(viewmats.data_ptr<T>() + c * 16, Ks.data_ptr<T>() + c * 9, width,
                          height));
  return cams;
}

// Per Gaussian: the normalised quaternion, its rotation matrix, M = R S and the six unique
// entries of the world covariance M M^T (xx, xy, xz, yy, yz, zz).
template <typename T>
struct Shape {
  T qn[4], norm, Rq[9], M[9], sigma[6];
};

template <typename T>
inline void shape(const T* q, const T* s, Shape<T>& g) {
  const T norm = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  g.norm = norm;
  const T nc = std::max(norm, T(kQuatEps));
  for (int i = 0; i < 4; ++i) g.qn[i] = q[i] / nc;
  const T w = g.qn[0], x = g.qn[1], y = g.qn[2], z = g.qn[3];
  const T xx = x * x, yy = y * y, zz = z * z, xy = x * y, xz = x * z, yz = y * z;
  const T wx = w * x, wy = w * y, wz = w * z;
  T* R = g.Rq;
  R[0] = T(1) - T(2) * (yy + zz);
  R[1] = T(2) * (xy - wz);
  R[2] = T(2) * (xz + wy);
  R[3] = T(2) * (xy + wz);
  R[4] = T(1) - T(2) * (xx + zz);
  R[5] = T(2) * (yz - wx);
  R[6] = T(2) * (xz - wy);
  R[7] = T(2) * (yz + wx);
  R[8] = T(1) - T(2) * (xx + yy);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) g.M[i * 3 + j] = R[i * 3 + j] * s[j];
  const T* M = g.M;
  auto dot = [&](int i, int j) {
    return M[i * 3] * M[j * 3] + M[i * 3 + 1] * M[j * 3 + 1] + M[i * 3 + 2] * M[j * 3 + 2];
  };
  g.sigma[0] = dot(0, 0);
  g.sigma[1] = dot(0, 1);
  g.sigma[2] = dot(0, 2);
  g.sigma[3] = dot(1, 1);
  g.sigma[4] = dot(1, 2);
  g.sigma[5] = dot(2, 2);
}

// Everything the forward computes for one (camera, Gaussian) pair that the backward needs.
template <typename T>
struct Pair {
  T x, y, z, zs, u, v, uc, vc, tx, ty, j00, j11, j02, j12, T0[3], T1[3], U0[3], U1[3];
  T a, b, c, det_orig, ap, cp, det, det_safe;
  bool in_depth, valid;
};

template <typename T>
inline void project_pair(const Camera<T>& cam, const T* mean, const T* sigma, T near_plane,
                         T far_plane, T eps2d, Pair<T>& p) {
  const T* R = cam.R;
  p.x = R[0] * mean[0] + R[1] * mean[1] + R[2] * mean[2] + cam.t[0];
  p.y = R[3] * mean[0] + R[4] * mean[1] + R[5] * mean[2] + cam.t[1];
  p.z = R[6] * mean[0] + R[7] * mean[1] + R[8] * mean[2] + cam.t[2];
  p.in_depth = p.z > near_plane && p.z < far_plane;
  p.zs = p.in_depth ? p.z : T(1);
  p.u = p.x / p.zs;
  p.v = p.y / p.zs;
  p.uc = std::min(std::max(p.u, -cam.lxn), cam.lxp);
  p.vc = std::min(std::max(p.v, -cam.lyn), cam.lyp);
  p.tx = p.zs * p.uc;
  p.ty = p.zs * p.vc;
  const T zs2 = p.zs * p.zs;
  p.j00 = cam.fx / p.zs;
  p.j11 = cam.fy / p.zs;
  p.j02 = -cam.fx * p.tx / zs2;
  p.j12 = -cam.fy * p.ty / zs2;
  for (int k = 0; k < 3; ++k) {
    p.T0[k] = p.j00 * R[k] + p.j02 * R[6 + k];
    p.T1[k] = p.j11 * R[3 + k] + p.j12 * R[6 + k];
  }
  const T S[3][3] = {{sigma[0], sigma[1], sigma[2]},
                     {sigma[1], sigma[3], sigma[4]},
                     {sigma[2], sigma[4], sigma[5]}};
  for (int i = 0; i < 3; ++i) {
    p.U0[i] = S[i][0] * p.T0[0] + S[i][1] * p.T0[1] + S[i][2] * p.T0[2];
    p.U1[i] = S[i][0] * p.T1[0] + S[i][1] * p.T1[1] + S[i][2] * p.T1[2];
  }
  p.a = p.T0[0] * p.U0[0] + p.T0[1] * p.U0[1] + p.T0[2] * p.U0[2];
  p.b = p.T0[0] * p.U1[0] + p.T0[1] * p.U1[1] + p.T0[2] * p.U1[2];
  p.c = p.T1[0] * p.U1[0] + p.T1[1] * p.U1[1] + p.T1[2] * p.U1[2];
  p.det_orig = p.a * p.c - p.b * p.b;
  p.ap = p.a + eps2d;
  p.cp = p.c + eps2d;
  p.det = p.ap * p.cp - p.b * p.b;
  p.valid = p.in_depth && p.det > T(0);
  p.det_safe = p.valid ? p.det : T(1);
}

void check_inputs(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                  const at::Tensor& opacities, const at::Tensor& viewmats,
                  const at::Tensor& Ks) {
  const int64_t N = means.size(0);
  TORCH_CHECK(means.dim() == 2 && means.size(1) == 3, "means must be [N,3]");
  TORCH_CHECK(quats.dim() == 2 && quats.size(0) == N && quats.size(1) == 4,
              "quats must be [N,4]");
  TORCH_CHECK(scales.dim() == 2 && scales.size(0) == N && scales.size(1) == 3,
              "scales must be [N,3]");
  TORCH_CHECK(opacities.dim() == 1 && opacities.size(0) == N, "opacities must be [N]");
  TORCH_CHECK(viewmats.dim() == 3 && viewmats.size(1) == 4 && viewmats.size(2) == 4,
              "viewmats must be [C,4,4]");
  TORCH_CHECK(Ks.dim() == 3 && Ks.size(0) == viewmats.size(0) && Ks.size(1) == 3 &&
                  Ks.size(2) == 3,
              "Ks must be [C,3,3]");
  for (const at::Tensor* t : {&quats, &scales, &opacities, &viewmats, &Ks}) {
    TORCH_CHECK(t->scalar_type() == means.scalar_type(), "inputs must share a dtype");
    TORCH_CHECK(t->device().is_cpu(), "inputs must be CPU tensors");
  }
  TORCH_CHECK(means.device().is_cpu(), "inputs must be CPU tensors");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
project_gaussians_fwd_cpu(const at::Tensor& means_in, const at::Tensor& quats_in,
                          const at::Tensor& scales_in, const at::Tensor& opacities_in,
                          const at::Tensor& viewmats_in, const at::Tensor& Ks_in, int64_t width,
                          int64_t height, double near_plane, double far_plane, double eps2d,
                          double radius_clip, bool antialiased, double alpha_threshold,
                          double max_extent) {
  check_inputs(means_in, quats_in, scales_in, opacities_in, viewmats_in, Ks_in);
  const at::Tensor means = means_in.contiguous(), quats = quats_in.contiguous(),
                   scales = scales_in.contiguous(), opacities = opacities_in.contiguous(),
                   viewmats = viewmats_in.contiguous(), Ks = Ks_in.contiguous();
  const int64_t C = viewmats.size(0), N = means.size(0);
  const auto opts = means.options();
  at::Tensor means2d = at::empty({C, N, 2}, opts), conics = at::empty({C, N, 3}, opts);
  at::Tensor depths = at::empty({C, N}, opts), opac = at::empty({C, N}, opts);
  at::Tensor comps = at::empty({C, N}, opts);
  at::Tensor radii = at::empty({C, N, 2}, opts.dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_gaussians_fwd", [&] {
    using T = scalar_t;
    const std::vector<Camera<T>> cams = cameras<T>(viewmats, Ks, width, height);
    const T* m = means.data_ptr<T>();
    const T* q = quats.data_ptr<T>();
    const T* s = scales.data_ptr<T>();
    const T* o = opacities.data_ptr<T>();
    T* out_m2d = means2d.data_ptr<T>();
    T* out_con = conics.data_ptr<T>();
    T* out_dep = depths.data_ptr<T>();
    T* out_opa = opac.data_ptr<T>();
    T* out_cmp = comps.data_ptr<T>();
    int32_t* out_rad = radii.data_ptr<int32_t>();
    const T thr = T(alpha_threshold), W = T(width), H = T(height), clip = T(radius_clip);
    at::parallel_for(0, N, kBlock, [&](int64_t begin, int64_t end) {
      Shape<T> g;
      Pair<T> p;
      for (int64_t n = begin; n < end; ++n) {
        shape(q + n * 4, s + n * 3, g);
        for (int64_t c = 0; c < C; ++c) {
          const Camera<T>& cam = cams[c];
          project_pair(cam, m + n * 3, g.sigma, T(near_plane), T(far_plane), T(eps2d), p);
          const int64_t i = c * N + n;
          out_con[i * 3] = p.cp / p.det_safe;
          out_con[i * 3 + 1] = -p.b / p.det_safe;
          out_con[i * 3 + 2] = p.ap / p.det_safe;
          const T comp = std::sqrt(std::max(p.det_orig / p.det_safe, T(0)));
          out_cmp[i] = comp;
          const T mx = cam.fx * p.x / p.zs + cam.cx, my = cam.fy * p.y / p.zs + cam.cy;
          out_m2d[i * 2] = mx;
          out_m2d[i * 2 + 1] = my;
          out_dep[i] = p.z;
          const T op = antialiased ? o[n] * comp : o[n];
          out_opa[i] = op;
          // The screen-space extent (no gradient): opacity-aware, capped in sigmas.
          bool visible = p.valid && op >= thr;
          const T extent = std::min(
              std::sqrt(T(2) * std::log(std::max(op / thr, T(1)))), T(max_extent));
          const T rx = std::ceil(extent * std::sqrt(std::max(p.ap, T(0))));
          const T ry = std::ceil(extent * std::sqrt(std::max(p.cp, T(0))));
          visible = visible && !(rx <= clip && ry <= clip) && rx > T(0) && ry > T(0);
          visible = visible && mx + rx > T(0) && mx - rx < W && my + ry > T(0) && my - ry < H;
          visible = visible && std::isfinite(mx) && std::isfinite(my);
          const T cap = T(1073741824.0);  // 2^30
          out_rad[i * 2] = visible ? int32_t(std::min(rx, cap)) : 0;
          out_rad[i * 2 + 1] = visible ? int32_t(std::min(ry, cap)) : 0;
        }
      }
    });
  });
  return {means2d, conics, depths, radii, opac, comps};
}

// Gradient of min(max(u, -ln), lp) to u, ln and lp, ties split in half (as torch's
// maximum/minimum).
template <typename T>
inline void clamp_grad(T u, T ln, T lp, T v_out, T& v_u, T& v_ln, T& v_lp) {
  const T m1 = std::max(u, -ln);
  const T half = T(0.5);
  const T v_m1 = m1 < lp ? v_out : (m1 == lp ? half * v_out : T(0));
  v_lp = lp < m1 ? v_out : (m1 == lp ? half * v_out : T(0));
  v_u = u > -ln ? v_m1 : (u == -ln ? half * v_m1 : T(0));
  const T v_neg_ln = -ln > u ? v_m1 : (u == -ln ? half * v_m1 : T(0));
  v_ln = -v_neg_ln;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
project_gaussians_bwd_cpu(const at::Tensor& means_in, const at::Tensor& quats_in,
                          const at::Tensor& scales_in, const at::Tensor& opacities_in,
                          const at::Tensor& viewmats_in, const at::Tensor& Ks_in, int64_t width,
                          int64_t height, double near_plane, double far_plane, double eps2d,
                          bool antialiased, const std::optional<at::Tensor>& v_means2d_in,
                          const std::optional<at::Tensor>& v_conics_in,
                          const std::optional<at::Tensor>& v_depths_in,
                          const std::optional<at::Tensor>& v_opac_in,
                          const std::optional<at::Tensor>& v_comps_in) {
  check_inputs(means_in, quats_in, scales_in, opacities_in, viewmats_in, Ks_in);
  const at::Tensor means = means_in.contiguous(), quats = quats_in.contiguous(),
                   scales = scales_in.contiguous(), opacities = opacities_in.contiguous(),
                   viewmats = viewmats_in.contiguous(), Ks = Ks_in.contiguous();
  const int64_t C = viewmats.size(0), N = means.size(0);
  auto grad_in = [&](const std::optional<at::Tensor>& t, std::vector<int64_t> shape) {
    if (!t.has_value() || !t->defined()) return at::Tensor();
    TORCH_CHECK(t->sizes() == at::IntArrayRef(shape), "a gradient has the wrong shape");
    return t->contiguous().to(means.scalar_type());
  };
  const at::Tensor v_means2d = grad_in(v_means2d_in, {C, N, 2});
  const at::Tensor v_conics = grad_in(v_conics_in, {C, N, 3});
  const at::Tensor v_depths = grad_in(v_depths_in, {C, N});
  const at::Tensor v_opac = grad_in(v_opac_in, {C, N});
  const at::Tensor v_comps = grad_in(v_comps_in, {C, N});
  const auto opts = means.options();
  at::Tensor v_means = at::empty({N, 3}, opts), v_quats = at::empty({N, 4}, opts);
  at::Tensor v_scales = at::empty({N, 3}, opts), v_opacities = at::empty({N}, opts);
  at::Tensor v_viewmats = at::zeros({C, 4, 4}, opts), v_Ks = at::zeros({C, 3, 3}, opts);
  const int64_t blocks = (N + kBlock - 1) / kBlock;
  std::vector<double> cam_partial(std::max<int64_t>(blocks, 1) * C * kCamGrads, 0.0);
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_gaussians_bwd", [&] {
    using T = scalar_t;
    const std::vector<Camera<T>> cams = cameras<T>(viewmats, Ks, width, height);
    const T* m = means.data_ptr<T>();
    const T* q = quats.data_ptr<T>();
    const T* s = scales.data_ptr<T>();
    const T* o = opacities.data_ptr<T>();
    const T* g_m2d = v_means2d.defined() ? v_means2d.data_ptr<T>() : nullptr;
    const T* g_con = v_conics.defined() ? v_conics.data_ptr<T>() : nullptr;
    const T* g_dep = v_depths.defined() ? v_depths.data_ptr<T>() : nullptr;
    const T* g_opa = v_opac.defined() ? v_opac.data_ptr<T>() : nullptr;
    const T* g_cmp = v_comps.defined() ? v_comps.data_ptr<T>() : nullptr;
    T* vm = v_means.data_ptr<T>();
    T* vq = v_quats.data_ptr<T>();
    T* vs = v_scales.data_ptr<T>();
    T* vo = v_opacities.data_ptr<T>();
    at::parallel_for(0, blocks, 1, [&](int64_t block_begin, int64_t block_end) {
      Shape<T> g;
      Pair<T> p;
      for (int64_t block = block_begin; block < block_end; ++block) {
        double* cam_acc = cam_partial.data() + block * C * kCamGrads;
        const int64_t n_end = std::min(N, (block + 1) * kBlock);
        for (int64_t n = block * kBlock; n < n_end; ++n) {
          shape(q + n * 4, s + n * 3, g);
          const T* mean = m + n * 3;
          T v_mean[3] = {0, 0, 0}, v_sig[6] = {0, 0, 0, 0, 0, 0}, v_o = 0;
          for (int64_t c = 0; c < C; ++c) {
            const Camera<T>& cam = cams[c];
            const T* R = cam.R;
            project_pair(cam, mean, g.sigma, T(near_plane), T(far_plane), T(eps2d), p);
            const int64_t i = c * N + n;
            const T comp = std::sqrt(std::max(p.det_orig / p.det_safe, T(0)));
            // opacities out = o (classic) or o * comp (antialiased)
            const T go = g_opa ? g_opa[i] : T(0);
            T v_comp = g_cmp ? g_cmp[i] : T(0);
            if (antialiased) {
              v_o += go * comp;
              v_comp += go * o[n];
            } else {
              v_o += go;
            }
            // comp = sqrt(clamp(r, 0)), r = det_orig / det_safe
            const T r = p.det_orig / p.det_safe;
            T v_r = T(0);
            // (0 where comp == 0, where torch's sqrt would divide by zero)
            if (v_comp != T(0) && r >= T(0) && comp > T(0)) v_r = v_comp / (T(2) * comp);
            T v_det_orig = v_r / p.det_safe;
            T v_det_safe = -v_r * p.det_orig / (p.det_safe * p.det_safe);
            // conics = (c', -b, a') / det_safe
            T v_ap = 0, v_cp = 0, v_b = 0;
            if (g_con) {
              const T g0 = g_con[i * 3], g1 = g_con[i * 3 + 1], g2 = g_con[i * 3 + 2];
              v_cp += g0 / p.det_safe;
              v_b += -g1 / p.det_safe;
              v_ap += g2 / p.det_safe;
              v_det_safe -= (g0 * p.cp - g1 * p.b + g2 * p.ap) / (p.det_safe * p.det_safe);
            }
            const T v_det = p.valid ? v_det_safe : T(0);
            v_ap += v_det * p.cp;
            v_cp += v_det * p.ap;
            v_b += T(-2) * p.b * v_det;
            T v_a = v_ap + v_det_orig * p.c;
            T v_c = v_cp + v_det_orig * p.a;
            v_b += T(-2) * p.b * v_det_orig;
            // a = T0 S T0, b = T0 S T1, c = T1 S T1
            T v_T0[3], v_T1[3];
            for (int k = 0; k < 3; ++k) {
              v_T0[k] = T(2) * v_a * p.U0[k] + v_b * p.U1[k];
              v_T1[k] = T(2) * v_c * p.U1[k] + v_b * p.U0[k];
            }
            auto G = [&](int i1, int j1) {
              return v_a * p.T0[i1] * p.T0[j1] + v_b * p.T0[i1] * p.T1[j1] +
                     v_c * p.T1[i1] * p.T1[j1];
            };
            v_sig[0] += G(0, 0);
            v_sig[1] += G(0, 1) + G(1, 0);
            v_sig[2] += G(0, 2) + G(2, 0);
            v_sig[3] += G(1, 1);
            v_sig[4] += G(1, 2) + G(2, 1);
            v_sig[5] += G(2, 2);
            // T0 = j00 R0 + j02 R2, T1 = j11 R1 + j12 R2
            T v_j00 = 0, v_j02 = 0, v_j11 = 0, v_j12 = 0;
            double* acc = cam_acc + c * kCamGrads;
            for (int k = 0; k < 3; ++k) {
              v_j00 += v_T0[k] * R[k];
              v_j02 += v_T0[k] * R[6 + k];
              v_j11 += v_T1[k] * R[3 + k];
              v_j12 += v_T1[k] * R[6 + k];
              acc[k] += double(v_T0[k] * p.j00);
              acc[3 + k] += double(v_T1[k] * p.j11);
              acc[6 + k] += double(v_T0[k] * p.j02 + v_T1[k] * p.j12);
            }
            const T zs = p.zs, zs2 = zs * zs, zs3 = zs2 * zs;
            T v_fx = 0, v_fy = 0, v_cx = 0, v_cy = 0, v_zs = 0, v_x = 0, v_y = 0;
            v_fx += v_j00 / zs;
            v_zs += -v_j00 * cam.fx / zs2;
            v_fy += v_j11 / zs;
            v_zs += -v_j11 * cam.fy / zs2;
            // j02 = -fx tx / zs^2
            v_fx += -v_j02 * p.tx / zs2;
            const T v_tx = -v_j02 * cam.fx / zs2;
            v_zs += v_j02 * T(2) * cam.fx * p.tx / zs3;
            v_fy += -v_j12 * p.ty / zs2;
            const T v_ty = -v_j12 * cam.fy / zs2;
            v_zs += v_j12 * T(2) * cam.fy * p.ty / zs3;
            // tx = zs * clamp(x / zs), the clamp's limits depending on fx, cx
            v_zs += v_tx * p.uc + v_ty * p.vc;
            T v_u, v_lxn, v_lxp, v_v, v_lyn, v_lyp;
            clamp_grad(p.u, cam.lxn, cam.lxp, v_tx * zs, v_u, v_lxn, v_lxp);
            clamp_grad(p.v, cam.lyn, cam.lyp, v_ty * zs, v_v, v_lyn, v_lyp);
            v_cx += (v_lxn - v_lxp) / cam.fx;
            v_fx += v_lxp * cam.dlxp_dfx + v_lxn * cam.dlxn_dfx;
            v_cy += (v_lyn - v_lyp) / cam.fy;
            v_fy += v_lyp * cam.dlyp_dfy + v_lyn * cam.dlyn_dfy;
            v_x += v_u / zs;
            v_y += v_v / zs;
            v_zs += -(v_u * p.x + v_v * p.y) / zs2;
            // means2d = (fx x / zs + cx, fy y / zs + cy)
            if (g_m2d) {
              const T gx = g_m2d[i * 2], gy = g_m2d[i * 2 + 1];
              v_fx += gx * p.x / zs;
              v_fy += gy * p.y / zs;
              v_x += gx * cam.fx / zs;
              v_y += gy * cam.fy / zs;
              v_zs += -(gx * cam.fx * p.x + gy * cam.fy * p.y) / zs2;
              v_cx += gx;
              v_cy += gy;
            }
            T v_z = p.in_depth ? v_zs : T(0);
            if (g_dep) v_z += g_dep[i];
            // (x, y, z) = R mean + t
            const T v_p[3] = {v_x, v_y, v_z};
            for (int r = 0; r < 3; ++r) {
              for (int k = 0; k < 3; ++k) acc[r * 3 + k] += double(v_p[r] * mean[k]);
              acc[9 + r] += double(v_p[r]);
            }
            for (int k = 0; k < 3; ++k)
              v_mean[k] += R[k] * v_p[0] + R[3 + k] * v_p[1] + R[6 + k] * v_p[2];
            acc[12] += double(v_fx);
            acc[13] += double(v_fy);
            acc[14] += double(v_cx);
            acc[15] += double(v_cy);
          }
          // Sigma = M M^T with M = Rq diag(s): v_M = P M, P symmetric from v_sigma.
          const T P[3][3] = {{T(2) * v_sig[0], v_sig[1], v_sig[2]},
                             {v_sig[1], T(2) * v_sig[3], v_sig[4]},
                             {v_sig[2], v_sig[4], T(2) * v_sig[5]}};
          T v_R[9], v_s[3] = {0, 0, 0};
          for (int r = 0; r < 3; ++r)
            for (int k = 0; k < 3; ++k) {
              const T v_M = P[r][0] * g.M[k] + P[r][1] * g.M[3 + k] + P[r][2] * g.M[6 + k];
              v_R[r * 3 + k] = v_M * s[n * 3 + k];
              v_s[k] += v_M * g.Rq[r * 3 + k];
            }
          // Rotation matrix of the unit quaternion (w, x, y, z)
          const T w = g.qn[0], x = g.qn[1], y = g.qn[2], z = g.qn[3];
          T v_qn[4];
          v_qn[0] = T(2) * (-z * v_R[1] + y * v_R[2] + z * v_R[3] - x * v_R[5] - y * v_R[6] +
                            x * v_R[7]);
          v_qn[1] = T(2) * (y * v_R[1] + z * v_R[2] + y * v_R[3] - T(2) * x * v_R[4] -
                            w * v_R[5] + z * v_R[6] + w * v_R[7] - T(2) * x * v_R[8]);
          v_qn[2] = T(2) * (T(-2) * y * v_R[0] + x * v_R[1] + w * v_R[2] + x * v_R[3] +
                            z * v_R[5] - w * v_R[6] + z * v_R[7] - T(2) * y * v_R[8]);
          v_qn[3] = T(2) * (T(-2) * z * v_R[0] - w * v_R[1] + x * v_R[2] + w * v_R[3] -
                            T(2) * z * v_R[4] + y * v_R[5] + x * v_R[6] + y * v_R[7]);
          // qn = q / max(|q|, eps)
          const T* qi = q + n * 4;
          if (g.norm >= T(kQuatEps)) {
            const T dot = qi[0] * v_qn[0] + qi[1] * v_qn[1] + qi[2] * v_qn[2] + qi[3] * v_qn[3];
            const T n3 = g.norm * g.norm * g.norm;
            for (int k = 0; k < 4; ++k) vq[n * 4 + k] = v_qn[k] / g.norm - qi[k] * dot / n3;
          } else {
            for (int k = 0; k < 4; ++k) vq[n * 4 + k] = v_qn[k] / T(kQuatEps);
          }
          for (int k = 0; k < 3; ++k) {
            vm[n * 3 + k] = v_mean[k];
            vs[n * 3 + k] = v_s[k];
          }
          vo[n] = v_o;
        }
      }
    });
    T* vv = v_viewmats.data_ptr<T>();
    T* vK = v_Ks.data_ptr<T>();
    for (int64_t c = 0; c < C; ++c) {
      double sum[kCamGrads] = {};
      for (int64_t block = 0; block < blocks; ++block)
        for (int k = 0; k < kCamGrads; ++k) sum[k] += cam_partial[(block * C + c) * kCamGrads + k];
      for (int r = 0; r < 3; ++r) {
        for (int k = 0; k < 3; ++k) vv[c * 16 + r * 4 + k] = T(sum[r * 3 + k]);
        vv[c * 16 + r * 4 + 3] = T(sum[9 + r]);
      }
      vK[c * 9 + 0] = T(sum[12]);
      vK[c * 9 + 4] = T(sum[13]);
      vK[c * 9 + 2] = T(sum[14]);
      vK[c * 9 + 5] = T(sum[15]);
    }
  });
  return {v_means, v_quats, v_scales, v_opacities, v_viewmats, v_Ks};
}

}  // namespace

// The schemas live with their only backend (a fragment of the library cuda/registry.cpp
// declares).
TORCH_LIBRARY_IMPL(sparseview, CPU, m) {
  m.impl("project_gaussians_fwd", &project_gaussians_fwd_cpu);
  m.impl("project_gaussians_bwd", &project_gaussians_bwd_cpu);
}

}  // namespace sparseview
