// CUDA kernels of the sparse-voxel ops (CUDA runtime only: raw device pointers and a
// stream; no torch header, so `recon build-ops --cuda-compile-only` compiles this file with
// plain nvcc). The torch binding is sparse_voxel_cuda.cpp; the discrete arithmetic is shared
// with the CPU backend through sparse_voxel.h (compiled with --fmad=false, so results agree).
//
// Sums (voxel means, trilinear backward) use atomicAdd: equal to the CPU results up to the
// order of float additions. Everything discrete (voxel numbering in first-come order, ray
// samples, corner rows) is deterministic and identical to the CPU kernels.

#include <cuda_runtime.h>

#include <cstdint>

#include "sparse_voxel.h"
#include "sparse_voxel_cuda.h"

namespace sparseview {
namespace sparse_voxel_cuda {
namespace {

constexpr int kThreads = 256;
constexpr unsigned long long kEmpty = ~0ULL;  // int64 -1

inline unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>((n + kThreads - 1) / kThreads);
}

inline Error last_error() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

inline cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

// Open addressing, linear probing; keys are unsigned views of int64 keys (>= 0).
__device__ int64_t table_insert(unsigned long long* keys, uint64_t mask,
                                unsigned long long key) {
  uint64_t h = sparse_voxel::mix_hash(key) & mask;
  while (true) {
    const unsigned long long prev = atomicCAS(&keys[h], kEmpty, key);
    if (prev == kEmpty || prev == key) return static_cast<int64_t>(h);
    h = (h + 1) & mask;
  }
}

__device__ int64_t table_find(const unsigned long long* keys, uint64_t mask,
                              unsigned long long key) {
  uint64_t h = sparse_voxel::mix_hash(key) & mask;
  while (true) {
    const unsigned long long k = keys[h];
    if (k == key) return static_cast<int64_t>(h);
    if (k == kEmpty) return -1;
    h = (h + 1) & mask;
  }
}

__device__ void atomic_max(float* address, float value) {
  int* bits = reinterpret_cast<int*>(address);
  int old = *bits;
  while (value > __int_as_float(old)) {
    const int assumed = old;
    old = atomicCAS(bits, assumed, __float_as_int(value));
    if (old == assumed) break;
  }
}

__device__ void atomic_max(double* address, double value) {
  unsigned long long* bits = reinterpret_cast<unsigned long long*>(address);
  unsigned long long old = *bits;
  while (value > __longlong_as_double(static_cast<long long>(old))) {
    const unsigned long long assumed = old;
    old = atomicCAS(bits, assumed,
                    static_cast<unsigned long long>(__double_as_longlong(value)));
    if (old == assumed) break;
  }
}

// ----------------------------------------------------------------------------- ray march
__global__ void ray_march_count_kernel(sparse_voxel::MarchGrid grid, const float* origins,
                                       const float* dirs, const float* near, const float* far,
                                       int64_t rays, float step, int64_t* counts) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rays) return;
  counts[i] = sparse_voxel::march_ray(grid, origins + i * 3, dirs + i * 3, near[i], far[i],
                                      step, [](float, float) {});
}

__global__ void ray_march_fill_kernel(sparse_voxel::MarchGrid grid, const float* origins,
                                      const float* dirs, const float* near, const float* far,
                                      int64_t rays, float step, const int64_t* offsets,
                                      int64_t* ray_indices, float* t_starts, float* t_ends) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rays) return;
  int64_t out = offsets[i];
  sparse_voxel::march_ray(grid, origins + i * 3, dirs + i * 3, near[i], far[i], step,
                          [&](float t0, float t1) {
                            ray_indices[out] = i;
                            t_starts[out] = t0;
                            t_ends[out] = t1;
                            ++out;
                          });
}

// ------------------------------------------------------------------------------ voxel hash
template <typename scalar_t>
__global__ void voxel_keys_kernel(const scalar_t* points, int64_t n, int64_t channels,
                                  scalar_t s0, scalar_t s1, scalar_t s2, scalar_t l0,
                                  scalar_t l1, scalar_t l2, int64_t g0, int64_t g1, int64_t g2,
                                  int64_t* keys) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const scalar_t size[3] = {s0, s1, s2};
  const scalar_t lo[3] = {l0, l1, l2};
  const int64_t grid[3] = {g0, g1, g2};
  keys[i] = sparse_voxel::point_linear_key<scalar_t>(points + i * channels, lo, size, grid);
}

__global__ void voxel_insert_kernel(const int64_t* keys, int64_t n,
                                    unsigned long long* table_keys, int32_t* table_first,
                                    uint64_t mask, int64_t* slot) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  if (keys[i] < 0) {
    slot[i] = -1;
    return;
  }
  const int64_t h = table_insert(table_keys, mask, static_cast<unsigned long long>(keys[i]));
  atomicMin(&table_first[h], static_cast<int32_t>(i));
  slot[i] = h;
}

