// Geometry and argument checks shared by every convolution-like op and every backend (implemented in
// csrc/shared/conv_geometry.cpp).
//
// Schemas carry no checks: each backend's entry point (csrc/cpu/<op>.cpp, csrc/cuda/<op>.cu, the shared
// dwpw backward) validates its own arguments through depthwise_geometry / depthwise_backward_geometry and
// works from the ConvGeometry they return, so all backends report the same errors and agree on output sizes
// (conv_output_size is the one formula).
#pragma once

#include <ATen/ATen.h>

#include "fusedops/checks.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <tuple>
#include <string>

namespace fusedops {

// Input positions spanned by a kernel of `kernel` taps `dilation` apart.
constexpr int64_t dilated_extent(int64_t kernel, int64_t dilation) {
  return dilation * (kernel - 1) + 1;
}

// Outputs of a convolution along one dimension of `size` inputs (PyTorch's formula; the one every C++ output
// size comes from). Requires size + 2 * pad >= dilated_extent(kernel, dilation).
constexpr int64_t conv_output_size(int64_t size, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  return (size + 2 * pad - dilated_extent(kernel, dilation)) / stride + 1;
}

// Sizes of a 2-D depthwise (groups == in_channels) convolution with depth multiplier `multiplier`:
// output channel oc reads input channel oc / multiplier.
struct ConvGeometry {
  int64_t batch = 0;
  int64_t channels = 0;      // input channels
  int64_t multiplier = 1;    // output channels per input channel
  int64_t out_channels = 0;  // channels * multiplier
  int64_t in_h = 0, in_w = 0;
  int64_t out_h = 0, out_w = 0;
  int64_t kernel_h = 0, kernel_w = 0;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dilation_h = 1, dilation_w = 1;

  // Output column range [ow_begin, ow_end) whose taps all fall inside the input along W
  // (the interior, where kernels run without bounds checks). Empty when the map is smaller than the kernel.
  int64_t interior_ow_begin() const {
    return interior_begin(out_w, stride_w, pad_w);
  }
  int64_t interior_ow_end() const {
    return std::max(interior_ow_begin(), interior_end(in_w, out_w, kernel_w, stride_w, pad_w, dilation_w));
  }
  int64_t interior_oh_begin() const {
    return interior_begin(out_h, stride_h, pad_h);
  }
  int64_t interior_oh_end() const {
    return std::max(interior_oh_begin(), interior_end(in_h, out_h, kernel_h, stride_h, pad_h, dilation_h));
  }

 private:
  // First output index o with o * stride - pad >= 0.
  static int64_t interior_begin(int64_t out, int64_t stride, int64_t pad) {
    return std::min(out, (pad + stride - 1) / stride);
  }
  // One past the last o with o * stride - pad + (kernel - 1) * dilation <= size - 1.
  static int64_t interior_end(int64_t size, int64_t out, int64_t kernel, int64_t stride, int64_t pad,
                              int64_t dilation) {
    const int64_t last_start = size - 1 - (kernel - 1) * dilation + pad;
    return last_start < 0 ? 0 : std::min(out, last_start / stride + 1);
  }
};

// Checks a convolution's stride (positive), padding (non-negative) and dilation (positive), each (height, width).
void check_conv_options(at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation);

// Sets g's stride, padding and dilation (checked by check_conv_options) and its output size from its input and kernel
// sizes, after checking that the padded input holds the dilated kernel.
void set_conv_window(ConvGeometry& g, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation);

// Validates a depthwise convolution call and returns its geometry. Errors name the offending argument
// (`weight_name` / `bias_name` let fused ops name theirs, e.g. "dw_weight"). `channels`, when not -1, is the
// number of channels the depthwise stage reads when it is not the input's (a fused op's expanded map).
ConvGeometry depthwise_geometry(const at::Tensor& input, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                                at::IntArrayRef dilation, const char* weight_name = "weight",
                                const char* bias_name = "bias", int64_t channels = -1);

// Validates a depthwise backward call (the forward's checks plus grad_output's device, dtype and shape)
// and returns the forward geometry.
ConvGeometry depthwise_backward_geometry(const at::Tensor& grad_output, const at::Tensor& input,
                                         const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                                         at::IntArrayRef dilation);

// The stride-1 input gradient of g written as a forward convolution of grad_output with the kernel
// rotated by 180 degrees, returning that convolution's geometry in *transposed (its input is g's output, its
// output g's input). Valid (returns true) when g has stride 1, multiplier 1 and
// padding <= dilation * (kernel - 1).
bool transposed_as_forward(const ConvGeometry& g, ConvGeometry* transposed);

// The gradients a depthwise backward returns, allocated as output_mask asks (undefined otherwise):
// grad_input in `fmt`, grad_weight like weight, grad_bias (out_channels,).
struct DepthwiseGrads {
  at::Tensor input, weight, bias;

  DepthwiseGrads(const at::Tensor& input_, const at::Tensor& weight_, const ConvGeometry& g, at::MemoryFormat fmt,
                 std::array<bool, 3> output_mask);
  // Zero-fills the requested gradients (nothing to accumulate, e.g. an empty batch).
  void zero();
  // The op's return value: unrequested gradients become empty tensors (custom ops cannot return None).
  std::tuple<at::Tensor, at::Tensor, at::Tensor> result(const at::TensorOptions& options) const;
};

// The memory format an op's output takes: the input's, as for PyTorch convolutions.
inline at::MemoryFormat output_memory_format(const at::Tensor& input) {
  return input.suggest_memory_format();
}

// Checks that `t` lives on the same device as `reference`; `what` names the argument in the error.
void check_same_device(const at::Tensor& t, const at::Tensor& reference, const char* what, const char* reference_name);

// Checks that a (height, width) argument has two elements.
void check_pair(at::IntArrayRef values, const char* name);

// A weight whose shape the caller has checked and its optional bias (weight.size(0),): the bias's shape, both dtypes
// and devices against the input's; `weight_name` and `bias_name` name them in the errors.
void check_weight_and_bias(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                           const char* weight_name, const char* bias_name);

// A 1x1 convolution's weight (out, in, 1, 1) and optional bias (out,) of a fused op: shapes, dtype and device
// against the input; `in_meaning` says in the error what the `in` channels are.
void check_pointwise(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                     int64_t in, const char* weight_name, const char* bias_name, const char* in_meaning);

}  // namespace fusedops
