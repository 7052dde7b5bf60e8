// Vectorised activation epilogues for the CPU kernels (bias is added by the kernels themselves).
//
// The formulas are PyTorch's CPU ones (hardswish: x * min(max(x + 3, 0), 6) / 6; silu: x / (1 + exp(-x))), so fused
// results match the unfused modules to the last bit wherever the pre-activations do. The kind is a run-time value: an
// epilogue runs once per output vector, after a whole reduction, so the (perfectly predicted) switch costs nothing
// measurable and saves instantiating every kernel per activation.
#pragma once

#include "fusedops/activation.h"

#include <ATen/cpu/vec/vec.h>

namespace fusedops {
namespace cpu {

template <typename T>
inline at::vec::Vectorized<T> apply_activation(Activation kind, const at::vec::Vectorized<T>& v) {
  using Vec = at::vec::Vectorized<T>;
  switch (kind) {
    case Activation::kNone: return v;
    case Activation::kRelu: return at::vec::maximum(v, Vec(T(0)));
    case Activation::kRelu6: return at::vec::minimum(at::vec::maximum(v, Vec(T(0))), Vec(T(6)));
    case Activation::kHardswish:
      return v * at::vec::minimum(at::vec::maximum(v + Vec(T(3)), Vec(T(0))), Vec(T(6))) / Vec(T(6));
    case Activation::kSilu: return v / (Vec(T(1)) + v.neg().exp());
  }
  return v;
}

// Epilogue functor for depthwise_nhwc_row (whose bias is already added).
struct ActivationEpilogue {
  Activation kind;
  template <typename V>
  V operator()(const V& v) const {
    return apply_activation(kind, v);
  }
};

}  // namespace cpu
}  // namespace fusedops
