// CPU kernels of the training path's batch norm + activation (schemas: csrc/batch_norm_activation.cpp).
//
// Eager PyTorch runs a training batch norm and its activation as three or four passes over the tensor forward
// (statistics, normalisation, activation, the in-place activation's copy) and three backward (the activation's
// backward, then the batch norm's reductions and its elementwise pass). Here forward is two passes (the
// statistics; normalisation and activation together) and backward two (the reductions, with the activation's
// derivative recomputed from the input; the elementwise pass), each vectorised along the channels of a
// channels-last tensor (the parameters as vectors) or along the planes of an NCHW one (broadcast parameters).
//
// Terms are computed and summed in the accumulation type (float for float, bfloat16 and half) over blocks of
// kBlockTerms per channel (in registers along an NCHW plane, in an L1 block of sums across channels-last pixels),
// and the blocks' sums are added up in double. The statistics are one
// pass of sums and sums of squares taken about a shift (each channel's mean over a sample of its values), which
// keeps the variance's cancellation as small as a second pass would.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "fusedops/activation.h"
#include "fusedops/checks.h"
#include "fusedops/conv_geometry.h"
#include "fusedops/cpu/activation.h"
#include "fusedops/cpu/batch_norm_rows.h"
#include "fusedops/cpu/depthwise_nhwc.h"
#include "fusedops/cpu/expanded_bands.h"
#include "fusedops/cpu/finite.h"
#include "fusedops/cpu/scratch.h"
#include "fusedops/cpu/streaming.h"
#include "fusedops/cpu/vec_io.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

