// Launchers of the sparse-voxel CUDA kernels (sparse_voxel_cuda.cu), called by the torch
// binding (sparse_voxel_cuda.cpp). Plain C++: raw device pointers, the stream as void*
// (a cudaStream_t), and an error message (nullptr on success) as the result, so neither side
// needs the other's headers. Every pointer is a device pointer unless it says host.

#pragma once

#include <cstdint>

#include "sparse_voxel.h"

namespace sparseview {
namespace sparse_voxel_cuda {

using Error = const char*;  // nullptr: launched fine

// Ray marching, two passes: per-ray sample counts, then the samples at offsets[ray].
Error ray_march_count(const sparse_voxel::MarchGrid& grid, const float* origins,
                      const float* dirs, const float* near, const float* far, int64_t rays,
                      float step, int64_t* counts, void* stream);
Error ray_march_fill(const sparse_voxel::MarchGrid& grid, const float* origins,
                     const float* dirs, const float* near, const float* far, int64_t rays,
                     float step, const int64_t* offsets, int64_t* ray_indices,
                     float* t_starts, float* t_ends, void* stream);

// Voxel hashing. keys: [N] linear voxel keys (-1 outside). The table (capacity a power of
// two, keys filled with -1, first with INT32_MAX) maps each key to its first point.
template <typename scalar_t>
Error voxel_keys(const scalar_t* points, int64_t n, int64_t channels, const double size[3],
                 const double lo[3], const int64_t grid[3], int64_t* keys, void* stream);
Error voxel_table_insert(const int64_t* keys, int64_t n, int64_t* table_keys,
                         int32_t* table_first, int64_t capacity, int64_t* slot, void* stream);
// is_first[i] = 1 when point i is the first of its voxel.
Error voxel_mark_first(const int64_t* keys, const int64_t* slot, const int32_t* table_first,
                       int64_t n, int64_t* is_first, void* stream);
// first_rank: inclusive prefix sum of is_first; inverse = voxel number (first-come), -1 when
// outside or beyond max_voxels (< 0: no cap); coords [M, 3] (x, y, z) of kept voxels.
Error voxel_assign(const int64_t* keys, const int64_t* slot, const int32_t* table_first,
                   const int64_t* first_rank, int64_t n, int64_t max_voxels,
                   const int64_t grid[3], int64_t* inverse, int32_t* coords, void* stream);

// mean (zero-filled [M, C]) and max (-inf-filled [M, C]) of the features per voxel.
template <typename scalar_t>
Error voxel_reduce(const scalar_t* features, const int64_t* inverse, const int64_t* counts,
                   int64_t n, int64_t channels, int64_t m, scalar_t* mean, scalar_t* max,
                   void* stream);
// grad [N, C]; grad_mean / grad_max / max may be nullptr (no such gradient); ties: zero-filled
// int32 [M, C] scratch.
template <typename scalar_t>
Error voxel_reduce_bwd(const scalar_t* grad_mean, const scalar_t* grad_max,
                       const scalar_t* features, const int64_t* inverse, const int64_t* counts,
                       const scalar_t* max, int64_t n, int64_t channels, int64_t m,
                       int32_t* ties, scalar_t* grad, void* stream);

// Sparse trilinear: table of coords [M, 3] int64 (in range, checked by the caller) -> first
// row; then per query the 8 corner rows/weights (not written when rows is null) and the
// interpolated features.
Error trilinear_table(const int64_t* coords, int64_t m, int64_t* table_keys,
                      int32_t* table_rows, int64_t capacity, void* stream);
template <typename scalar_t>
Error trilinear_fwd(const scalar_t* points, int64_t q, const scalar_t size[3],
                    const scalar_t origin[3], const int64_t* table_keys,
                    const int32_t* table_rows, int64_t capacity, const scalar_t* features,
                    int64_t channels, scalar_t* out, int64_t* rows, scalar_t* weights,
                    void* stream);
// grad [M, C] zero-filled; accumulates weight * grad_out into the corners' rows.
template <typename scalar_t>
Error trilinear_bwd(const scalar_t* grad_out, const int64_t* rows, const scalar_t* weights,
                    int64_t q, int64_t channels, scalar_t* grad, void* stream);

}  // namespace sparse_voxel_cuda
}  // namespace sparseview
