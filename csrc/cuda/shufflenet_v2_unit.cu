// CUDA kernels of fusedops::shufflenet_v2_unit and its backward.
//
// Forward: the branch's expand stage as a 1x1 convolution (cuDNN) with its activation, then fusedops' fused dwpw
// kernel (csrc/cuda/dwpw_conv2d.cu) for its depthwise and project stages; the shortcut, where the unit has one,
// through the same dwpw kernel; the two halves copied into their interleaved channels of the output
// (shufflenet_v2_unit_composed, csrc/shared/shufflenet_v2_unit.cpp). The expanded map makes one round trip
// through global memory.
//
// Backward: the recomputation shared with the CPU (shufflenet_v2_unit_backward_recomputed), running ATen ops and
// fusedops' CUDA kernels on the GPU with the dwpw backward's GPU band size.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "fusedops/cuda/common.cuh"
#include "fusedops/dwpw.h"
#include "fusedops/schema_str.h"
#include "fusedops/shufflenet_v2_unit.h"

namespace fusedops {
namespace cuda {
namespace {

using at::Tensor;

Tensor shufflenet_v2_unit_cuda(
    const Tensor& input, const Tensor& expand_weight, const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight,
    const c10::optional<Tensor>& dw_bias, const Tensor& project_weight, const c10::optional<Tensor>& project_bias,
    const c10::optional<Tensor>& shortcut_dw_weight, const c10::optional<Tensor>& shortcut_dw_bias,
    const c10::optional<Tensor>& shortcut_pw_weight, const c10::optional<Tensor>& shortcut_pw_bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view activation,
    const c10::optional<Tensor>& /*packed_weights: for the CPU kernel*/) {
  TORCH_CHECK(on_kernel_device(input), "fusedops: shufflenet_v2_unit CUDA kernel got input on ", input.device());
  const c10::cuda::CUDAGuard guard(input.device());
  return shufflenet_v2_unit_composed(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight,
                                     project_bias,
                                     {shortcut_dw_weight, shortcut_dw_bias, shortcut_pw_weight, shortcut_pw_bias},
                                     stride, padding, dilation, std_view(activation));
}

ShuffleUnitGrads shufflenet_v2_unit_backward_cuda(
    const Tensor& grad_output, const Tensor& input, const Tensor& expand_weight,
    const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight, const c10::optional<Tensor>& dw_bias,
    const Tensor& project_weight, const c10::optional<Tensor>& project_bias,
    const c10::optional<Tensor>& shortcut_dw_weight, const c10::optional<Tensor>& shortcut_dw_bias,
    const c10::optional<Tensor>& shortcut_pw_weight, const c10::optional<Tensor>& shortcut_pw_bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view activation,
    std::array<bool, kShuffleUnitGradients> output_mask) {
  TORCH_CHECK(on_kernel_device(input), "fusedops: shufflenet_v2_unit CUDA backward got input on ", input.device());
  const c10::cuda::CUDAGuard guard(input.device());
  return shufflenet_v2_unit_backward_recomputed(
      grad_output, input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
      {shortcut_dw_weight, shortcut_dw_bias, shortcut_pw_weight, shortcut_pw_bias}, stride, padding, dilation,
      std_view(activation), output_mask, kCudaBackwardBandElements);
}

}  // namespace
}  // namespace cuda
}  // namespace fusedops

FUSEDOPS_REGISTER_CUDA_KERNELS(m) {
  m.impl("shufflenet_v2_unit", &fusedops::cuda::shufflenet_v2_unit_cuda);
  m.impl("_shufflenet_v2_unit_backward", &fusedops::cuda::shufflenet_v2_unit_backward_cuda);
}
