// Argument-check helpers shared by every op's C++ checks.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace fusedops {

// A dtype as Python spells it ("torch.float32"), so C++ and Python checks print identical messages.
inline std::string dtype_name(at::ScalarType t) {
  return "torch." + std::string(c10::getDtypeNames(t).first);
}

}  // namespace fusedops