namespace fusedops {
namespace cpu {
namespace {

using at::Tensor;

// Elements below which a pass runs on one thread: waking the pool costs more than the pass.
constexpr int64_t kMinParallelElements = 1 << 15;
// Terms each vector lane sums in the accumulation type before the sum goes into a double: bounds a partial sum's
// float rounding to that of 16 terms, and the double additions to one per 16 vectors.
constexpr int64_t kBlockTerms = 16;
// Channel vectors whose sums a channels-last reduction keeps in registers at once: 2 x 4 accumulators, with the
// parameters and the terms, fit AVX2's 16 registers.
constexpr int64_t kGroupVectors = 4;
// Values per channel whose mean shifts the statistics' sums.
constexpr int64_t kShiftSamples = 64;

// A dense 4-D tensor of C channels: channels-last (a pixel's C channels contiguous) or NCHW (a plane of HW
// elements per image and channel).
struct Layout {
  bool channels_last;
  int64_t images, channels, plane;  // N, C, H * W
};

Layout layout_of(const Tensor& t) {
  return {t.is_contiguous(at::MemoryFormat::ChannelsLast), t.size(0), t.size(1), t.size(2) * t.size(3)};
}

Tensor dense(const Tensor& t) {
  return t.contiguous(t.suggest_memory_format());
}

// kParams per-channel parameters as vectors: loaded at channel c (channels-last), or broadcast (NCHW).
template <typename Acc, int kParams>
using ParamVecs = std::array<at::vec::Vectorized<Acc>, kParams>;

template <typename Acc, int kParams>
ParamVecs<Acc, kParams> params_at(const std::array<const Acc*, kParams>& arrays, int64_t c, bool vector) {
  ParamVecs<Acc, kParams> v;
  for (int k = 0; k < kParams; ++k) {
    v[k] = vector ? at::vec::Vectorized<Acc>::loadu(arrays[k] + c) : at::vec::Vectorized<Acc>(arrays[k][c]);
  }
  return v;
}

// Calls f(element_index, count, params) on every run of `count` (at most one vector) consecutive elements that
// share their parameters' vectors: along each pixel's channels (channels-last; parameter arrays padded to whole
// vectors) or along each plane (NCHW); full vectors first, with `count` a constant.
//
// The loops run on copies of f and of the parameter pointers local to each thread's call: a vector store may alias
// anything, so after each one the compiler reloads every value the loop reaches through a reference or a lambda's
// captures (the closure is in memory). Measured on a 2-vCPU AMD EPYC (Zen 3, AVX2), the training apply of 8 x 192
// x 28 x 28 channels-last: 342 us reaching through references with the activation switched per vector, 110 us
// with local copies and the activation a compile-time constant (with_activation), 81 us for x + 1.
template <typename Acc, int kParams, typename F>
void for_each_vector(const Layout& L, const std::array<const Acc*, kParams>& params, const F& f) {
  constexpr int64_t V = at::vec::Vectorized<Acc>::size();
  const int64_t grain_elements = kMinParallelElements;
  if (L.channels_last) {
    const int64_t C = L.channels;
    at::parallel_for(0, L.images * L.plane, std::max<int64_t>(1, grain_elements / C), [&](int64_t begin, int64_t end) {
      const F body = f;
      const std::array<const Acc*, kParams> ps = params;
      const int64_t channels = C, full = C / V * V;
      for (int64_t p = begin; p < end; ++p) {
        int64_t c = 0;
        for (; c < full; c += V) body(p * channels + c, V, params_at<Acc, kParams>(ps, c, true));
        if (c < channels) body(p * channels + c, channels - c, params_at<Acc, kParams>(ps, c, true));
      }
    });
  } else {
    const int64_t HW = L.plane;
    at::parallel_for(0, L.images * L.channels, std::max<int64_t>(1, grain_elements / HW),
                     [&](int64_t begin, int64_t end) {
                       const F body = f;
                       const std::array<const Acc*, kParams> ps = params;
                       const int64_t plane_size = HW, full = HW / V * V, channels = L.channels;
                       for (int64_t plane = begin; plane < end; ++plane) {
                         const auto pv = params_at<Acc, kParams>(ps, plane % channels, false);
                         int64_t i = 0;
                         for (; i < full; i += V) body(plane * plane_size + i, V, pv);
                         if (i < plane_size) body(plane * plane_size + i, plane_size - i, pv);
                       }
                     });
  }
}

// Per-channel sums of the two terms f(element_index, count, params) returns for every run of for_each_vector,
// into sums[0..C) and sums[C..2C) (double).
template <typename Acc, int kParams, typename F>
std::vector<double> channel_sums(const Layout& L, const std::array<const Acc*, kParams>& params, const F& f) {
  using Vec = at::vec::Vectorized<Acc>;
  constexpr int64_t V = Vec::size();
  const int64_t C = L.channels;
  // Adds a vector of terms to V double sums (widened lane by lane; the compiler vectorises the loop).
  const auto add_to = [](double* sum, const Vec& terms) {
    alignas(64) Acc lanes[V];
    terms.store(lanes);
    for (int64_t k = 0; k < V; ++k) sum[k] += static_cast<double>(lanes[k]);
  };
  std::vector<double> sums(2 * C, 0.0);
  if (L.channels_last) {
    // Threads split the pixels, each with totals of its own (padded to whole vectors), added up at the end.
    const int64_t padded = (C + V - 1) / V * V;
    const int threads = at::get_num_threads();
    std::vector<double> totals(static_cast<size_t>(threads) * 2 * padded, 0.0);
    at::parallel_for(0, L.images * L.plane, std::max<int64_t>(1, kMinParallelElements / C),
                     [&](int64_t begin, int64_t end) {
                       // Local copies, as in for_each_vector.
                       const F body = f;
                       const std::array<const Acc*, kParams> ps = params;
                       const int64_t channels = C, full = C / V * V, width = padded;
                       double* const total = totals.data() + static_cast<size_t>(at::get_thread_num()) * 2 * width;
                       // kBlockTerms pixels at a time, and of them kGroupVectors channel vectors at a time: each
                       // lane sums its kBlockTerms terms in pixel order in a register, then into the totals. (Sums
                       // kept in an L1 block, loaded and stored for every term, took 1.5-2.8x the time of the apply
                       // pass over the same tensor on a Zen 3 core: each pixel waited on the last one's stores.)
                       const auto sum_group = [&](int64_t p0, int64_t p1, int64_t c0, int64_t count, auto vectors) {
                         constexpr int64_t G = decltype(vectors)::value;
                         std::array<Vec, G> first, second;
                         first.fill(Vec(Acc(0)));
                         second.fill(Vec(Acc(0)));
                         for (int64_t p = p0; p < p1; ++p) {
                           for (int64_t k = 0; k < G; ++k) {
                             const int64_t c = c0 + k * V;
                             const auto terms = body(p * channels + c, count, params_at<Acc, kParams>(ps, c, true));
                             first[k] = first[k] + terms.first;
                             second[k] = second[k] + terms.second;
                           }
                         }
                         for (int64_t k = 0; k < G; ++k) {
                           add_to(total + c0 + k * V, first[k]);
                           add_to(total + width + c0 + k * V, second[k]);
                         }
                       };
                       for (int64_t p0 = begin; p0 < end; p0 += kBlockTerms) {
                         const int64_t p1 = std::min(end, p0 + kBlockTerms);
                         int64_t c0 = 0;
                         for (; c0 + kGroupVectors * V <= full; c0 += kGroupVectors * V) {
                           sum_group(p0, p1, c0, V, std::integral_constant<int64_t, kGroupVectors>{});
                         }
                         switch ((full - c0) / V) {  // the whole vectors left: fewer than a group
                           case 3: sum_group(p0, p1, c0, V, std::integral_constant<int64_t, 3>{}); break;
                           case 2: sum_group(p0, p1, c0, V, std::integral_constant<int64_t, 2>{}); break;
                           case 1: sum_group(p0, p1, c0, V, std::integral_constant<int64_t, 1>{}); break;
                           default: break;
                         }
                         if (full < channels) {
                           sum_group(p0, p1, full, channels - full, std::integral_constant<int64_t, 1>{});
                         }
                       }
                     });
    for (int t = 0; t < threads; ++t) {
      for (int64_t c = 0; c < C; ++c) {
        sums[c] += totals[static_cast<size_t>(t) * 2 * padded + c];
        sums[C + c] += totals[static_cast<size_t>(t) * 2 * padded + padded + c];
      }
    }
  } else {
    // Threads split the channels; a channel's planes are summed lane by lane.
    const int64_t HW = L.plane;
    at::parallel_for(0, C, std::max<int64_t>(1, kMinParallelElements / (L.images * HW)),
                     [&](int64_t begin, int64_t end) {
                       // Local copies, as in for_each_vector.
                       const F body = f;
                       const std::array<const Acc*, kParams> ps = params;
                       const int64_t images = L.images, channels = C, plane_size = HW;
                       for (int64_t c = begin; c < end; ++c) {
                         const auto pv = params_at<Acc, kParams>(ps, c, false);
                         alignas(64) double lanes[2][V] = {};
                         for (int64_t n = 0; n < images; ++n) {
                           const int64_t base = (n * channels + c) * plane_size;
                           for (int64_t i0 = 0; i0 < plane_size; i0 += kBlockTerms * V) {
                             Vec a(Acc(0)), b(Acc(0));
                             for (int64_t i = i0; i < std::min(plane_size, i0 + kBlockTerms * V); i += V) {
                               const int64_t count = std::min(V, plane_size - i);
                               auto terms = body(base + i, count, pv);
                               if (count < V) {  // the lanes past the plane are not this channel's
                                 terms.first = Vec::set(Vec(Acc(0)), terms.first, count);
                                 terms.second = Vec::set(Vec(Acc(0)), terms.second, count);
                               }
                               a = a + terms.first;
                               b = b + terms.second;
                             }
                             add_to(lanes[0], a);
                             add_to(lanes[1], b);
                           }
                         }
                         for (int64_t k = 0; k < V; ++k) {
                           sums[c] += lanes[0][k];
                           sums[C + c] += lanes[1][k];
                         }
                       }
                     });
  }
  return sums;
}

void check_input(const Tensor& input, const char* op) {
  TORCH_CHECK(input.dim() == 4, "fusedops: ", op, ": input must be 4-D (N, C, H, W), got ", input.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), "fusedops: ", op,
              ": input must be a floating-point tensor, got ", dtype_name(input.scalar_type()));
}

// The checks every op makes: the input, the affine parameters, and the activation (returned parsed).
Activation check_arguments(const Tensor& input, const c10::optional<Tensor>& weight, const c10::optional<Tensor>& bias,
                           c10::string_view activation, const char* op) {
  check_input(input, op);
  const Activation act = parse_activation(activation, "activation");
  check_channels(weight, input.size(1), "weight", op);
  check_channels(bias, input.size(1), "bias", op);
  return act;
}

template <typename scalar_t>
void apply_into(const Tensor& x, const Tensor& out, Activation act,
                const Normalization<at::opmath_type<scalar_t>>& norm) {
  using Acc = at::opmath_type<scalar_t>;
  const scalar_t* in = x.const_data_ptr<scalar_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  with_activation(act, [&](auto kind) {
    for_each_vector<Acc, 3>(
        layout_of(x), {norm.mean.data(), norm.scale.data(), norm.bias.data()},
        [in, o](int64_t i, int64_t count, const ParamVecs<Acc, 3>& p) {
          store_acc(o + i,
                    apply_activation(decltype(kind)::value, normalize(load_acc(in + i, count), p[0], p[1], p[2])),
                    count);
        });
  });
}

// The checks of the ops that normalise by batch statistics: check_arguments', and the running statistics'.
Activation check_statistics_arguments(const Tensor& input, const c10::optional<Tensor>& weight,
                                      const c10::optional<Tensor>& bias, const c10::optional<Tensor>& running_mean,
                                      const c10::optional<Tensor>& running_var, c10::string_view activation,
                                      const char* op) {
  const Activation act = check_arguments(input, weight, bias, activation, op);
  const int64_t C = input.size(1);
  check_channels(running_mean, C, "running_mean", op);
  check_channels(running_var, C, "running_var", op);
  TORCH_CHECK(given(running_mean) == given(running_var), "fusedops: ", op,
              ": running_mean and running_var must be given both or neither");
  const int64_t count = input.numel() / std::max<int64_t>(C, 1);
  TORCH_CHECK(count > 1, "Expected more than 1 value per channel when training, got input size ", input.sizes());
  return act;
}

// The batch statistics of a dense `x` as the ops normalise by them (arrays padded to whole vectors) and return them
// (save_mean, save_invstd), the running statistics moved once towards them.
template <typename scalar_t>
struct BatchStatistics {
  std::vector<at::opmath_type<scalar_t>> mean, invstd;
  Tensor mean_t, invstd_t;
};

template <typename in_t>
BatchStatistics<in_t> batch_statistics(const Tensor& x, const c10::optional<Tensor>& running_mean,
                                       const c10::optional<Tensor>& running_var, double momentum, double eps) {
  using Acc = at::opmath_type<in_t>;
  using Vec = at::vec::Vectorized<Acc>;
  const Layout L = layout_of(x);
  const int64_t C = L.channels;
  const int64_t count = x.numel() / std::max<int64_t>(C, 1);
  const in_t* in = x.const_data_ptr<in_t>();
  // The shift of the sums: each channel's mean over kShiftSamples values spread over the batch, within a fraction
  // of a standard deviation of the mean, so the sums of squares lose no more to cancellation than two passes do.
  std::vector<Acc> origin = channel_array<Acc>(c10::nullopt, C, Acc(0));
  const int64_t samples = std::min(kShiftSamples, count);
  std::vector<double> sampled(C, 0.0);
  for (int64_t k = 0; k < samples; ++k) {
    const int64_t m = k * count / samples;  // the m-th value of each channel in (N, H, W) order
    const in_t* first = in + (L.channels_last ? m * C : m / L.plane * C * L.plane + m % L.plane);
    const int64_t step = L.channels_last ? 1 : L.plane;
    for (int64_t c = 0; c < C; ++c) sampled[c] += static_cast<double>(first[c * step]);
  }
  for (int64_t c = 0; c < C; ++c) origin[c] = static_cast<Acc>(sampled[c] / samples);
  const auto sums = channel_sums<Acc, 1>(L, {origin.data()}, [in](int64_t i, int64_t n, const ParamVecs<Acc, 1>& p) {
    const Vec d = load_acc(in + i, n) - p[0];
    return std::pair{d, d * d};
  });
  const auto stat_type = c10::CppTypeToScalarType<Acc>::value;
  BatchStatistics<in_t> stats;
  stats.mean_t = at::empty({C}, x.options().dtype(stat_type));
  stats.invstd_t = at::empty({C}, x.options().dtype(stat_type));
  stats.mean = channel_array<Acc>(c10::nullopt, C, Acc(0));
  stats.invstd = stats.mean;
  std::vector<double> unbiased(C);
  for (int64_t c = 0; c < C; ++c) {
    const double shifted_mean = sums[c] / count;
    const double var = std::max(0.0, sums[C + c] / count - shifted_mean * shifted_mean);
    stats.mean[c] = static_cast<Acc>(origin[c] + shifted_mean);
    stats.invstd[c] = static_cast<Acc>(1.0 / std::sqrt(var + eps));
    unbiased[c] = var * count / (count - 1);
  }
  std::copy_n(stats.mean.data(), C, stats.mean_t.template mutable_data_ptr<Acc>());
  std::copy_n(stats.invstd.data(), C, stats.invstd_t.template mutable_data_ptr<Acc>());
  if (given(running_mean)) {
    // ATen's update: momentum * statistic + (1 - momentum) * running, in double, stored in the buffer's type.
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, running_mean->scalar_type(), "running_stats", [&] {
      TORCH_CHECK(running_var->scalar_type() == running_mean->scalar_type() && running_mean->is_contiguous() &&
                      running_var->is_contiguous(),
                  "fusedops: _batch_norm_activation: running_mean and running_var must be contiguous tensors of "
                  "one dtype");
      scalar_t* rm = running_mean->mutable_data_ptr<scalar_t>();
      scalar_t* rv = running_var->mutable_data_ptr<scalar_t>();
      for (int64_t c = 0; c < C; ++c) {
        rm[c] = static_cast<scalar_t>(momentum * (origin[c] + sums[c] / count) + (1 - momentum) * rm[c]);
        rv[c] = static_cast<scalar_t>(momentum * unbiased[c] + (1 - momentum) * rv[c]);
      }
    });
  }
  return stats;
}

// The forward into a new tensor, or over the input (`in_place`, which must then be dense).
std::tuple<Tensor, Tensor, Tensor> batch_norm_activation_impl(const Tensor& input, const c10::optional<Tensor>& weight,
                                                              const c10::optional<Tensor>& bias,
                                                              const c10::optional<Tensor>& running_mean,
                                                              const c10::optional<Tensor>& running_var, double momentum,
                                                              double eps, c10::string_view activation, bool in_place,
                                                              const char* op) {
  const Activation act = check_statistics_arguments(input, weight, bias, running_mean, running_var, activation, op);
  const int64_t C = input.size(1);
  const Tensor x = dense(input);
  TORCH_CHECK(!in_place || x.is_same(input), "fusedops: ", op,
              ": input must be contiguous or channels_last (it is overwritten in place)");
  const Tensor out = in_place ? x : at::empty_like(x);
  Tensor mean_t, invstd_t;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "_batch_norm_activation", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const BatchStatistics<scalar_t> stats = batch_statistics<scalar_t>(x, running_mean, running_var, momentum, eps);
    mean_t = stats.mean_t;
    invstd_t = stats.invstd_t;
    apply_into<scalar_t>(x, out, act, Normalization<Acc>(stats.mean, stats.invstd, weight, bias, C));
  });
  return {out, mean_t, invstd_t};
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_activation(const Tensor& input, const c10::optional<Tensor>& weight,
                                                         const c10::optional<Tensor>& bias,
                                                         const c10::optional<Tensor>& running_mean,
                                                         const c10::optional<Tensor>& running_var, double momentum,
                                                         double eps, c10::string_view activation) {
  return batch_norm_activation_impl(input, weight, bias, running_mean, running_var, momentum, eps, activation, false,
                                    "_batch_norm_activation");
}

