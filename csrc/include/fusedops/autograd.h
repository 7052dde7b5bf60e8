// The C++ autograd kernels (csrc/autograd/<op>.cpp), written once: an op's autograd file gives its formula
// (what the backward needs, the backward itself, the functorch composite) and registers Kernel<Formula>::run.
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
#include <torch/library.h>

#include "fusedops/ops.h"

#include <array>
#include <cstddef>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace fusedops::autograd {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Non-tensor arguments (ints, lists, strings) never require grad.
template <typename T>
  requires(!std::is_convertible_v<const T&, const at::Tensor&>)
constexpr bool requires_grad(const T&) {
  return false;
}
inline bool requires_grad(const at::Tensor& t) {
  return t.defined() && t.requires_grad();
}
inline bool requires_grad(const std::optional<at::Tensor>& t) {
  return t.has_value() && requires_grad(*t);
}

// Whether autograd has a graph to record for a call on these arguments: grad mode on and one of the tensors
// requiring grad. When it has none (inference under no_grad, frozen layers), the Autograd kernels call the op
// below the autograd layer themselves: Function::apply costs ~1.2 us even then (a 1x192x7x7 channel_shuffle
// took 4.1 us a call through it, 2.9 us without).
template <typename... Arguments>
bool records_graph(const Arguments&... arguments) {
  return at::GradMode::is_enabled() && (requires_grad(arguments) || ...);
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

// The error of differentiating a backward op (reached only when a gradient computed with create_graph=True
// is differentiated again), "{op}" standing for the forward op's name. The Triton mirrors raise the same
// text from Python, which reads it through fusedops._C._shared_facts().
inline constexpr std::string_view kDoubleBackwardMessage =
    "fusedops: double backward (higher-order gradients) of {op} is not supported; use the 'reference' backend "
    "(fusedops.use_backend('reference')) for higher-order gradients";

[[noreturn]] inline void double_backward_unsupported(std::string_view forward_name) {
  constexpr std::string_view placeholder = "{op}";
  const size_t where = kDoubleBackwardMessage.find(placeholder);
  std::string message(kDoubleBackwardMessage.substr(0, where));
  message.append(forward_name).append(kDoubleBackwardMessage.substr(where + placeholder.size()));
  TORCH_CHECK(false, message);
}

// Which of the first N tensor arguments of the forward (optional ones counted whether given or not) need a
// gradient. torch's AutogradContext numbers only the tensors that were given, so an absent optional tensor
// shifts the positions after it; `present` lists, for every tensor argument in order, whether it was given.
template <size_t N>
std::array<bool, N> needs_grads(const AutogradContext* ctx, std::initializer_list<bool> present) {
  std::array<bool, N> mask{};
  size_t edge = 0;
  size_t position = 0;
  for (bool given : present) {
    if (position == N) break;
    mask[position++] = given && ctx->needs_input_grad(edge);
    edge += given ? 1 : 0;
  }
  return mask;
}

// An optional tensor argument back from a saved tensor (undefined: the argument was not given).
inline std::optional<at::Tensor> present(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// The gradients a backward op returned where mask asks for them, undefined elsewhere (the op returns empty
// tensors for the gradients nobody asked for).
template <size_t N, typename... T>
std::array<at::Tensor, N> masked(const std::array<bool, N>& mask, std::tuple<T...>&& grads) {
  static_assert(sizeof...(T) == N);
  return [&]<size_t... I>(std::index_sequence<I...>) {
    return std::array<at::Tensor, N>{(mask[I] ? std::move(std::get<I>(grads)) : at::Tensor())...};
  }(std::make_index_sequence<N>{});
}

namespace detail {

// What the Function's forward returns for an op result: the tensor, or a list of the tensors.
inline at::Tensor to_node_output(at::Tensor&& result) {
  return std::move(result);
}
template <typename... T>
variable_list to_node_output(std::tuple<T...>&& result) {
  return std::apply([](auto&&... t) { return variable_list{std::move(t)...}; }, std::move(result));
}

// And back, from what Function::apply returns.
template <typename Result>
Result from_node_output(at::Tensor&& output) {
  return std::move(output);
}
template <typename Result>
Result from_node_output(variable_list&& outputs) {
  return [&]<size_t... I>(std::index_sequence<I...>) {
    return Result{std::move(outputs[I])...};
  }(std::make_index_sequence<std::tuple_size_v<Result>>{});
}

template <typename Formula, typename... Args>
concept HasComposite = requires(Args... args) { Formula::composite(args...); };

// The strides of a forward argument that requires grad, which its gradient is given (with_strides); None for the
// other arguments.
inline at::IValue gradient_strides(const at::Tensor& t) {
  return requires_grad(t) ? at::IValue(t.strides().vec()) : at::IValue();
}
inline at::IValue gradient_strides(const std::optional<at::Tensor>& t) {
  return t.has_value() ? gradient_strides(*t) : at::IValue();
}
template <typename T>
  requires(!std::is_convertible_v<const T&, const at::Tensor&> &&
           !std::is_convertible_v<const T&, const std::optional<at::Tensor>&>)
at::IValue gradient_strides(const T&) {
  return at::IValue();
}

// `grad` with exactly its argument's `strides` (gradient_strides) where the two lay out the same elements, that is
// where they differ only in the strides of size-1 dimensions (a channels_last (C, 1, kH, kW) depthwise weight, an
// (O, I, 1, 1) pointwise one): a view, no copy. PyTorch's gradient layout contract ignores those strides, but
// DistributedDataParallel compares every stride of a gradient with its bucket's view of the parameter and warns
// ("Grad strides do not match bucket view strides") and copies otherwise.
inline at::Tensor with_strides(at::Tensor grad, const at::IValue& strides) {
  if (!grad.defined() || strides.isNone()) return grad;
  const std::vector<int64_t> wanted = strides.toIntVector();
  if (grad.dim() != static_cast<int64_t>(wanted.size()) || grad.strides().vec() == wanted) return grad;
  for (int64_t d = 0; d < grad.dim(); ++d) {
    if (grad.size(d) != 1 && grad.stride(d) != wanted[d]) return grad;
  }
  return grad.as_strided(grad.sizes(), wanted, grad.storage_offset());
}

// gradient_strides of every forward argument, kept in the Function's saved_data under kGradientStrides.
inline constexpr const char* kGradientStrides = "fusedops_gradient_strides";
template <typename... Args>
at::IValue gradient_strides_of(const Args&... args) {
  c10::impl::GenericList strides(c10::AnyType::get());
  (strides.push_back(gradient_strides(args)), ...);
  return strides;
}

}  // namespace detail

// The Autograd kernel of op Formula::Op, from its formula:
//
//   using Op = ops::<op>;  // the op (fusedops/ops.h)
//   // What the backward needs, from the op's result and arguments (called right after the op has run).
//   static void save(AutogradContext* ctx, const Result& result, Args... args);
//   // The gradients of the first N arguments (N at most the argument count; the others get none).
//   static std::array<at::Tensor, N> backward(AutogradContext* ctx, const variable_list& grad_outputs);
//   // Optional: the op as differentiable ATen ops after the kernels' checks, run inside functorch
//   // transforms (inside_functorch_transform). Without it the Function runs there too, and functorch refuses it.
//   static Result composite(Args... args);
//
// Kernel<Formula>::run steps below autograd when nothing records a graph (records_graph), else runs the
// composite inside functorch transforms, else the Function (Kernel<Formula>::Node).
template <typename Formula, typename Signature = typename Formula::Op::Signature>
struct Kernel;

template <typename Formula, typename Result, typename... Args>
struct Kernel<Formula, Result(Args...)> {
  using Op = typename Formula::Op;
  using NodeOutput = std::conditional_t<std::is_same_v<Result, at::Tensor>, at::Tensor, variable_list>;

  class Node : public torch::autograd::Function<Node> {
   public:
    static NodeOutput forward(AutogradContext* ctx, Args... args) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      Result result = ops::call<Op>(args...);
      Formula::save(ctx, result, args...);
      ctx->saved_data[detail::kGradientStrides] = detail::gradient_strides_of(args...);
      return detail::to_node_output(std::move(result));
    }

    static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
      auto grads = Formula::backward(ctx, grad_outputs);
      static_assert(std::tuple_size_v<decltype(grads)> <= sizeof...(Args));
      // One entry per forward argument; those of the arguments without a gradient stay undefined.
      variable_list result(sizeof...(Args));
      const auto strides = ctx->saved_data[detail::kGradientStrides].toListRef();
      for (size_t i = 0; i < grads.size(); ++i) result[i] = detail::with_strides(std::move(grads[i]), strides[i]);
      return result;
    }
  };

  static Result run(Args... args) {
    if (!records_graph(args...)) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      return ops::call<Op>(args...);
    }
    if constexpr (detail::HasComposite<Formula, Args...>) {
      if (inside_functorch_transform()) return Formula::composite(args...);
    }
    return detail::from_node_output<Result>(Node::apply(args...));
  }
};

// The formula of a backward op without a derivative of its own: it saves nothing, and differentiating it
// raises the double-backward error naming ForwardOp.
template <typename BackwardOp, typename ForwardOp>
struct WithoutDerivative {
  using Op = BackwardOp;
  template <typename... T>
  static void save(AutogradContext*, const T&...) {}
  [[noreturn]] static std::array<at::Tensor, 0> backward(AutogradContext*, const variable_list&) {
    double_backward_unsupported(ops::unqualified_name<ForwardOp>());
  }
};

// Registers Kernel<Formula>::run as the Autograd kernel of each Formula::Op.
template <typename... Formulas>
void register_kernels(torch::Library& m) {
  (m.impl(Formulas::Op::name, &Kernel<Formulas>::run), ...);
}

}  // namespace fusedops::autograd
