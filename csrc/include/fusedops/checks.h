// Argument-check helpers shared by every op's C++ checks.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace fusedops {

// A dtype as Python spells it ("torch.float32"), so C++ and Python checks print identical messages.
inline std::string dtype_name(at::ScalarType t) {
  return "torch." + std::string(c10::getDtypeNames(t).first);
}

// Whether an optional tensor argument was given (present and defined: Python's None arrives as either absent).
inline bool given(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined();
}

}  // namespace fusedops