std::tuple<Tensor, Tensor> batch_norm_activation_(const Tensor& input, const c10::optional<Tensor>& weight,
                                                  const c10::optional<Tensor>& bias,
                                                  const c10::optional<Tensor>& running_mean,
                                                  const c10::optional<Tensor>& running_var, double momentum, double eps,
                                                  c10::string_view activation) {
  auto [out, mean, invstd] = batch_norm_activation_impl(input, weight, bias, running_mean, running_var, momentum, eps,
                                                        activation, true, "_batch_norm_activation_");
  return {mean, invstd};
}

Tensor batch_norm_activation_apply(const Tensor& input, const c10::optional<Tensor>& weight,
                                   const c10::optional<Tensor>& bias, const Tensor& mean, const Tensor& invstd,
                                   c10::string_view activation) {
  constexpr const char* op = "_batch_norm_activation_apply";
  const Activation act = check_arguments(input, weight, bias, activation, op);
  const int64_t C = input.size(1);
  check_channels(mean, C, "mean", op);
  check_channels(invstd, C, "invstd", op);
  const Tensor x = dense(input);
  Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "batch_norm_activation", [&] {
    using Acc = at::opmath_type<scalar_t>;
    apply_into<scalar_t>(x, out, act, Normalization<Acc>(mean, invstd, weight, bias, C));
  });
  return out;
}

