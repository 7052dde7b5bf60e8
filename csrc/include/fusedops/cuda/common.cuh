// Small host/device helpers shared by the CUDA kernels.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/macros/Macros.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

// Every kernel launch, dynamic shared-memory declaration and kernel registration goes through these
// macros, so that the same sources also compile with a host compiler against the test-only CPU emulation
// of the CUDA execution model (csrc/testing/cuda_emu, built with FUSEDOPS_CUDA_EMULATION: its emu.h
// defines them for the emulation).
//   FUSEDOPS_LAUNCH(grid, block, shared_bytes, stream, kernel)(args...)   kernel<<<grid, block, ...>>>(args...)
//   FUSEDOPS_DYNAMIC_SHARED(type, name);                                   extern __shared__ type name[]
//   FUSEDOPS_REGISTER_CUDA_KERNELS(m) { m.impl(...); }                     TORCH_LIBRARY_IMPL(fusedops, CUDA, m)
// The kernel comes last so that a template-id with commas needs no parentheses.
#ifdef FUSEDOPS_CUDA_EMULATION
#include "fusedops_cuda_emu/emu.h"
#else
#define FUSEDOPS_LAUNCH(grid, block, shared_bytes, stream, ...) __VA_ARGS__<<<grid, block, shared_bytes, stream>>>
#define FUSEDOPS_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#define FUSEDOPS_REGISTER_CUDA_KERNELS(m) TORCH_LIBRARY_IMPL(fusedops, CUDA, m)
#endif

namespace fusedops {
namespace cuda {

constexpr int kWarpSize = 32;

// Whether tensor `t` is on the device these kernels run on: a CUDA device (a CPU tensor under the
// emulation). The host logic around the kernels is otherwise the same in both builds.
template <typename TensorT>
inline bool on_kernel_device(const TensorT& t) {
#ifdef FUSEDOPS_CUDA_EMULATION
  return t.is_cpu();
#else
  return t.is_cuda();
#endif
}

// A 4-D tensor's strides in elements, (N, C, H, W) order whatever its layout: the kernels address their tensors
// through them. All zero for an undefined tensor (an absent optional argument).
struct Strides4 {
  int64_t n = 0, c = 0, h = 0, w = 0;
};

template <typename TensorT>
inline Strides4 strides4(const TensorT& t) {
  return t.defined() ? Strides4{t.stride(0), t.stride(1), t.stride(2), t.stride(3)} : Strides4{};
}

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
