// Deterministic block reductions: a fixed shuffle tree inside each warp, then the per-warp results
// added in warp order, so a given launch configuration always produces bit-identical sums (no atomics).
#pragma once

#include "fusedops/cuda/common.cuh"

namespace fusedops {
namespace cuda {

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;  // complete in lane 0
}

// Sums each of the N values across every thread of the block. Requirements: the block size is a multiple
// of 32 and at least N; `smem` holds N * (block size / 32) elements. On return smem[i] holds the sum of
// v[i] (for every thread to read); the function ends with a barrier, so smem may be rewritten only after
// the next __syncthreads() that follows the reads.
template <int N, typename T>
__device__ __forceinline__ void block_sum_n(T (&v)[N], T* smem) {
  const int nthreads = blockDim.x * blockDim.y * blockDim.z;
  const int tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int lane = tid % kWarpSize, warp = tid / kWarpSize, warps = nthreads / kWarpSize;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const T s = warp_sum(v[i]);
    if (lane == 0) smem[i * warps + warp] = s;
  }
  __syncthreads();
  T total = T(0);
  if (tid < N)
    for (int w = 0; w < warps; ++w) total += smem[tid * warps + w];
  __syncthreads();
  if (tid < N) smem[tid] = total;
  __syncthreads();
}

// For a (blockDim.x, blockDim.y) block: sums v over threadIdx.y for each threadIdx.x (used when a warp
// spans channels, so the reduction runs across warps). `smem` holds blockDim.x * blockDim.y elements.
// The result is valid in the threads with threadIdx.y == 0; ends with a barrier, so smem may be reused.
template <typename T>
__device__ __forceinline__ T sum_over_y(T v, T* smem) {
  smem[threadIdx.y * blockDim.x + threadIdx.x] = v;
  __syncthreads();
  T s = T(0);
  if (threadIdx.y == 0)
    for (int y = 0; y < static_cast<int>(blockDim.y); ++y) s += smem[y * blockDim.x + threadIdx.x];
  __syncthreads();
  return s;
}

}  // namespace cuda
}  // namespace fusedops
