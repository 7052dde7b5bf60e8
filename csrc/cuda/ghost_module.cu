// CUDA kernels of fusedops::ghost_module and its backward.
//
// Forward: the primary half as cuDNN's 1x1 convolution with its activation, the cheap half's contributed channels
// as fusedops' depthwise CUDA kernel (csrc/cuda/depthwise_conv2d.cu), each copied into its channels of the output
// (ghost_module_composed, csrc/shared/ghost_module.cpp): the primary half makes one round trip through global
// memory before the depthwise stage reads it.
//
// Backward: the recomputation shared with the CPU (ghost_module_backward_recomputed), running ATen ops and
// fusedops' CUDA kernels on the GPU.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "fusedops/cuda/common.cuh"
#include "fusedops/ghost_module.h"
#include "fusedops/schema_str.h"

namespace fusedops {
namespace cuda {
namespace {

using at::Tensor;

Tensor ghost_module_cuda(const Tensor& input, const Tensor& primary_weight, const c10::optional<Tensor>& primary_bias,
                         const Tensor& cheap_weight, const c10::optional<Tensor>& cheap_bias,
                         const c10::optional<Tensor>& residual, int64_t out_channels, at::IntArrayRef stride,
                         c10::string_view activation, const c10::optional<Tensor>& /*packed_weights: for the CPU*/) {
  TORCH_CHECK(on_kernel_device(input), "fusedops: ghost_module CUDA kernel got input on ", input.device());
  const c10::cuda::CUDAGuard guard(input.device());
  return ghost_module_composed(input, primary_weight, primary_bias, cheap_weight, cheap_bias, out_channels, stride,
                               std_view(activation), residual);
}

GhostModuleGrads ghost_module_backward_cuda(const Tensor& grad_output, const Tensor& input,
                                            const Tensor& primary_weight, const c10::optional<Tensor>& primary_bias,
                                            const Tensor& cheap_weight, const c10::optional<Tensor>& cheap_bias,
                                            int64_t out_channels, at::IntArrayRef stride, c10::string_view activation,
                                            std::array<bool, kGhostModuleGradients> output_mask) {
  TORCH_CHECK(on_kernel_device(input), "fusedops: ghost_module CUDA backward got input on ", input.device());
  const c10::cuda::CUDAGuard guard(input.device());
  return ghost_module_backward_recomputed(grad_output, input, primary_weight, primary_bias, cheap_weight, cheap_bias,
                                          out_channels, stride, std_view(activation), output_mask);
}

}  // namespace
}  // namespace cuda
}  // namespace fusedops

FUSEDOPS_REGISTER_CUDA_KERNELS(m) {
  m.impl("ghost_module", &fusedops::cuda::ghost_module_cuda);
  m.impl("_ghost_module_backward", &fusedops::cuda::ghost_module_backward_cuda);
}
