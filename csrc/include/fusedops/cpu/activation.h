// Vectorised activations for the CPU kernels (bias is added by the kernels themselves), and their backward.
//
// The formulas are PyTorch's CPU ones (hardswish: x * min(max(x + 3, 0), 6) / 6; silu: x / (1 + exp(-x))), so fused
// results match the unfused modules to the last bit wherever the pre-activations do. The kind is a run-time value: an
// epilogue runs once per output vector, after a whole reduction, so the (perfectly predicted) switch costs nothing
// measurable and saves instantiating every kernel per activation. Elementwise passes, which do little else per
// vector, take it as a compile-time constant instead (with_activation).
#pragma once

#include "fusedops/activation.h"

#include <ATen/cpu/vec/vec.h>

#include <type_traits>

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

// The activation's backward: g times the derivative at b (the activation's input), PyTorch's vectorised CPU
// backward formulas.
template <typename T>
inline at::vec::Vectorized<T> activation_backward(Activation kind, const at::vec::Vectorized<T>& g,
                                                  const at::vec::Vectorized<T>& b) {
  using Vec = at::vec::Vectorized<T>;
  const Vec zero(T(0));
  switch (kind) {
    case Activation::kNone: return g;
    case Activation::kRelu: return Vec::blendv(zero, g, b > zero);
    case Activation::kRelu6: return Vec::blendv(zero, g, (b > zero) & (b < Vec(T(6))));
    case Activation::kHardswish:
      return Vec::blendv(Vec::blendv(g * (b / Vec(T(3)) + Vec(T(0.5))), g, b >= Vec(T(3))), zero, b < Vec(T(-3)));
    case Activation::kSilu: {
      const Vec one(T(1));
      const Vec sigmoid = one / (one + b.neg().exp());
      return g * sigmoid * (one + b * (one - sigmoid));
    }
  }
  return g;
}

// f(std::integral_constant<Activation, kind>{}): the activation a compile-time constant, for loops that apply it to
// every element (unlike an epilogue's, their per-vector switch is not free).
template <typename F>
decltype(auto) with_activation(Activation kind, const F& f) {
  switch (kind) {
    case Activation::kRelu: return f(std::integral_constant<Activation, Activation::kRelu>{});
    case Activation::kRelu6: return f(std::integral_constant<Activation, Activation::kRelu6>{});
    case Activation::kHardswish: return f(std::integral_constant<Activation, Activation::kHardswish>{});
    case Activation::kSilu: return f(std::integral_constant<Activation, Activation::kSilu>{});
    case Activation::kNone: break;
  }
  return f(std::integral_constant<Activation, Activation::kNone>{});
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
