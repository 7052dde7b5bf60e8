// Activation kinds of the fused ops, shared by every backend. Schemas take them as strings
// ("none", "relu", "relu6", "hardswish"); kernels receive the parsed enum.
#pragma once

#include <c10/util/Exception.h>

#include <array>
#include <string_view>

namespace fusedops {

enum class Activation : int { kNone = 0, kRelu = 1, kRelu6 = 2, kHardswish = 3 };

// The schemas' names of the activations, indexed by Activation.
inline constexpr std::array<std::string_view, 4> kActivationNames = {"none", "relu", "relu6", "hardswish"};

constexpr std::string_view activation_name(Activation a) {
  return kActivationNames[static_cast<int>(a)];
}

// Parses an activation name; `argument` names the schema argument in the error.
inline Activation parse_activation(std::string_view name, const char* argument) {
  for (size_t i = 0; i < kActivationNames.size(); ++i) {
    if (name == kActivationNames[i]) return static_cast<Activation>(i);
  }
  TORCH_CHECK(false, "fusedops: ", argument, " must be one of None, 'relu', 'relu6', 'hardswish'; got '",
              std::string(name), "'");
  return Activation::kNone;
}

}  // namespace fusedops
