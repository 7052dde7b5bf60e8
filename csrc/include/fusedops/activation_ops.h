// The activations of the fused ops as ATen ops (any device), for the backwards that recompute with ATen and for
// the functorch composites. Implemented in csrc/shared/activation_ops.cpp.
#pragma once

#include "fusedops/activation.h"

#include <ATen/ATen.h>

namespace fusedops {

// act(z), differentiable.
at::Tensor activation_forward(const at::Tensor& z, Activation a);

// act(z) in place on z (a temporary of the caller's).
at::Tensor activation_forward_(at::Tensor& z, Activation a);

// grad * act'(z), with PyTorch's conventions at the kinks, written into `out` (a temporary that may be `grad` or
// `z` itself: elementwise, so aliasing is safe) to keep one buffer fewer alive. For relu and relu6, act(z) may
// stand for z: their derivative reads the same from either.
at::Tensor activation_backward_into(at::Tensor out, const at::Tensor& grad, const at::Tensor& z, Activation a);

}  // namespace fusedops