// The depthwise convolution g (multiplier 1, no bias, finite taps) of activation(batch_norm(x)) for a channels-last
// x, into the channels-last `out`: the normalised map is never written. Each work item is a strip of output rows of
// one image, run as bands (for_each_expanded_band): a per-thread tile, within band_tile_bytes, holds the band's
// normalised input rows (its halo included), which the depthwise row kernels read while they are in cache.
template <typename scalar_t>
void normalized_depthwise(const Tensor& x, Activation act, const Normalization<at::opmath_type<scalar_t>>& norm,
                          const Tensor& dw_weight, Tensor& out, const ConvGeometry& g) {
  using Acc = at::opmath_type<scalar_t>;
  constexpr int64_t V = at::vec::Vectorized<Acc>::size();
  const int64_t C = g.channels, T = g.kernel_h * g.kernel_w, row_elems = g.in_w * C;
  const int64_t extent = dilated_extent(g.kernel_h, g.dilation_h);
  const int64_t rows_fit = band_rows_fitting(g, row_elems * static_cast<int64_t>(sizeof(scalar_t)));
  const int64_t threads = at::get_num_threads();
  // Work in elements touched: each input element normalised once (its strip's halo rows twice), each output
  // T multiply-adds.
  const double row_work = static_cast<double>(row_elems);
  const StripPlan plan =
      plan_strips(g.out_h, g.out_w, g.batch, threads, rows_fit,
                  static_cast<double>(g.in_h) * row_work + static_cast<double>(g.out_h * g.out_w * C * T),
                  static_cast<double>(std::max<int64_t>(0, extent - g.stride_h)) * row_work);
  const int64_t items = g.batch * plan.strips_per_image;
  const int64_t tile_elems = band_input_rows(g, plan.rows) * row_elems;
  const Tensor taps_t = dw_weight.contiguous();
  const scalar_t* w = taps_t.const_data_ptr<scalar_t>();
  const scalar_t* in = x.const_data_ptr<scalar_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  const int64_t grain = x.numel() + out.numel() < kMinParallelElements ? items : 1;
  // The output (the depthwise output a training step keeps for its backward) past the caches where the call's
  // traffic is beyond them (as a backward's: the step's working set is about twice the call's).
  const bool stream_stores =
      streaming_stores_apply(o, C, g.out_w * C,
                             streams_beyond_cache((x.numel() + out.numel()) * static_cast<int64_t>(sizeof(scalar_t)),
                                                  backward_streaming_bytes()));
  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    // Taps [T][C] in each worker's own scratch (as the standalone depthwise lays them out).
    Acc* taps = thread_scratch<Acc>(T * C + V, ScratchSlot::kWeights);
    lay_out_taps(w, T, C, false, taps);
    scalar_t* tile = thread_scratch<scalar_t>(tile_elems, ScratchSlot::kTileHidden);
    with_activation(act, [&](auto kind) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / plan.strips_per_image;
        const int64_t strip_begin = (i % plan.strips_per_image) * plan.strip_rows;
        const int64_t strip_end = std::min(g.out_h, strip_begin + plan.strip_rows);
        const scalar_t* image = in + n * g.in_h * row_elems;
        scalar_t* out_image = o + n * g.out_h * g.out_w * C;
        for_each_expanded_band(
            g, row_elems, strip_begin, strip_end, plan.rows, tile,
            [&](int64_t first_row, int64_t rows, scalar_t* dst) {
              norm.rows(image, first_row, rows, g.in_w, C, kind, dst);
            },
            [&](const ConvGeometry& band, const RowRange& /*need*/, int64_t r0, int64_t r1) {
              DwNhwcRow<scalar_t, scalar_t> t = nhwc_rows<scalar_t, scalar_t>(
                  {tile, row_elems, C}, taps, C, nullptr, {out_image + r0 * g.out_w * C, g.out_w * C, C}, r0, 0, C);
              t.stream_stores = stream_stores;
              depthwise_nhwc_rows(t, band, r1);
            });
      }
    });
    if (stream_stores) streaming_stores_fence();
  });
}

