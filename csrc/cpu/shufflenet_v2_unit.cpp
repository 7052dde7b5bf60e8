// CPU kernels of fusedops::shufflenet_v2_unit (ShuffleNetV2's unit: the input's first half, or the shortcut's
// dw -> 1x1 -> act, interleaved with the branch's 1x1 -> act -> dw -> 1x1 -> act) and its backward.
//
// Forward: the branch is the inverted-residual kernel's block (cpu/inverted_residual_block.h) with the branch's
// activations, reading its channels of the input in place (the second half: no copy of the split) and writing each
// band's outputs to the odd channels of the output while they are in cache, interleaved with the even channels'
// values read from the partner: the input's first half, or the shortcut's output, which the fused dwpw kernel
// computes first (a tensor of half the output's size). No concatenation or shuffle pass remains.
//
// Backward: shufflenet_v2_unit_backward_recomputed (csrc/shared/shufflenet_v2_unit.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "fusedops/cpu/finite.h"
#include "fusedops/cpu/inverted_residual_block.h"
#include "fusedops/dwpw.h"
#include "fusedops/schema_str.h"
#include "fusedops/shufflenet_v2_unit.h"

namespace fusedops {
namespace cpu {
namespace {

using at::Tensor;

Tensor shufflenet_v2_unit_cpu(
    const Tensor& input_, const Tensor& expand_weight, const c10::optional<Tensor>& expand_bias,
    const Tensor& dw_weight, const c10::optional<Tensor>& dw_bias, const Tensor& project_weight,
    const c10::optional<Tensor>& project_bias, const c10::optional<Tensor>& shortcut_dw_weight,
    const c10::optional<Tensor>& shortcut_dw_bias, const c10::optional<Tensor>& shortcut_pw_weight,
    const c10::optional<Tensor>& shortcut_pw_bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, c10::string_view activation, const c10::optional<Tensor>& packed_weights) {
  const ShuffleShortcutArgs shortcut{shortcut_dw_weight, shortcut_dw_bias, shortcut_pw_weight, shortcut_pw_bias};
  const ShuffleUnitGeometry geo =
      shufflenet_v2_unit_geometry(input_, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                                  shortcut, stride, padding, dilation, std_view(activation));
  TORCH_CHECK(input_.device().is_cpu(), "fusedops: shufflenet_v2_unit CPU kernel got input on ", input_.device());
  if (!all_finite(dw_weight)) {
    // A NaN or Inf depthwise weight would meet the tiles' zero padding (cpu/finite.h); the shortcut's dwpw kernel
    // handles its own.
    return shufflenet_v2_unit_composed(input_, expand_weight, expand_bias, dw_weight, dw_bias, project_weight,
                                       project_bias, shortcut, stride, padding, dilation, std_view(activation));
  }
  const ConvGeometry& g = geo.branch.dw;
  const at::MemoryFormat fmt = output_memory_format(input_);
  const Tensor input = input_.contiguous(at::MemoryFormat::ChannelsLast);
  Tensor out = at::empty({g.batch, 2 * geo.branch_channels, g.out_h, g.out_w}, input.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  const int64_t C = geo.in_channels;
  // The even channels' source: the shortcut's output (channels-last, as its input) or the input's first half.
  const Tensor shortcut_out =
      geo.shortcut
          ? shuffle_shortcut(input, shortcut, stride, padding, dilation, geo).contiguous(at::MemoryFormat::ChannelsLast)
          : Tensor();
  BlockIo io;
  io.input_pixel_stride = C;
  io.partner = geo.shortcut ? shortcut_out.const_data_ptr() : input.const_data_ptr();
  io.partner_pixel_stride = geo.shortcut ? geo.branch_channels : C;
  const c10::optional<Tensor> ew(expand_weight);
  inverted_residual_block_cpu(branch_input(input, geo), ew, expand_bias, dw_weight, dw_bias, project_weight,
                              project_bias, no_squeeze_excitation(), packed_weights, geo.branch, geo.branch_activations,
                              io, fmt == at::MemoryFormat::ChannelsLast, out);
  return out;
}

Tensor shufflenet_v2_unit_pack_weights_cpu(
    const Tensor& input, const Tensor& expand_weight, const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight,
    const c10::optional<Tensor>& dw_bias, const Tensor& project_weight, const c10::optional<Tensor>& project_bias,
    const c10::optional<Tensor>& shortcut_dw_weight, const c10::optional<Tensor>& shortcut_dw_bias,
    const c10::optional<Tensor>& shortcut_pw_weight, const c10::optional<Tensor>& shortcut_pw_bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view activation) {
  const ShuffleShortcutArgs shortcut{shortcut_dw_weight, shortcut_dw_bias, shortcut_pw_weight, shortcut_pw_bias};
  const ShuffleUnitGeometry geo =
      shufflenet_v2_unit_geometry(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                                  shortcut, stride, padding, dilation, std_view(activation));
  const c10::optional<Tensor> ew(expand_weight);
  return pack_inverted_residual_block_cpu(input, ew, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                                          no_squeeze_excitation(), geo.branch);
}

ShuffleUnitGrads shufflenet_v2_unit_backward_cpu(
    const Tensor& grad_output, const Tensor& input, const Tensor& expand_weight,
    const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight, const c10::optional<Tensor>& dw_bias,
    const Tensor& project_weight, const c10::optional<Tensor>& project_bias,
    const c10::optional<Tensor>& shortcut_dw_weight, const c10::optional<Tensor>& shortcut_dw_bias,
    const c10::optional<Tensor>& shortcut_pw_weight, const c10::optional<Tensor>& shortcut_pw_bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view activation,
    std::array<bool, kShuffleUnitGradients> output_mask) {
  TORCH_CHECK(input.device().is_cpu(), "fusedops: shufflenet_v2_unit CPU backward got input on ", input.device());
  return shufflenet_v2_unit_backward_recomputed(
      grad_output, input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
      {shortcut_dw_weight, shortcut_dw_bias, shortcut_pw_weight, shortcut_pw_bias}, stride, padding, dilation,
      std_view(activation), output_mask, kCpuBackwardBandElements);
}

}  // namespace
}  // namespace cpu
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, CPU, m) {
  m.impl("shufflenet_v2_unit", &fusedops::cpu::shufflenet_v2_unit_cpu);
  m.impl("_shufflenet_v2_unit_backward", &fusedops::cpu::shufflenet_v2_unit_backward_cpu);
  m.impl("_shufflenet_v2_unit_pack_weights", &fusedops::cpu::shufflenet_v2_unit_pack_weights_cpu);
}