__global__ void voxel_mark_first_kernel(const int64_t* keys, const int64_t* slot,
                                        const int32_t* table_first, int64_t n,
                                        int64_t* is_first) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  is_first[i] = keys[i] >= 0 && table_first[slot[i]] == static_cast<int32_t>(i);
}

__global__ void voxel_assign_kernel(const int64_t* keys, const int64_t* slot,
                                    const int32_t* table_first, const int64_t* first_rank,
                                    int64_t n, int64_t max_voxels, int64_t g0, int64_t g1,
                                    int64_t* inverse, int32_t* coords) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t key = keys[i];
  if (key < 0) {
    inverse[i] = -1;
    return;
  }
  const int32_t first = table_first[slot[i]];
  const int64_t v = first_rank[first] - 1;
  if (max_voxels >= 0 && v >= max_voxels) {
    inverse[i] = -1;
    return;
  }
  inverse[i] = v;
  if (first == static_cast<int32_t>(i)) {
    coords[v * 3 + 0] = static_cast<int32_t>(key % g0);
    coords[v * 3 + 1] = static_cast<int32_t>((key / g0) % g1);
    coords[v * 3 + 2] = static_cast<int32_t>(key / (g0 * g1));
  }
}

// --------------------------------------------------------------------------- voxel reduce
template <typename scalar_t>
__global__ void voxel_accumulate_kernel(const scalar_t* features, const int64_t* inverse,
                                        int64_t n, int64_t channels, scalar_t* sum,
                                        scalar_t* max) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n * channels) return;
  const int64_t i = e / channels, k = e % channels;
  const int64_t v = inverse[i];
  if (v < 0) return;
  const scalar_t f = features[e];
  atomicAdd(&sum[v * channels + k], f);
  atomic_max(&max[v * channels + k], f);
}

template <typename scalar_t>
__global__ void voxel_mean_kernel(const int64_t* counts, int64_t m, int64_t channels,
                                  scalar_t* sum) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= m * channels) return;
  const int64_t count = counts[e / channels];
  sum[e] = sum[e] / static_cast<scalar_t>(count > 1 ? count : 1);
}

template <typename scalar_t>
__global__ void voxel_ties_kernel(const scalar_t* features, const int64_t* inverse,
                                  const scalar_t* max, int64_t n, int64_t channels,
                                  int32_t* ties) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n * channels) return;
  const int64_t i = e / channels, k = e % channels;
  const int64_t v = inverse[i];
  if (v >= 0 && features[e] == max[v * channels + k]) atomicAdd(&ties[v * channels + k], 1);
}

template <typename scalar_t>
__global__ void voxel_reduce_bwd_kernel(const scalar_t* grad_mean, const scalar_t* grad_max,
                                        const scalar_t* features, const int64_t* inverse,
                                        const int64_t* counts, const scalar_t* max,
                                        int64_t n, int64_t channels, const int32_t* ties,
                                        scalar_t* grad) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n * channels) return;
  const int64_t i = e / channels, k = e % channels;
  const int64_t v = inverse[i];
  if (v < 0) {
    grad[e] = 0;
    return;
  }
  const int64_t count = counts[v];
  const int64_t vk = v * channels + k;
  scalar_t value = grad_mean != nullptr
                       ? grad_mean[vk] / static_cast<scalar_t>(count > 1 ? count : 1)
                       : static_cast<scalar_t>(0);
  if (grad_max != nullptr && features[e] == max[vk])
    value = value + grad_max[vk] / static_cast<scalar_t>(ties[vk]);
  grad[e] = value;
}

// ------------------------------------------------------------------------------ trilinear
__global__ void trilinear_table_kernel(const int64_t* coords, int64_t m,
                                       unsigned long long* table_keys, int32_t* table_rows,
                                       uint64_t mask) {
  const int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (v >= m) return;
  const int64_t key = sparse_voxel::coord_key(coords[v * 3], coords[v * 3 + 1],
                                              coords[v * 3 + 2]);
  if (key < 0) return;  // the caller checks the range
  const int64_t h = table_insert(table_keys, mask, static_cast<unsigned long long>(key));
  atomicMin(&table_rows[h], static_cast<int32_t>(v));
}

