// Activation kinds of the fused ops, shared by every backend. Schemas take them as strings
// ("none", "relu", "relu6", "hardswish", "silu"); kernels receive the parsed enum.
#pragma once

#include <c10/util/Exception.h>

#include <array>
#include <string_view>

namespace fusedops {

enum class Activation : int { kNone = 0, kRelu = 1, kRelu6 = 2, kHardswish = 3, kSilu = 4 };

// The schemas' names of the activations, indexed by Activation.
inline constexpr std::array<std::string_view, 5> kActivationNames = {"none", "relu", "relu6", "hardswish", "silu"};

constexpr std::string_view activation_name(Activation a) {
  return kActivationNames[static_cast<int>(a)];
}

// Whether act'(z) can be read from act(z) as well as from z (none, relu, relu6: the derivative is 0 or 1, and
// act(z) sits at a bound exactly where it is 0), so that a backward may apply the activation in place and drop z.
constexpr bool activation_grad_reads_output(Activation a) {
  return a == Activation::kNone || a == Activation::kRelu || a == Activation::kRelu6;
}

// Parses an activation name; `argument` names the schema argument in the error.
inline Activation parse_activation(std::string_view name, const char* argument) {
  for (size_t i = 0; i < kActivationNames.size(); ++i) {
    if (name == kActivationNames[i]) return static_cast<Activation>(i);
  }
  TORCH_CHECK(false, "fusedops: ", argument, " must be one of None, 'relu', 'relu6', 'hardswish', 'silu'; got '",
              std::string(name), "'");
  return Activation::kNone;
}

}  // namespace fusedops
