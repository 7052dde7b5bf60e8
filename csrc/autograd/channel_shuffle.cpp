// Autograd kernels of fusedops::channel_shuffle, fusedops::concat_shuffle and
// fusedops::_concat_shuffle_backward (every device). Every gradient is another shuffle:
// channel_shuffle's is channel_shuffle(grad, C / groups), concat_shuffle's is _concat_shuffle_backward,
// whose own is concat_shuffle again, so gradients of any order exist. The Triton mirrors register the same
// formulas in Python (fusedops/ops/channel_shuffle.py).
#include <torch/library.h>

#include "fusedops/autograd.h"
#include "fusedops/shuffle_geometry.h"

namespace fusedops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_channel_shuffle(const at::Tensor& input, int64_t groups) {
  static const auto op = autograd::find_op<at::Tensor(const at::Tensor&, int64_t)>("fusedops::channel_shuffle");
  return op.call(input, groups);
}

at::Tensor call_concat_shuffle(const at::Tensor& a, const at::Tensor& b, int64_t groups) {
  static const auto op =
      autograd::find_op<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>("fusedops::concat_shuffle");
  return op.call(a, b, groups);
}

std::tuple<at::Tensor, at::Tensor> call_concat_shuffle_backward(const at::Tensor& grad, int64_t channels_a,
                                                                int64_t groups) {
  static const auto op = autograd::find_op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t, int64_t)>(
      "fusedops::_concat_shuffle_backward");
  return op.call(grad, channels_a, groups);
}

// A channel count as a plain int: under torch.compile with dynamic shapes this specialises the
// (symbolic) channel dimension, which the int arguments of the shuffles require anyway.
int64_t channels_of(const at::Tensor& t) {
  return t.sym_size(1).guard_int(__FILE__, __LINE__);
}

class ChannelShuffleFunction : public torch::autograd::Function<ChannelShuffleFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, int64_t groups) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor output = call_channel_shuffle(input, groups);  // checks groups before it is divided by
    const int64_t channels = channels_of(input);
    ctx->saved_data["inverse_groups"] = channels > 0 ? channels / groups : int64_t{1};
    return output;
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    return {call_channel_shuffle(grad_outputs[0], ctx->saved_data["inverse_groups"].toInt()), at::Tensor()};
  }
};

class ConcatShuffleFunction : public torch::autograd::Function<ConcatShuffleFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& a, const at::Tensor& b, int64_t groups) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor output = call_concat_shuffle(a, b, groups);
    ctx->saved_data["channels_a"] = channels_of(a);
    ctx->saved_data["groups"] = groups;
    return output;
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    auto [grad_a, grad_b] = call_concat_shuffle_backward(grad_outputs[0], ctx->saved_data["channels_a"].toInt(),
                                                         ctx->saved_data["groups"].toInt());
    return {grad_a, grad_b, at::Tensor()};
  }
};

class ConcatShuffleBackwardFunction : public torch::autograd::Function<ConcatShuffleBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad, int64_t channels_a, int64_t groups) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [grad_a, grad_b] = call_concat_shuffle_backward(grad, channels_a, groups);
    ctx->saved_data["groups"] = groups;
    return {grad_a, grad_b};
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    return {call_concat_shuffle(grad_outputs[0], grad_outputs[1], ctx->saved_data["groups"].toInt()), at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor channel_shuffle_autograd(const at::Tensor& input, int64_t groups) {
  if (!autograd::records_graph(input)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_channel_shuffle(input, groups);
  }
  if (autograd::inside_functorch_transform()) {  // the same permutation, differentiable by functorch
    channel_shuffle_geometry(input, groups);        // the kernels' checks and messages
    return at::channel_shuffle(input, groups);
  }
  return ChannelShuffleFunction::apply(input, groups);
}

at::Tensor concat_shuffle_autograd(const at::Tensor& a, const at::Tensor& b, int64_t groups) {
  if (!autograd::records_graph(a, b)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_concat_shuffle(a, b, groups);
  }
  if (autograd::inside_functorch_transform()) {
    concat_shuffle_geometry(a, b, groups);
    return at::channel_shuffle(at::cat({a, b}, 1), groups);
  }
  return ConcatShuffleFunction::apply(a, b, groups);
}

std::tuple<at::Tensor, at::Tensor> concat_shuffle_backward_autograd(const at::Tensor& grad, int64_t channels_a,
                                                                    int64_t groups) {
  if (!autograd::records_graph(grad)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_concat_shuffle_backward(grad, channels_a, groups);
  }
  auto grads = ConcatShuffleBackwardFunction::apply(grad, channels_a, groups);
  return {grads[0], grads[1]};
}

}  // namespace
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, Autograd, m) {
  m.impl("channel_shuffle", &fusedops::channel_shuffle_autograd);
  m.impl("concat_shuffle", &fusedops::concat_shuffle_autograd);
  m.impl("_concat_shuffle_backward", &fusedops::concat_shuffle_backward_autograd);
}