template <typename scalar_t>
__global__ void trilinear_fwd_kernel(const scalar_t* points, int64_t q, scalar_t s0,
                                     scalar_t s1, scalar_t s2, scalar_t o0, scalar_t o1,
                                     scalar_t o2, const unsigned long long* table_keys,
                                     const int32_t* table_rows, uint64_t mask,
                                     const scalar_t* features, int64_t channels,
                                     scalar_t* out, int64_t* rows, scalar_t* weights) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= q) return;
  const scalar_t size[3] = {s0, s1, s2};
  const scalar_t origin[3] = {o0, o1, o2};
  int64_t keys[8];
  scalar_t w[8];
  sparse_voxel::trilinear_corners<scalar_t>(points + i * 3, origin, size, keys, w);
  int64_t row[8];
  for (int k = 0; k < 8; ++k) {
    int64_t r = -1;
    if (keys[k] >= 0) {
      const int64_t h = table_find(table_keys, mask, static_cast<unsigned long long>(keys[k]));
      if (h >= 0) r = table_rows[h];
    }
    row[k] = r;
    if (rows != nullptr) {  // (null: inference, the corners are not returned)
      rows[i * 8 + k] = r;
      weights[i * 8 + k] = w[k];
    }
  }
  for (int64_t ch = 0; ch < channels; ++ch) {
    scalar_t acc = 0;
    for (int k = 0; k < 8; ++k) {
      if (row[k] >= 0) acc += w[k] * features[row[k] * channels + ch];
    }
    out[i * channels + ch] = acc;
  }
}

template <typename scalar_t>
__global__ void trilinear_bwd_kernel(const scalar_t* grad_out, const int64_t* rows,
                                     const scalar_t* weights, int64_t q, int64_t channels,
                                     scalar_t* grad) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= q * channels) return;
  const int64_t i = e / channels, ch = e % channels;
  const scalar_t g = grad_out[e];
  for (int k = 0; k < 8; ++k) {
    const int64_t r = rows[i * 8 + k];
    if (r >= 0) atomicAdd(&grad[r * channels + ch], weights[i * 8 + k] * g);
  }
}

}  // namespace

// ------------------------------------------------------------------------------ launchers
Error ray_march_count(const sparse_voxel::MarchGrid& grid, const float* origins,
                      const float* dirs, const float* near, const float* far, int64_t rays,
                      float step, int64_t* counts, void* stream) {
  if (rays == 0) return nullptr;
  ray_march_count_kernel<<<blocks_for(rays), kThreads, 0, as_stream(stream)>>>(
      grid, origins, dirs, near, far, rays, step, counts);
  return last_error();
}

Error ray_march_fill(const sparse_voxel::MarchGrid& grid, const float* origins,
                     const float* dirs, const float* near, const float* far, int64_t rays,
                     float step, const int64_t* offsets, int64_t* ray_indices,
                     float* t_starts, float* t_ends, void* stream) {
  if (rays == 0) return nullptr;
  ray_march_fill_kernel<<<blocks_for(rays), kThreads, 0, as_stream(stream)>>>(
      grid, origins, dirs, near, far, rays, step, offsets, ray_indices, t_starts, t_ends);
  return last_error();
}

template <typename scalar_t>
Error voxel_keys(const scalar_t* points, int64_t n, int64_t channels, const double size[3],
                 const double lo[3], const int64_t grid[3], int64_t* keys, void* stream) {
  if (n == 0) return nullptr;
  voxel_keys_kernel<scalar_t><<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(
      points, n, channels, static_cast<scalar_t>(size[0]), static_cast<scalar_t>(size[1]),
      static_cast<scalar_t>(size[2]), static_cast<scalar_t>(lo[0]),
      static_cast<scalar_t>(lo[1]), static_cast<scalar_t>(lo[2]), grid[0], grid[1], grid[2],
      keys);
  return last_error();
}

Error voxel_table_insert(const int64_t* keys, int64_t n, int64_t* table_keys,
                         int32_t* table_first, int64_t capacity, int64_t* slot, void* stream) {
  if (n == 0) return nullptr;
  voxel_insert_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(
      keys, n, reinterpret_cast<unsigned long long*>(table_keys), table_first,
      static_cast<uint64_t>(capacity - 1), slot);
  return last_error();
}

Error voxel_mark_first(const int64_t* keys, const int64_t* slot, const int32_t* table_first,
                       int64_t n, int64_t* is_first, void* stream) {
  if (n == 0) return nullptr;
  voxel_mark_first_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(
      keys, slot, table_first, n, is_first);
  return last_error();
}

Error voxel_assign(const int64_t* keys, const int64_t* slot, const int32_t* table_first,
                   const int64_t* first_rank, int64_t n, int64_t max_voxels,
                   const int64_t grid[3], int64_t* inverse, int32_t* coords, void* stream) {
  if (n == 0) return nullptr;
  voxel_assign_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(
      keys, slot, table_first, first_rank, n, max_voxels, grid[0], grid[1], inverse, coords);
  return last_error();
}