// fusedops::depthwise_conv2d through the dispatcher, below autograd (the kernel is itself below it).
Tensor depthwise_conv2d_call(const Tensor& input, const Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fusedops::depthwise_conv2d", "")
                             .typed<Tensor(const Tensor&, const Tensor&, const c10::optional<Tensor>&, at::IntArrayRef,
                                           at::IntArrayRef, at::IntArrayRef)>();
  at::AutoDispatchBelowAutograd below_autograd;
  return op.call(input, weight, c10::nullopt, stride, padding, dilation);
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_activation_depthwise(
    const Tensor& input, const c10::optional<Tensor>& weight, const c10::optional<Tensor>& bias,
    const c10::optional<Tensor>& running_mean, const c10::optional<Tensor>& running_var, double momentum, double eps,
    c10::string_view activation, const Tensor& dw_weight, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation) {
  constexpr const char* op = "_batch_norm_activation_depthwise";
  const Activation act = check_statistics_arguments(input, weight, bias, running_mean, running_var, activation, op);
  const int64_t C = input.size(1);
  const ConvGeometry g = depthwise_geometry(input, dw_weight, c10::nullopt, stride, padding, dilation, "dw_weight");
  TORCH_CHECK(g.multiplier == 1, "fusedops: ", op, ": dw_weight must have shape (", C, ", 1, kH, kW) (one filter per ",
              "input channel), got ", dw_weight.sizes());
  const Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  Tensor out = at::empty({g.batch, C, g.out_h, g.out_w}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  Tensor mean_t, invstd_t;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), op, [&] {
    using Acc = at::opmath_type<scalar_t>;
    const BatchStatistics<scalar_t> stats = batch_statistics<scalar_t>(x, running_mean, running_var, momentum, eps);
    mean_t = stats.mean_t;
    invstd_t = stats.invstd_t;
    const Normalization<Acc> norm(stats.mean, stats.invstd, weight, bias, C);
    if (out.numel() == 0) return;
    if (all_finite(dw_weight)) {
      normalized_depthwise<scalar_t>(x, act, norm, dw_weight, out, g);
    } else {
      // The row kernels read the padding as zeros (cpu/finite.h): the normalised map, then the standalone op.
      Tensor normalized = at::empty_like(x);
      apply_into<scalar_t>(x, normalized, act, norm);
      out = depthwise_conv2d_call(normalized, dw_weight, stride, padding, dilation);
    }
  });
  return {out, mean_t, invstd_t};
}

