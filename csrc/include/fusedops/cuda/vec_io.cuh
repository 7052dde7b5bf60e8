// Vectorised global-memory loads and stores that widen storage types (half, bfloat16) to their
// accumulation type, so one kernel template serves float, double, half and bfloat16.
//
// A Pack<T, N> is N consecutive elements aligned to their total size, so loading one compiles to a
// single 8- or 16-byte transaction per thread (LDG.64 / LDG.128) instead of N narrow ones. The caller
// guarantees the alignment (see is_aligned) — e.g. channels-last tensors whose channel count is a
// multiple of N and whose base pointer is aligned.
#pragma once

#include <c10/macros/Macros.h>

#include "fusedops/cuda/common.cuh"

#include <cstddef>
#include <cstdint>

namespace fusedops {
namespace cuda {

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// True when `p` may be accessed as Pack<T, N> (host side check before choosing a vectorised kernel).
template <typename T, int N>
inline bool is_aligned(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % (sizeof(T) * N) == 0;
}

// out[i] = acc(p[i]) for i < N; p aligned to sizeof(T) * N.
template <int N, typename T, typename acc_t>
__device__ __forceinline__ void load_acc(const T* __restrict__ p, acc_t (&out)[N]) {
  const Pack<T, N> pk = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = static_cast<acc_t>(pk.v[i]);
}

// p[i] = T(in[i]) for i < N; p aligned to sizeof(T) * N.
template <int N, typename T, typename acc_t>
__device__ __forceinline__ void store_from_acc(T* __restrict__ p, const acc_t (&in)[N]) {
  Pack<T, N> pk;
#pragma unroll
  for (int i = 0; i < N; ++i) pk.v[i] = static_cast<T>(in[i]);
  *reinterpret_cast<Pack<T, N>*>(p) = pk;
}

template <int N, typename acc_t>
__device__ __forceinline__ void fill(acc_t (&a)[N], acc_t value) {
#pragma unroll
  for (int i = 0; i < N; ++i) a[i] = value;
}

}  // namespace cuda
}  // namespace fusedops
