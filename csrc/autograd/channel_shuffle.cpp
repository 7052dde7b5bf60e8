// Autograd of fusedops::channel_shuffle, fusedops::concat_shuffle and fusedops::_concat_shuffle_backward
// (every device). Every gradient is another shuffle: channel_shuffle's is channel_shuffle(grad, C / groups),
// concat_shuffle's is _concat_shuffle_backward, whose own is concat_shuffle again, so gradients of any order
// exist. The Triton mirrors register the same formulas in Python (fusedops/ops/channel_shuffle.py).
#include <torch/library.h>

#include "fusedops/autograd.h"
#include "fusedops/shuffle_geometry.h"

namespace fusedops {
namespace {

using autograd::AutogradContext;
using autograd::variable_list;
using ops::Tensor;

// A channel count as a plain int: under torch.compile with dynamic shapes this specialises the
// (symbolic) channel dimension, which the int arguments of the shuffles require anyway.
int64_t channels_of(const Tensor& t) {
  return t.sym_size(1).guard_int(__FILE__, __LINE__);
}

struct ChannelShuffleFormula {
  using Op = ops::channel_shuffle;

  // After the op, which has checked groups before it is divided by.
  static void save(AutogradContext* ctx, const Tensor& /*output*/, const Tensor& input, int64_t groups) {
    const int64_t channels = channels_of(input);
    ctx->saved_data["inverse_groups"] = channels > 0 ? channels / groups : int64_t{1};
  }

  static std::array<Tensor, 1> backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    return {ops::call<ops::channel_shuffle>(grad_outputs[0], ctx->saved_data["inverse_groups"].toInt())};
  }

  // The same permutation, differentiable by functorch.
  static Tensor composite(const Tensor& input, int64_t groups) {
    channel_shuffle_geometry(input, groups);  // the kernels' checks and messages
    return at::channel_shuffle(input, groups);
  }
};

struct ConcatShuffleFormula {
  using Op = ops::concat_shuffle;

  static void save(AutogradContext* ctx, const Tensor& /*output*/, const Tensor& a, const Tensor& /*b*/,
                   int64_t groups) {
    ctx->saved_data["channels_a"] = channels_of(a);
    ctx->saved_data["groups"] = groups;
  }

  static std::array<Tensor, 2> backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    auto [grad_a, grad_b] = ops::call<ops::concat_shuffle_backward>(
        grad_outputs[0], ctx->saved_data["channels_a"].toInt(), ctx->saved_data["groups"].toInt());
    return {std::move(grad_a), std::move(grad_b)};
  }

  static Tensor composite(const Tensor& a, const Tensor& b, int64_t groups) {
    concat_shuffle_geometry(a, b, groups);
    return at::channel_shuffle(at::cat({a, b}, 1), groups);
  }
};

struct ConcatShuffleBackwardFormula {
  using Op = ops::concat_shuffle_backward;

  static void save(AutogradContext* ctx, const std::tuple<Tensor, Tensor>& /*grads*/, const Tensor& /*grad*/,
                   int64_t /*channels_a*/, int64_t groups) {
    ctx->saved_data["groups"] = groups;
  }

  static std::array<Tensor, 1> backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    return {ops::call<ops::concat_shuffle>(grad_outputs[0], grad_outputs[1], ctx->saved_data["groups"].toInt())};
  }
};

}  // namespace
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, Autograd, m) {
  using namespace fusedops;
  autograd::register_kernels<ChannelShuffleFormula, ConcatShuffleFormula, ConcatShuffleBackwardFormula>(m);
}
