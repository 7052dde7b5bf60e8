// The native ops as C++ calls them through the dispatcher: per op its qualified name and its signature (the
// C++ types of its schema in csrc/<op>.cpp), written once here, and one typed handle per op for every caller
// (the autograd kernels, the dwpw backward's depthwise stage).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <optional>
#include <string_view>
#include <tuple>
#include <utility>

namespace fusedops::ops {

using Tensor = at::Tensor;
using OptionalTensor = std::optional<at::Tensor>;
using IntArrayRef = c10::IntArrayRef;

struct depthwise_conv2d {
  static constexpr const char* name = "fusedops::depthwise_conv2d";
  using Signature = Tensor(const Tensor& input, const Tensor& weight, const OptionalTensor& bias, IntArrayRef stride,
                           IntArrayRef padding, IntArrayRef dilation);
};

struct depthwise_conv2d_backward {
  static constexpr const char* name = "fusedops::_depthwise_conv2d_backward";
  using Signature = std::tuple<Tensor, Tensor, Tensor>(const Tensor& grad_output, const Tensor& input,
                                                       const Tensor& weight, IntArrayRef stride, IntArrayRef padding,
                                                       IntArrayRef dilation, std::array<bool, 3> output_mask);
};

struct dwpw_conv2d {
  static constexpr const char* name = "fusedops::dwpw_conv2d";
  using Signature = Tensor(const Tensor& input, const Tensor& dw_weight, const OptionalTensor& dw_bias,
                           const Tensor& pw_weight, const OptionalTensor& pw_bias, IntArrayRef stride,
                           IntArrayRef padding, IntArrayRef dilation, c10::string_view mid_activation,
                           c10::string_view out_activation, const OptionalTensor& packed_weights);
};

struct dwpw_conv2d_backward {
  static constexpr const char* name = "fusedops::_dwpw_conv2d_backward";
  using Signature = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
      const Tensor& grad_output, const Tensor& input, const Tensor& dw_weight, const OptionalTensor& dw_bias,
      const Tensor& pw_weight, const OptionalTensor& pw_bias, IntArrayRef stride, IntArrayRef padding,
      IntArrayRef dilation, c10::string_view mid_activation, c10::string_view out_activation,
      std::array<bool, 5> output_mask, const OptionalTensor& output);
};

struct inverted_residual {
  static constexpr const char* name = "fusedops::inverted_residual";
  using Signature = Tensor(const Tensor& input, const OptionalTensor& expand_weight, const OptionalTensor& expand_bias,
                           const Tensor& dw_weight, const OptionalTensor& dw_bias, const Tensor& project_weight,
                           const OptionalTensor& project_bias, const OptionalTensor& se_reduce_weight,
                           const OptionalTensor& se_reduce_bias, const OptionalTensor& se_expand_weight,
                           const OptionalTensor& se_expand_bias, IntArrayRef stride, IntArrayRef padding,
                           IntArrayRef dilation, c10::string_view activation, bool residual,
                           c10::string_view se_activation, c10::string_view se_gate,
                           const OptionalTensor& packed_weights);
};

struct inverted_residual_backward {
  static constexpr const char* name = "fusedops::_inverted_residual_backward";
  using Signature = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
      const Tensor& grad_output, const Tensor& input, const OptionalTensor& expand_weight,
      const OptionalTensor& expand_bias, const Tensor& dw_weight, const OptionalTensor& dw_bias,
      const Tensor& project_weight, const OptionalTensor& project_bias, const OptionalTensor& se_reduce_weight,
      const OptionalTensor& se_reduce_bias, const OptionalTensor& se_expand_weight,
      const OptionalTensor& se_expand_bias, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
      c10::string_view activation, bool residual, c10::string_view se_activation, c10::string_view se_gate,
      std::array<bool, 11> output_mask);
};

struct ghost_module {
  static constexpr const char* name = "fusedops::ghost_module";
  using Signature = Tensor(const Tensor& input, const Tensor& primary_weight, const OptionalTensor& primary_bias,
                           const Tensor& cheap_weight, const OptionalTensor& cheap_bias, const OptionalTensor& residual,
                           int64_t out_channels, IntArrayRef stride, c10::string_view activation,
                           const OptionalTensor& packed_weights);
};

struct ghost_module_backward {
  static constexpr const char* name = "fusedops::_ghost_module_backward";
  using Signature = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
      const Tensor& grad_output, const Tensor& input, const Tensor& primary_weight, const OptionalTensor& primary_bias,
      const Tensor& cheap_weight, const OptionalTensor& cheap_bias, int64_t out_channels, IntArrayRef stride,
      c10::string_view activation, std::array<bool, 5> output_mask);
};

struct shufflenet_v2_unit {
  static constexpr const char* name = "fusedops::shufflenet_v2_unit";
  using Signature = Tensor(const Tensor& input, const Tensor& expand_weight, const OptionalTensor& expand_bias,
                           const Tensor& dw_weight, const OptionalTensor& dw_bias, const Tensor& project_weight,
                           const OptionalTensor& project_bias, const OptionalTensor& shortcut_dw_weight,
                           const OptionalTensor& shortcut_dw_bias, const OptionalTensor& shortcut_pw_weight,
                           const OptionalTensor& shortcut_pw_bias, IntArrayRef stride, IntArrayRef padding,
                           IntArrayRef dilation, c10::string_view activation, const OptionalTensor& packed_weights);
};

struct shufflenet_v2_unit_backward {
  static constexpr const char* name = "fusedops::_shufflenet_v2_unit_backward";
  using Signature = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
      const Tensor& grad_output, const Tensor& input, const Tensor& expand_weight, const OptionalTensor& expand_bias,
      const Tensor& dw_weight, const OptionalTensor& dw_bias, const Tensor& project_weight,
      const OptionalTensor& project_bias, const OptionalTensor& shortcut_dw_weight,
      const OptionalTensor& shortcut_dw_bias, const OptionalTensor& shortcut_pw_weight,
      const OptionalTensor& shortcut_pw_bias, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
      c10::string_view activation, std::array<bool, 11> output_mask);
};

struct channel_shuffle {
  static constexpr const char* name = "fusedops::channel_shuffle";
  using Signature = Tensor(const Tensor& input, int64_t groups);
};

struct concat_shuffle {
  static constexpr const char* name = "fusedops::concat_shuffle";
  using Signature = Tensor(const Tensor& a, const Tensor& b, int64_t groups);
};

struct concat_shuffle_backward {
  static constexpr const char* name = "fusedops::_concat_shuffle_backward";
  using Signature = std::tuple<Tensor, Tensor>(const Tensor& grad, int64_t channels_a, int64_t groups);
};

// Op's name without the "fusedops::" namespace, as the schema spells it.
template <class Op>
constexpr std::string_view unqualified_name() {
  constexpr std::string_view name = Op::name;
  return name.substr(name.find("::") + 2);
}

// Op's typed dispatcher handle: looked up at the first call, then kept.
template <class Op>
const c10::TypedOperatorHandle<typename Op::Signature>& handle() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow(Op::name, "").template typed<typename Op::Signature>();
  return op;
}

// Calls Op through the dispatcher, from the current dispatch key down.
template <class Op, class... Args>
decltype(auto) call(Args&&... args) {
  return handle<Op>().call(std::forward<Args>(args)...);
}

}  // namespace fusedops::ops
