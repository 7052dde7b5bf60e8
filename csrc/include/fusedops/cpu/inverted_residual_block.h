// The CPU kernel of an inverted-residual block (csrc/cpu/inverted_residual.cpp) as ops built around one call it:
// ShuffleNetV2's unit runs its branch as such a block, reading a slice of its input's channels and writing its
// outputs between those of a partner (the input's other half, or the shortcut's output).
#pragma once

#include "fusedops/inverted_residual.h"

#include <ATen/ATen.h>

namespace fusedops {
namespace cpu {

// Where a block reads and writes besides a whole input and an output of its own.
struct BlockIo {
  // Elements from one pixel of the (channels-last) input to the next: the input's channels, or more where the
  // input tensor is a slice of another's channels.
  int64_t input_pixel_stride = 0;
  // When given (of the input's dtype, channels-last, out_channels channels of the output's pixels, partner_pixel_stride
  // elements apart), the output has 2 * out_channels channels: the partner's channel c at 2c, the block's at 2c + 1.
  const void* partner = nullptr;
  int64_t partner_pixel_stride = 0;
};

// Runs a block of checked geometry `geo`, whose stages end in `acts`, on `input` (channels-last, or a channel slice
// of a channels-last tensor as io says) into `out` (channels-last when out_channels_last, else contiguous), with the
// weights as inverted_residual takes them (packed_weights: from pack_inverted_residual_block_cpu, or undefined).
void inverted_residual_block_cpu(const at::Tensor& input, const c10::optional<at::Tensor>& expand_weight,
                                 const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight,
                                 const c10::optional<at::Tensor>& dw_bias, const at::Tensor& project_weight,
                                 const c10::optional<at::Tensor>& project_bias, const SqueezeExcitationArgs& se,
                                 const c10::optional<at::Tensor>& packed_weights, const InvertedResidualGeometry& geo,
                                 const BlockActivations& acts, const BlockIo& io, bool out_channels_last,
                                 at::Tensor& out);

// The weights of such a block packed as its kernel reads them (what _inverted_residual_pack_weights returns).
at::Tensor pack_inverted_residual_block_cpu(const at::Tensor& input, const c10::optional<at::Tensor>& expand_weight,
                                            const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight,
                                            const c10::optional<at::Tensor>& dw_bias, const at::Tensor& project_weight,
                                            const c10::optional<at::Tensor>& project_bias,
                                            const SqueezeExcitationArgs& se, const InvertedResidualGeometry& geo);

}  // namespace cpu
}  // namespace fusedops
