// Argument checks and the device-independent pieces of fusedops::shufflenet_v2_unit, ShuffleNetV2's unit with its
// batch norms folded in (implemented in csrc/shared/shufflenet_v2_unit.cpp):
//
//   branch(x)   = act(conv1x1(depthwise(act(conv1x1(x, expand_weight) + expand_bias), dw_weight) + dw_bias,
//                             project_weight) + project_bias)
//   shortcut(x) = act(conv1x1(depthwise(x, shortcut_dw_weight) + shortcut_dw_bias, shortcut_pw_weight)
//                     + shortcut_pw_bias)
//   first, second = x1, branch(x2) with x1, x2 = input.chunk(2, 1)   (without the shortcut's weights)
//                   shortcut(input), branch(input)                   (with them: the down-sampling unit)
//   output[:, 2c] = first[:, c], output[:, 2c + 1] = second[:, c]    (cat, then channel_shuffle with 2 groups)
#pragma once

#include "fusedops/inverted_residual.h"

#include <ATen/ATen.h>

#include <array>
#include <string_view>

namespace fusedops {

// Gradients of input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
// shortcut_dw_weight, shortcut_dw_bias, shortcut_pw_weight, shortcut_pw_bias: InvertedResidualGrads' types.
using ShuffleUnitGrads = InvertedResidualGrads;
inline constexpr size_t kShuffleUnitGradients = 11;

// The shortcut's arguments of a shufflenet_v2_unit call, as the schema passes them (references to them: valid
// while they are); the unit has no shortcut without dw_weight.
struct ShuffleShortcutArgs {
  const c10::optional<at::Tensor>& dw_weight;
  const c10::optional<at::Tensor>& dw_bias;
  const c10::optional<at::Tensor>& pw_weight;
  const c10::optional<at::Tensor>& pw_bias;
};

struct ShuffleUnitGeometry {
  InvertedResidualGeometry branch;  // the branch as an inverted residual of the branch's input (branch_input)
  BlockActivations branch_activations;
  bool shortcut = false;  // the down-sampling unit: shortcut(input) instead of the input's first half
  Activation activation = Activation::kNone;
  int64_t in_channels = 0;
  int64_t branch_channels = 0;  // B: each half's channels; the output has 2 * B

  // The channels of the input the branch reads: the second half without the shortcut, all of them with it.
  int64_t branch_first_channel() const {
    return shortcut ? 0 : in_channels - branch.in_channels;
  }
};

// The branch's input: the input's second half of channels (a view) without the shortcut, the input with it.
at::Tensor branch_input(const at::Tensor& input, const ShuffleUnitGeometry& geo);

// Validates a shufflenet_v2_unit call; errors name the offending argument (expand_weight, shortcut_dw_weight, ...).
ShuffleUnitGeometry shufflenet_v2_unit_geometry(
    const at::Tensor& input, const at::Tensor& expand_weight, const c10::optional<at::Tensor>& expand_bias,
    const at::Tensor& dw_weight, const c10::optional<at::Tensor>& dw_bias, const at::Tensor& project_weight,
    const c10::optional<at::Tensor>& project_bias, const ShuffleShortcutArgs& shortcut, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, std::string_view activation);

// The shortcut's output act(pw(dw(input))) through fusedops::dwpw_conv2d, in the input's memory format.
at::Tensor shuffle_shortcut(const at::Tensor& input, const ShuffleShortcutArgs& shortcut, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, const ShuffleUnitGeometry& geo);

// The forward as the branch's composed block (block_composed: ATen's 1x1 convolution, then fusedops::dwpw_conv2d),
// the shortcut through fusedops::dwpw_conv2d, and the two halves interleaved into the output: the path of
// backends without a fused kernel of the whole unit.
at::Tensor shufflenet_v2_unit_composed(const at::Tensor& input, const at::Tensor& expand_weight,
                                       const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight,
                                       const c10::optional<at::Tensor>& dw_bias, const at::Tensor& project_weight,
                                       const c10::optional<at::Tensor>& project_bias,
                                       const ShuffleShortcutArgs& shortcut, at::IntArrayRef stride,
                                       at::IntArrayRef padding, at::IntArrayRef dilation, std::string_view activation);

// Gradients (ShuffleUnitGrads' order) of shufflenet_v2_unit on any device: the output gradient's odd channels go
// through the branch's recomputed backward (block_backward_recomputed), its even ones to the input's first half or
// through the shortcut's dwpw backward. Unwanted gradients are empty tensors.
ShuffleUnitGrads shufflenet_v2_unit_backward_recomputed(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& expand_weight,
    const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight, const c10::optional<at::Tensor>& dw_bias,
    const at::Tensor& project_weight, const c10::optional<at::Tensor>& project_bias,
    const ShuffleShortcutArgs& shortcut, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    std::string_view activation, std::array<bool, kShuffleUnitGradients> output_mask, int64_t band_elements);

}  // namespace fusedops