// The backward; `in_place`: grad_input over grad_output (which must then be dense in the input's layout).
std::tuple<Tensor, Tensor, Tensor> batch_norm_activation_backward_impl(
    const Tensor& grad_output, const Tensor& input, const c10::optional<Tensor>& weight,
    const c10::optional<Tensor>& bias, const Tensor& mean_t, const Tensor& invstd_t, c10::string_view activation,
    std::array<bool, 3> output_mask, bool in_place, const char* op) {
  const Activation act = check_arguments(input, weight, bias, activation, op);
  const int64_t C = input.size(1);
  TORCH_CHECK(grad_output.sizes() == input.sizes() && grad_output.scalar_type() == input.scalar_type(),
              "fusedops: ", op, ": grad_output must have the input's shape and dtype, got ", grad_output.sizes(),
              " and ", dtype_name(grad_output.scalar_type()));
  check_channels(mean_t, C, "mean", op);
  check_channels(invstd_t, C, "invstd", op);
  const Tensor x = dense(input);
  const Layout L = layout_of(x);
  // The gradient in the input's layout, so that both walk the same elements.
  const Tensor g =
      grad_output.contiguous(L.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  TORCH_CHECK(!in_place || g.is_same(grad_output), "fusedops: ", op, ": grad_output must be ",
              L.channels_last ? "channels_last" : "contiguous", " like the input (it is overwritten in place)");
  const int64_t count = x.numel() / std::max<int64_t>(C, 1);
  Tensor grad_input, grad_weight, grad_bias;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "batch_norm_activation", [&] {
    using Acc = at::opmath_type<scalar_t>;
    using Vec = at::vec::Vectorized<Acc>;
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    const scalar_t* go = g.const_data_ptr<scalar_t>();
    const std::vector<Acc> mean = channel_array<Acc>(mean_t, C, Acc(0)),
                           invstd = channel_array<Acc>(invstd_t, C, Acc(0));
    const std::vector<Acc> w = channel_array<Acc>(weight, C, Acc(1));
    const std::vector<Acc> scale = scales(invstd, w), b = channel_array<Acc>(bias, C, Acc(0));
    // The gradient at the batch norm's output: the activation's backward at the recomputed normalised input.
    const auto grad_normalized = [go](auto kind, int64_t i, int64_t n, const Vec& centred, const Vec& s, const Vec& t) {
      constexpr Activation A = decltype(kind)::value;
      return A == Activation::kNone ? load_acc(go + i, n)
                                    : activation_backward(A, load_acc(go + i, n), at::vec::fmadd(centred, s, t));
    };
    // SiLU's derivative costs an exponential and a division per element, which made its backward ~4x ReLU6's.
    // With it, the reduction pass also stores that gradient in grad_input's buffer and the elementwise pass reads it
    // back instead of computing it again (float and double only: the buffer holds it exactly, the same bits).
    if (output_mask[0]) grad_input = in_place ? g : at::empty_like(x);
    scalar_t* gi = output_mask[0] ? grad_input.mutable_data_ptr<scalar_t>() : nullptr;
    const bool keep_gradient = gi != nullptr && act == Activation::kSilu && std::is_same_v<scalar_t, Acc>;
    // Per channel: sum of that gradient, and its dot product with (input - mean).
    const auto reduce = [&](auto kind, auto keep) {
      return channel_sums<Acc, 3>(L, {mean.data(), scale.data(), b.data()},
                                  [in, gi, grad_normalized, kind](int64_t i, int64_t n, const ParamVecs<Acc, 3>& p) {
                                    const Vec centred = load_acc(in + i, n) - p[0];
                                    const Vec gb = grad_normalized(kind, i, n, centred, p[1], p[2]);
                                    if constexpr (decltype(keep)::value) store_acc(gi + i, gb, n);
                                    return std::pair{gb, gb * centred};
                                  });
    };
    const auto sums = keep_gradient ? reduce(std::integral_constant<Activation, Activation::kSilu>{}, std::true_type{})
                                    : with_activation(act, [&](auto kind) { return reduce(kind, std::false_type{}); });
    if (output_mask[0]) {
      // ATen's form: (g - sum / count - (x - mean) * dot * invstd^2 / count) * invstd * weight.
      std::vector<Acc> grad_mean(scale.size(), Acc(0)), k(scale.size(), Acc(0));
      for (int64_t c = 0; c < C; ++c) {
        grad_mean[c] = static_cast<Acc>(sums[c] / count);
        k[c] = static_cast<Acc>(sums[C + c] * invstd[c] * invstd[c] / count);
      }
      // (scale = invstd * weight)
      const auto apply = [&](auto kind, auto kept) {
        for_each_vector<Acc, 5>(L, {mean.data(), scale.data(), b.data(), grad_mean.data(), k.data()},
                                [in, gi, grad_normalized, kind](int64_t i, int64_t n, const ParamVecs<Acc, 5>& p) {
                                  const Vec centred = load_acc(in + i, n) - p[0];
                                  Vec gb;
                                  if constexpr (decltype(kept)::value) {
                                    gb = load_acc(gi + i, n);
                                  } else {
                                    gb = grad_normalized(kind, i, n, centred, p[1], p[2]);
                                  }
                                  store_acc(gi + i, (gb - p[3] - centred * p[4]) * p[1], n);
                                });
      };
      if (keep_gradient) {
        apply(std::integral_constant<Activation, Activation::kSilu>{}, std::true_type{});
      } else {
        with_activation(act, [&](auto kind) { apply(kind, std::false_type{}); });
      }
    }
    // grad_weight = dot * invstd, grad_bias = sum, in the parameters' own dtypes.
    const auto per_channel = [&](const Tensor& like, auto value) {
      Tensor out = at::empty({C}, like.options());
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, like.scalar_type(), "batch_norm_activation", [&] {
        scalar_t* o = out.mutable_data_ptr<scalar_t>();
        for (int64_t c = 0; c < C; ++c) o[c] = static_cast<scalar_t>(value(c));
      });
      return out;
    };
    if (output_mask[1] && given(weight)) {
      grad_weight = per_channel(*weight, [&](int64_t c) { return sums[C + c] * invstd[c]; });
    }
    if (output_mask[2] && given(bias)) grad_bias = per_channel(*bias, [&](int64_t c) { return sums[c]; });
  });
  return {grad_input, grad_weight, grad_bias};
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_activation_backward(const Tensor& grad_output, const Tensor& input,
                                                                  const c10::optional<Tensor>& weight,
                                                                  const c10::optional<Tensor>& bias, const Tensor& mean,
                                                                  const Tensor& invstd, c10::string_view activation,
                                                                  std::array<bool, 3> output_mask) {
  return batch_norm_activation_backward_impl(grad_output, input, weight, bias, mean, invstd, activation, output_mask,
                                             false, "_batch_norm_activation_backward");
}

