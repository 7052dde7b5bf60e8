// The activations as ATen ops, declared in fusedops/activation_ops.h.
#include "fusedops/activation_ops.h"

namespace fusedops {

at::Tensor activation_forward(const at::Tensor& z, Activation a) {
  switch (a) {
    case Activation::kNone: return z;
    case Activation::kRelu: return at::relu(z);
    case Activation::kRelu6: return at::hardtanh(z, 0, 6);
    case Activation::kHardswish: return at::hardswish(z);
    case Activation::kSilu: return at::silu(z);
  }
  return z;
}

at::Tensor activation_forward_(at::Tensor& z, Activation a) {
  switch (a) {
    case Activation::kNone: return z;
    case Activation::kRelu: return at::relu_(z);
    case Activation::kRelu6: return at::hardtanh_(z, 0, 6);
    case Activation::kHardswish: return at::hardswish_(z);
    case Activation::kSilu: return at::silu_(z);
  }
  return z;
}

at::Tensor activation_backward_into(at::Tensor out, const at::Tensor& grad, const at::Tensor& z, Activation a) {
  switch (a) {
    case Activation::kNone: return out.is_same(grad) ? out : out.copy_(grad);
    case Activation::kRelu: return at::threshold_backward_out(out, grad, z, 0);
    case Activation::kRelu6: return at::hardtanh_backward_out(out, grad, z, 0, 6);
    case Activation::kHardswish: return at::hardswish_backward_out(out, grad, z);
    case Activation::kSilu: return at::silu_backward_out(out, grad, z);
  }
  return out;
}

}  // namespace fusedops
