// Vector loads and stores that widen storage types (bfloat16, half) to their accumulation type
// (float), so one kernel template serves float, double, bfloat16 and half.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <type_traits>

// For register-blocked micro-kernels called once per block from a loop: GCC stops inlining them once a
// translation unit instantiates them from several kernels, and the out-of-line call (arguments through
// memory, weights reloaded per call) made the 3x3 stride-2 channels-last forward 1.3x slower.
#if defined(__GNUC__)
#define FUSEDOPS_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define FUSEDOPS_ALWAYS_INLINE inline
#endif

// For the row-level entry points of those micro-kernels (one call per output row of a depthwise map): inlined,
// every (kernel, stride, block, border) variant was copied into each calling kernel, once per call site. Out of
// line, csrc/cpu/dwpw_conv2d.cpp compiled in 173 s instead of 288 s (-O3, both at once on the 2-vCPU Xeon). Time
// against inlined, 1 thread, best of 40-300 calls, three alternating runs on a noisy host: channels-last
// depthwise 0.79-1.08 at N=1 (C=16..960, 7x7..112x112; C=16/32 112x112 13-21% faster), 1.00-1.12 at N=8 C=96
// 112x112 stride 2; dwpw 0.98-1.07.
#if defined(__GNUC__)
#define FUSEDOPS_NOINLINE __attribute__((noinline))
#else
#define FUSEDOPS_NOINLINE
#endif

namespace fusedops {
namespace cpu {

template <typename scalar_t>
using acc_t = at::opmath_type<scalar_t>;

template <typename scalar_t>
using AccVec = at::vec::Vectorized<acc_t<scalar_t>>;

template <typename scalar_t>
constexpr bool kSameAsAcc = std::is_same_v<scalar_t, acc_t<scalar_t>>;

// Loads AccVec::size() elements.
template <typename scalar_t>
inline AccVec<scalar_t> load_acc(const scalar_t* p) {
  if constexpr (kSameAsAcc<scalar_t>) {
    return AccVec<scalar_t>::loadu(p);
  } else {
    at::vec::Vectorized<float> v;
    at::vec::load_to_float(p, v);
    return v;
  }
}

// Loads the first `count` (< size) elements; the rest of the vector is zero. Never reads past p + count.
template <typename scalar_t>
inline AccVec<scalar_t> load_acc(const scalar_t* p, int64_t count) {
  if constexpr (kSameAsAcc<scalar_t>) {
    return AccVec<scalar_t>::loadu(p, count);
  } else {
    alignas(64) float tmp[AccVec<scalar_t>::size()] = {};
    for (int64_t i = 0; i < count; ++i) tmp[i] = static_cast<float>(p[i]);
    return AccVec<scalar_t>::loadu(tmp);
  }
}

template <typename scalar_t>
inline void store_acc(scalar_t* p, const AccVec<scalar_t>& v) {
  if constexpr (kSameAsAcc<scalar_t>) {
    v.store(p);
  } else {
    alignas(64) float tmp[AccVec<scalar_t>::size()];
    v.store(tmp);
    for (int64_t i = 0; i < AccVec<scalar_t>::size(); ++i) p[i] = static_cast<scalar_t>(tmp[i]);
  }
}

template <typename scalar_t>
inline void store_acc(scalar_t* p, const AccVec<scalar_t>& v, int64_t count) {
  if constexpr (kSameAsAcc<scalar_t>) {
    v.store(p, count);
  } else {
    alignas(64) float tmp[AccVec<scalar_t>::size()];
    v.store(tmp);
    for (int64_t i = 0; i < count; ++i) p[i] = static_cast<scalar_t>(tmp[i]);
  }
}

// Full or partial load/store chosen at compile time, so the common full-vector path carries no mask.
template <bool kPartial, typename scalar_t>
inline AccVec<scalar_t> load_n(const scalar_t* p, int64_t count) {
  if constexpr (kPartial)
    return load_acc(p, count);
  else
    return load_acc(p);
}

template <bool kPartial, typename scalar_t>
inline void store_n(scalar_t* p, const AccVec<scalar_t>& v, int64_t count) {
  if constexpr (kPartial)
    store_acc(p, v, count);
  else
    store_acc(p, v);
}

// For accumulation-type buffers (float/double), whose tails may be read in full.
template <bool kPartial, typename T>
inline at::vec::Vectorized<T> load_buf(const T* p, int64_t count) {
  if constexpr (kPartial)
    return at::vec::Vectorized<T>::loadu(p, count);
  else
    return at::vec::Vectorized<T>::loadu(p);
}

}  // namespace cpu
}  // namespace fusedops
