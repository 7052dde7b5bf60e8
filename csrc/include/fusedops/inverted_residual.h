// Argument checks and the device-independent pieces of fusedops::inverted_residual, the inverted-residual block
// of MobileNetV2/V3 and EfficientNet with its batch norms folded in (implemented in
// csrc/shared/inverted_residual.cpp):
//
//   hidden = act(conv1x1(input, expand_weight) + expand_bias)         (input itself without expand_weight)
//   mid    = act(depthwise(hidden, dw_weight, stride, padding, dilation) + dw_bias)
//   [mid   = mid * gate(conv1x1(se_act(conv1x1(mean_hw(mid), se_reduce_weight) + se_reduce_bias),
//                               se_expand_weight) + se_expand_bias)]   (squeeze-excitation, with se_reduce_weight)
//   output = conv1x1(mid, project_weight) + project_bias  [+ input when residual]
#pragma once

#include "fusedops/activation.h"
#include "fusedops/conv_geometry.h"
#include "fusedops/schema_str.h"

#include <ATen/ATen.h>

#include <array>
#include <string_view>
#include <tuple>

namespace fusedops {

// Gradients of input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
// se_reduce_weight, se_reduce_bias, se_expand_weight, se_expand_bias.
using InvertedResidualGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                         at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
inline constexpr size_t kInvertedResidualGradients = 11;

// The gate of a squeeze-excitation: sigmoid (EfficientNet) or hardsigmoid, relu6(x + 3) / 6 (MobileNetV3).
enum class Gate : int { kHardsigmoid = 0, kSigmoid = 1 };

// Parses a gate name ("hardsigmoid" or "sigmoid"); `argument` names the schema argument in the error.
Gate parse_gate(std::string_view name, const char* argument);

// The squeeze-excitation arguments of an inverted_residual call, as the schema passes them; there is no
// squeeze-excitation without reduce_weight.
struct SqueezeExcitationArgs {
  const c10::optional<at::Tensor>& reduce_weight;
  const c10::optional<at::Tensor>& reduce_bias;
  const c10::optional<at::Tensor>& expand_weight;
  const c10::optional<at::Tensor>& expand_bias;
  std::string_view activation, gate;
};

// The schema's squeeze-excitation arguments (references to them: valid while they are).
inline SqueezeExcitationArgs squeeze_excitation_args(const c10::optional<at::Tensor>& reduce_weight,
                                                     const c10::optional<at::Tensor>& reduce_bias,
                                                     const c10::optional<at::Tensor>& expand_weight,
                                                     const c10::optional<at::Tensor>& expand_bias,
                                                     c10::string_view activation, c10::string_view gate) {
  return {reduce_weight, reduce_bias, expand_weight, expand_bias, std_view(activation), std_view(gate)};
}

// The arguments of a block without a squeeze-excitation.
const SqueezeExcitationArgs& no_squeeze_excitation();

// A squeeze-excitation's reduced channels (0 without one: no se_reduce_weight), activation and gate.
struct SqueezeExcitationGeometry {
  int64_t channels = 0;
  Activation activation = Activation::kRelu;
  Gate gate = Gate::kHardsigmoid;
};

// Validates the squeeze-excitation arguments of a call on `input` whose squeeze-excitation gates `channels` channels
// (`gated` describes them in errors, e.g. "the depthwise stage's channels"); errors name the argument.
SqueezeExcitationGeometry squeeze_excitation_geometry(const at::Tensor& input, const SqueezeExcitationArgs& se,
                                                      int64_t channels, const char* gated);

struct InvertedResidualGeometry {
  ConvGeometry dw;  // the depthwise stage, on the expanded map (dw.channels = dw.out_channels = hidden)
  int64_t in_channels = 0, hidden = 0, out_channels = 0;
  bool expand = false;    // expand_weight given
  bool residual = false;  // the input is added to the output
  Activation activation = Activation::kNone;
  int64_t se_channels = 0;  // the squeeze-excitation's reduced channels; 0 without one
  Activation se_activation = Activation::kRelu;
  Gate se_gate = Gate::kHardsigmoid;
};

// The activations after a block's three stages: an inverted residual's are (activation, activation, none), a
// ShuffleNetV2 branch's (activation, none, activation).
struct BlockActivations {
  Activation expand = Activation::kNone, depthwise = Activation::kNone, project = Activation::kNone;
};

inline BlockActivations inverted_residual_activations(const InvertedResidualGeometry& geo) {
  return {geo.activation, geo.activation, Activation::kNone};
}

// Validates an inverted_residual call; errors name the offending argument (expand_weight, residual, ...).
InvertedResidualGeometry inverted_residual_geometry(
    const at::Tensor& input, const c10::optional<at::Tensor>& expand_weight,
    const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight, const c10::optional<at::Tensor>& dw_bias,
    const at::Tensor& project_weight, const c10::optional<at::Tensor>& project_bias, const SqueezeExcitationArgs& se,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, std::string_view activation,
    bool residual);

// The squeeze-excitation's gate (N, hidden) of the depthwise stage's output `mid` (N, hidden, H, W), as ATen ops
// (any device, differentiable).
at::Tensor squeeze_excitation_gate(const at::Tensor& mid, const SqueezeExcitationArgs& se,
                                   const InvertedResidualGeometry& geo);

// The expanded map act(conv1x1(input, expand_weight) + expand_bias) as ATen ops (any device), in the input's
// memory format.
at::Tensor inverted_residual_expand(const at::Tensor& input, const at::Tensor& expand_weight,
                                    const c10::optional<at::Tensor>& expand_bias, Activation activation);

// The forward as the expand stage (ATen's 1x1 convolution) followed by fusedops::dwpw_conv2d for the depthwise and
// project stages, then the residual add: the path of backends without a fused kernel of the whole block. With a
// squeeze-excitation, the depthwise stage (fusedops::depthwise_conv2d) writes its output, whose gate is computed
// (squeeze_excitation_gate) and applied before the project stage (ATen's 1x1 convolution).
at::Tensor inverted_residual_composed(const at::Tensor& input, const c10::optional<at::Tensor>& expand_weight,
                                      const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight,
                                      const c10::optional<at::Tensor>& dw_bias, const at::Tensor& project_weight,
                                      const c10::optional<at::Tensor>& project_bias, const SqueezeExcitationArgs& se,
                                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                      std::string_view activation, bool residual);

// inverted_residual_composed for a block of checked geometry `geo` whose stages end in `acts` (no residual add).
at::Tensor block_composed(const at::Tensor& input, const c10::optional<at::Tensor>& expand_weight,
                          const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight,
                          const c10::optional<at::Tensor>& dw_bias, const at::Tensor& project_weight,
                          const c10::optional<at::Tensor>& project_bias, const SqueezeExcitationArgs& se,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                          const InvertedResidualGeometry& geo, const BlockActivations& acts);

// Gradients (InvertedResidualGrads' order) of inverted_residual on any device: the expanded map is recomputed
// from the input (the forward keeps nothing else); without a squeeze-excitation the depthwise and project stages
// go through the band-wise dwpw backward (which recomputes the depthwise output band by band), with one the
// depthwise output is recomputed whole (the gate needs all of it; squeeze-excitation sits at the late, small
// maps); the expand stage goes through ATen's 1x1 convolution backward. Unwanted gradients are empty tensors.
InvertedResidualGrads inverted_residual_backward_recomputed(
    const at::Tensor& grad_output, const at::Tensor& input, const c10::optional<at::Tensor>& expand_weight,
    const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight, const c10::optional<at::Tensor>& dw_bias,
    const at::Tensor& project_weight, const c10::optional<at::Tensor>& project_bias, const SqueezeExcitationArgs& se,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, std::string_view activation,
    bool residual, std::array<bool, kInvertedResidualGradients> output_mask, int64_t band_elements);

// inverted_residual_backward_recomputed for a block of checked geometry `geo` whose stages end in `acts` (the
// residual's gradient added when geo.residual).
InvertedResidualGrads block_backward_recomputed(
    const at::Tensor& grad_output, const at::Tensor& input, const c10::optional<at::Tensor>& expand_weight,
    const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight, const c10::optional<at::Tensor>& dw_bias,
    const at::Tensor& project_weight, const c10::optional<at::Tensor>& project_bias, const SqueezeExcitationArgs& se,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, const InvertedResidualGeometry& geo,
    const BlockActivations& acts, std::array<bool, kInvertedResidualGradients> output_mask, int64_t band_elements);

}  // namespace fusedops
