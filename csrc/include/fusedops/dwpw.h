// Argument checks (csrc/shared/dwpw.cpp) and the band-wise backward (csrc/shared/dwpw_banded_backward.cpp)
// shared by the backends of fusedops::dwpw_conv2d, the fused depthwise-separable convolution
//
//   act_out(conv1x1(act_mid(depthwise(input, dw_weight) + dw_bias), pw_weight) + pw_bias).
#pragma once

#include "fusedops/activation.h"
#include "fusedops/conv_geometry.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <string_view>
#include <tuple>

namespace fusedops {

struct DwpwGeometry {
  ConvGeometry dw;           // the depthwise stage (dw.out_channels = C * multiplier = pointwise K)
  int64_t out_channels = 0;  // of the pointwise stage
  Activation mid = Activation::kNone, out = Activation::kNone;
};

// Validates a dwpw_conv2d call; errors name the offending argument (dw_weight, pw_bias, ...).
DwpwGeometry dwpw_geometry(const at::Tensor& input, const at::Tensor& dw_weight,
                           const c10::optional<at::Tensor>& dw_bias, const at::Tensor& pw_weight,
                           const c10::optional<at::Tensor>& pw_bias, at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, std::string_view mid_activation, std::string_view out_activation);

// When the forward's output is kept for the backward (the Autograd kernels save it, the backward reads it):
// with these output activations, whose derivative is 0 exactly where the output sits at a bound (0, or 6),
// and in these dtypes, the ones the recomputation would use anyway, where the output's rounding cannot move
// a value onto a bound. The output's zeros and sixes then give the output activation's derivative without
// recomputing the pointwise GEMM. Python reads both lists through fusedops._C._shared_facts().
inline constexpr std::array<Activation, 2> kDwpwSavedOutputActivations = {Activation::kRelu, Activation::kRelu6};
inline constexpr std::array<at::ScalarType, 2> kDwpwSavedOutputDtypes = {at::kFloat, at::kDouble};

inline bool dwpw_keeps_output(Activation out_activation, at::ScalarType dtype) {
  return std::find(kDwpwSavedOutputActivations.begin(), kDwpwSavedOutputActivations.end(), out_activation) !=
             kDwpwSavedOutputActivations.end() &&
         std::find(kDwpwSavedOutputDtypes.begin(), kDwpwSavedOutputDtypes.end(), dtype) != kDwpwSavedOutputDtypes.end();
}

// The same by the output activation's name (as the schema takes it).
inline bool dwpw_keeps_output(std::string_view out_activation, at::ScalarType dtype) {
  return std::any_of(kDwpwSavedOutputActivations.begin(), kDwpwSavedOutputActivations.end(),
                     [&](Activation a) { return activation_name(a) == out_activation; }) &&
         std::find(kDwpwSavedOutputDtypes.begin(), kDwpwSavedOutputDtypes.end(), dtype) != kDwpwSavedOutputDtypes.end();
}

// Band sizes (elements) of the band-wise backwards, per device.
// CPU: bands of 1M elements (4 MiB per fp32 band buffer, input gradient included): a training step's peak
// memory stays below the unfused sequence's at every benchmark shape (bench_dwpw_conv2d --modes full), and the
// few bands keep the per-band op overhead low (256K-element bands were up to 1.7x slower at batch 1 on 56x56
// maps, for ~1-2 MB less peak memory).
inline constexpr int64_t kCpuBackwardBandElements = int64_t(1) << 20;
// CUDA: bands of ~16M elements: large enough to fill the GPU, small next to the full intermediate of big batches.
inline constexpr int64_t kCudaBackwardBandElements = int64_t(1) << 24;

// Gradients (input, dw_weight, dw_bias, pw_weight, pw_bias) of dwpw_conv2d, computed band by band with
// ATen ops on any device: per band of output rows the depthwise output is recomputed from the input
// (never stored for the whole map), so training keeps only the input alive. Unwanted gradients are
// empty tensors. With the forward's `output`, where dwpw_keeps_output, the output activation's derivative is
// read from it, which saves recomputing the pointwise GEMM.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dwpw_conv2d_backward_banded(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& dw_weight,
    const c10::optional<at::Tensor>& dw_bias, const at::Tensor& pw_weight, const c10::optional<at::Tensor>& pw_bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, std::string_view mid_activation,
    std::string_view out_activation, std::array<bool, 5> output_mask, const c10::optional<at::Tensor>& output,
    int64_t band_elements);

}  // namespace fusedops
