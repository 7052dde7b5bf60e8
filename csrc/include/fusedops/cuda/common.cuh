// Small host/device helpers shared by the CUDA kernels.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/macros/Macros.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

namespace fusedops {
namespace cuda {

constexpr int kWarpSize = 32;

template <typename T>
C10_HOST_DEVICE constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

// Blocks for a grid-stride loop over `items` with `threads` per block. Capped (1M blocks is far past
// what fills any current GPU) so the count always fits gridDim.x; the kernels loop over the rest.
inline unsigned int grid_for(int64_t items, int threads) {
  constexpr int64_t kMaxBlocks = int64_t(1) << 20;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(ceil_div<int64_t>(items, threads), kMaxBlocks)));
}

// Streaming multiprocessors of the current device (for sizing grids that must fill the GPU). Read with
// cudaDeviceGetAttribute rather than ATen's cached device properties, whose header pulls in the cuBLAS /
// cuSPARSE headers that a minimal CUDA toolkit lacks.
inline int multiprocessor_count() {
  int device = 0, count = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

}  // namespace cuda
}  // namespace fusedops
