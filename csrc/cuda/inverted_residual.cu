// CUDA kernels of fusedops::inverted_residual and its backward.
//
// Forward: the expand stage as a 1x1 convolution (cuDNN) with its activation, then fusedops' fused dwpw kernel
// (csrc/cuda/dwpw_conv2d.cu) for the depthwise and project stages, which keeps the depthwise output out of
// global memory, then the residual add (inverted_residual_composed, csrc/shared/inverted_residual.cpp). The
// expanded map makes one round trip through global memory; with a squeeze-excitation the depthwise output does
// too (fusedops' depthwise kernel, the gate as ATen ops, the project stage as cuDNN's 1x1 convolution).
//
// Backward: the recomputation shared with the CPU (inverted_residual_backward_recomputed), running ATen ops and
// fusedops' CUDA kernels on the GPU with the dwpw backward's GPU band size.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "fusedops/cuda/common.cuh"
#include "fusedops/dwpw.h"
#include "fusedops/inverted_residual.h"
#include "fusedops/schema_str.h"

namespace fusedops {
namespace cuda {
namespace {

using at::Tensor;

Tensor inverted_residual_cuda(const Tensor& input, const c10::optional<Tensor>& expand_weight,
                              const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight,
                              const c10::optional<Tensor>& dw_bias, const Tensor& project_weight,
                              const c10::optional<Tensor>& project_bias, const c10::optional<Tensor>& se_reduce_weight,
                              const c10::optional<Tensor>& se_reduce_bias,
                              const c10::optional<Tensor>& se_expand_weight,
                              const c10::optional<Tensor>& se_expand_bias, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view activation,
                              bool residual, c10::string_view se_activation, c10::string_view se_gate,
                              const c10::optional<Tensor>& /*packed_weights: for the CPU kernel*/) {
  TORCH_CHECK(on_kernel_device(input), "fusedops: inverted_residual CUDA kernel got input on ", input.device());
  const c10::cuda::CUDAGuard guard(input.device());
  return inverted_residual_composed(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                                    squeeze_excitation_args(se_reduce_weight, se_reduce_bias, se_expand_weight,
                                                            se_expand_bias, se_activation, se_gate),
                                    stride, padding, dilation, std_view(activation), residual);
}

InvertedResidualGrads inverted_residual_backward_cuda(
    const Tensor& grad_output, const Tensor& input, const c10::optional<Tensor>& expand_weight,
    const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight, const c10::optional<Tensor>& dw_bias,
    const Tensor& project_weight, const c10::optional<Tensor>& project_bias,
    const c10::optional<Tensor>& se_reduce_weight, const c10::optional<Tensor>& se_reduce_bias,
    const c10::optional<Tensor>& se_expand_weight, const c10::optional<Tensor>& se_expand_bias, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view activation, bool residual,
    c10::string_view se_activation, c10::string_view se_gate,
    std::array<bool, kInvertedResidualGradients> output_mask) {
  TORCH_CHECK(on_kernel_device(input), "fusedops: inverted_residual CUDA backward got input on ", input.device());
  const c10::cuda::CUDAGuard guard(input.device());
  return inverted_residual_backward_recomputed(
      grad_output, input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
      squeeze_excitation_args(se_reduce_weight, se_reduce_bias, se_expand_weight, se_expand_bias, se_activation,
                              se_gate),
      stride, padding, dilation, std_view(activation), residual, output_mask, kCudaBackwardBandElements);
}

}  // namespace
}  // namespace cuda
}  // namespace fusedops

FUSEDOPS_REGISTER_CUDA_KERNELS(m) {
  m.impl("inverted_residual", &fusedops::cuda::inverted_residual_cuda);
  m.impl("_inverted_residual_backward", &fusedops::cuda::inverted_residual_backward_cuda);
}
