// Activation kinds of the fused ops, shared by every backend. Schemas take them as strings
// ("none", "relu", "relu6", "hardswish"); kernels receive the parsed enum.
#pragma once

#include <c10/util/Exception.h>

#include <string_view>

namespace fusedops {

enum class Activation : int { kNone = 0, kRelu = 1, kRelu6 = 2, kHardswish = 3 };

// Parses an activation name; `argument` names the schema argument in the error.
inline Activation parse_activation(std::string_view name, const char* argument) {
  if (name == "none") return Activation::kNone;
  if (name == "relu") return Activation::kRelu;
  if (name == "relu6") return Activation::kRelu6;
  if (name == "hardswish") return Activation::kHardswish;
  TORCH_CHECK(false, "fusedops: ", argument, " must be one of None, 'relu', 'relu6', 'hardswish'; got '",
              std::string(name), "'");
  return Activation::kNone;
}

}  // namespace fusedops