std::tuple<Tensor, Tensor> batch_norm_activation_backward_(const Tensor& grad_output, const Tensor& input,
                                                           const c10::optional<Tensor>& weight,
                                                           const c10::optional<Tensor>& bias, const Tensor& mean,
                                                           const Tensor& invstd, c10::string_view activation,
                                                           std::array<bool, 2> output_mask) {
  auto [grad_input, grad_weight, grad_bias] = batch_norm_activation_backward_impl(
      grad_output, input, weight, bias, mean, invstd, activation, {true, output_mask[0], output_mask[1]}, true,
      "_batch_norm_activation_backward_");
  return {grad_weight, grad_bias};
}

}  // namespace
}  // namespace cpu
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, CPU, m) {
  m.impl("_batch_norm_activation", &fusedops::cpu::batch_norm_activation);
  m.impl("_batch_norm_activation_apply", &fusedops::cpu::batch_norm_activation_apply);
  m.impl("_batch_norm_activation_backward", &fusedops::cpu::batch_norm_activation_backward);
  m.impl("_batch_norm_activation_", &fusedops::cpu::batch_norm_activation_);
  m.impl("_batch_norm_activation_backward_", &fusedops::cpu::batch_norm_activation_backward_);
  m.impl("_batch_norm_activation_depthwise", &fusedops::cpu::batch_norm_activation_depthwise);
}
