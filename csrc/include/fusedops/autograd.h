// Helpers shared by the C++ autograd kernels (csrc/autograd/<op>.cpp).
//
// An op's Autograd kernel is a torch::autograd::Function whose forward calls the op below the autograd
// layer (so the CPU/CUDA kernel runs) and whose backward calls the op's backward op through the
// dispatcher. Written in C++ rather than with torch.library.register_autograd, it saves ~40 us of
// Python per training step (measured on a 1x384x14x14 depthwise conv: 99 us a step with the Python
// registration, of which the forward and backward kernels take 51).
#pragma once

#include <ATen/FuncTorchTLS.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <initializer_list>
#include <optional>
#include <string_view>

namespace fusedops::autograd {

inline bool requires_grad(const at::Tensor& t) {
  return t.defined() && t.requires_grad();
}
inline bool requires_grad(const std::optional<at::Tensor>& t) {
  return t.has_value() && requires_grad(*t);
}

// Whether autograd has a graph to record for a call on these tensor arguments: grad mode on and one of them
// requiring grad. When it has none (inference under no_grad, frozen layers), the Autograd kernels call the op
// below the autograd layer themselves: Function::apply costs ~1.2 us even then (a 1x192x7x7 channel_shuffle
// took 4.1 us a call through it, 2.9 us without).
template <typename... Tensors>
bool records_graph(const Tensors&... tensors) {
  return at::GradMode::is_enabled() && (requires_grad(tensors) || ...);
}

// Whether a functorch transform (torch.func.grad, vjp, jacrev, vmap, ...) is active on this thread.
// functorch refuses a C++ torch::autograd::Function inside its transforms, so there the Autograd kernels
// compute the op as a composition of differentiable ATen ops instead (same values, PyTorch's speed),
// which every transform supports. functorch says so only by raising; outside transforms (every ordinary
// call) this is one virtual call, and none at all in a process that never used functorch.
inline bool inside_functorch_transform() {
  const auto& tls = at::functorch::functorchTLSAccessor();
  if (!tls) return false;
  try {
    tls->checkSupportsCppAutogradFunction();
    return false;
  } catch (const c10::Error&) {
    return true;
  }
}

// The typed handle of op `name` ("fusedops::<op>"), looked up once per call site.
template <class Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Raised by the backward of a backward op (ops without a derivative of their own): reached only when a
// gradient computed with create_graph=True is differentiated again.
[[noreturn]] inline void double_backward_unsupported(const char* forward_name) {
  TORCH_CHECK(false, "fusedops: double backward (higher-order gradients) of ", forward_name,
              " is not supported; use the 'reference' backend (fusedops.use_backend('reference')) for higher-order "
              "gradients");
}

// Whether the argument at position `arg` of the forward (counting tensors only, optional ones included
// whether present or not) needs a gradient. torch's AutogradContext numbers only the tensors that were
// given, so an absent optional tensor shifts the positions after it; `present` lists, for every tensor
// argument in order, whether it was given.
inline bool needs_grad(const torch::autograd::AutogradContext* ctx, std::initializer_list<bool> present,
                       size_t arg) {
  size_t edge = 0;
  size_t position = 0;
  for (bool given : present) {
    if (position == arg) {
      return given && ctx->needs_input_grad(edge);
    }
    edge += given ? 1 : 0;
    ++position;
  }
  return false;
}

}  // namespace fusedops::autograd