template <typename scalar_t>
Error voxel_reduce(const scalar_t* features, const int64_t* inverse, const int64_t* counts,
                   int64_t n, int64_t channels, int64_t m, scalar_t* mean, scalar_t* max,
                   void* stream) {
  if (n * channels > 0) {
    voxel_accumulate_kernel<scalar_t><<<blocks_for(n * channels), kThreads, 0,
                                        as_stream(stream)>>>(features, inverse, n, channels,
                                                             mean, max);
  }
  if (m * channels > 0) {
    voxel_mean_kernel<scalar_t><<<blocks_for(m * channels), kThreads, 0, as_stream(stream)>>>(
        counts, m, channels, mean);
  }
  return last_error();
}

template <typename scalar_t>
Error voxel_reduce_bwd(const scalar_t* grad_mean, const scalar_t* grad_max,
                       const scalar_t* features, const int64_t* inverse, const int64_t* counts,
                       const scalar_t* max, int64_t n, int64_t channels, int64_t m,
                       int32_t* ties, scalar_t* grad, void* stream) {
  (void)m;
  if (n * channels == 0) return nullptr;
  if (grad_max != nullptr) {
    voxel_ties_kernel<scalar_t><<<blocks_for(n * channels), kThreads, 0, as_stream(stream)>>>(
        features, inverse, max, n, channels, ties);
  }
  voxel_reduce_bwd_kernel<scalar_t><<<blocks_for(n * channels), kThreads, 0,
                                      as_stream(stream)>>>(grad_mean, grad_max, features,
                                                           inverse, counts, max, n, channels,
                                                           ties, grad);
  return last_error();
}

Error trilinear_table(const int64_t* coords, int64_t m, int64_t* table_keys,
                      int32_t* table_rows, int64_t capacity, void* stream) {
  if (m == 0) return nullptr;
  trilinear_table_kernel<<<blocks_for(m), kThreads, 0, as_stream(stream)>>>(
      coords, m, reinterpret_cast<unsigned long long*>(table_keys), table_rows,
      static_cast<uint64_t>(capacity - 1));
  return last_error();
}

template <typename scalar_t>
Error trilinear_fwd(const scalar_t* points, int64_t q, const scalar_t size[3],
                    const scalar_t origin[3], const int64_t* table_keys,
                    const int32_t* table_rows, int64_t capacity, const scalar_t* features,
                    int64_t channels, scalar_t* out, int64_t* rows, scalar_t* weights,
                    void* stream) {
  if (q == 0) return nullptr;
  trilinear_fwd_kernel<scalar_t><<<blocks_for(q), kThreads, 0, as_stream(stream)>>>(
      points, q, size[0], size[1], size[2], origin[0], origin[1], origin[2],
      reinterpret_cast<const unsigned long long*>(table_keys), table_rows,
      static_cast<uint64_t>(capacity - 1), features, channels, out, rows, weights);
  return last_error();
}

template <typename scalar_t>
Error trilinear_bwd(const scalar_t* grad_out, const int64_t* rows, const scalar_t* weights,
                    int64_t q, int64_t channels, scalar_t* grad, void* stream) {
  if (q * channels == 0) return nullptr;
  trilinear_bwd_kernel<scalar_t><<<blocks_for(q * channels), kThreads, 0,
                                   as_stream(stream)>>>(grad_out, rows, weights, q, channels,
                                                        grad);
  return last_error();
}

#define SPARSEVIEW_INSTANTIATE(T)                                                            \
  template Error voxel_keys<T>(const T*, int64_t, int64_t, const double[3], const double[3], \
                               const int64_t[3], int64_t*, void*);                          \
  template Error voxel_reduce<T>(const T*, const int64_t*, const int64_t*, int64_t, int64_t, \
                                 int64_t, T*, T*, void*);                                    \
  template Error voxel_reduce_bwd<T>(const T*, const T*, const T*, const int64_t*,           \
                                     const int64_t*, const T*, int64_t, int64_t, int64_t,    \
                                     int32_t*, T*, void*);                                   \
  template Error trilinear_fwd<T>(const T*, int64_t, const T[3], const T[3], const int64_t*, \
                                  const int32_t*, int64_t, const T*, int64_t, T*, int64_t*,  \
                                  T*, void*);                                                \
  template Error trilinear_bwd<T>(const T*, const int64_t*, const T*, int64_t, int64_t, T*,  \
                                  void*);

SPARSEVIEW_INSTANTIATE(float)
SPARSEVIEW_INSTANTIATE(double)
#undef SPARSEVIEW_INSTANTIATE

}  // namespace sparse_voxel_cuda
}  // namespace sparseview
