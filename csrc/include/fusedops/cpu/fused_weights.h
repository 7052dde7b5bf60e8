// Weights of the fused CPU kernels (dwpw_conv2d, inverted_residual), laid out by the calling thread before the
// workers start, in the accumulation type: depthwise taps tap-major (the layout depthwise_nhwc_row reads) and 1x1
// weights packed into GEMM panels (pointwise_gemm.h).
#pragma once

#include "fusedops/cpu/pointwise_gemm.h"
#include "fusedops/cpu/vec_io.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>

namespace fusedops {
namespace cpu {

// Taps [T][K] of a depthwise weight (K, 1, kH, kW) with T = kH * kW, and its bias zero-padded to K + V (the last
// vector of a row reads past K).
template <typename scalar_t>
void lay_out_depthwise_weights(const at::Tensor& weight, const c10::optional<at::Tensor>& bias, int64_t K, int64_t T,
                               acc_t<scalar_t>* taps, acc_t<scalar_t>* bias_out) {
  using acc = acc_t<scalar_t>;
  constexpr int64_t V = at::vec::Vectorized<acc>::size();
  const at::Tensor wc = weight.contiguous();
  const scalar_t* src = wc.const_data_ptr<scalar_t>();
  for (int64_t k = 0; k < K; ++k)
    for (int64_t t = 0; t < T; ++t) taps[t * K + k] = static_cast<acc>(src[k * T + t]);
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor bc = has_bias ? bias->contiguous() : at::Tensor();
  for (int64_t k = 0; k < K + V; ++k)
    bias_out[k] = (has_bias && k < K) ? static_cast<acc>(bc.const_data_ptr<scalar_t>()[k]) : acc(0);
}

// A 1x1 weight (N, K, 1, 1) and its optional bias (N,) packed into `dst` (PackedPointwise::packed_elements(K, N)
// elements). Packing 1x1 weights (up to a few MiB) is worth every thread.
template <typename scalar_t>
PackedPointwise<acc_t<scalar_t>> pack_pointwise_weights(const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                                        int64_t K, int64_t N, acc_t<scalar_t>* dst) {
  using acc = acc_t<scalar_t>;
  using P = PackedPointwise<acc>;
  const at::Tensor wc = weight.contiguous();
  const at::Tensor bc = (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor();
  const scalar_t* wsrc = wc.const_data_ptr<scalar_t>();
  const scalar_t* bsrc = bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr;
  P packed = packed_pointwise_layout<acc>(K, N, dst);
  at::parallel_for(0, packed.num_panels(), std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(1, K * P::kNr)),
                   [&](int64_t begin, int64_t end) { pack_pointwise_panels(packed, wsrc, K, bsrc, begin, end); });
  return packed;
}

// The elements of a packed-weights tensor (1-D, contiguous, of acc, on the CPU), after checking that this build
// packed it for a call of this layout: `header` (its first elements: panel width, channel counts, taps) and
// `elements` in all. `repack` names the function that packs them, for the error.
template <typename acc, size_t N>
const acc* checked_packed_weights(const at::Tensor& packed, const std::array<acc, N>& header, int64_t elements,
                                  const char* repack) {
  TORCH_CHECK(packed.device().is_cpu() && packed.dim() == 1 && packed.is_contiguous() &&
                  packed.scalar_type() == c10::CppTypeToScalarType<acc>::value && packed.numel() == elements &&
                  std::equal(header.begin(), header.end(), packed.const_data_ptr<acc>()),
              "fusedops: packed_weights were not packed for this block (its channels, kernel and dtype) by this "
              "build: pack them again with ",
              repack);
  return packed.const_data_ptr<acc>();
}

}  // namespace cpu
}  // namespace fusedops
