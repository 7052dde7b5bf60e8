// The schemas' `str` arguments arrive as c10::string_view: the same type as std::string_view from torch 2.7 on,
// a class of its own in torch 2.6 (the oldest this builds against). These convert either way without a copy.
#pragma once

#include <c10/util/string_view.h>

#include <string_view>

namespace fusedops {

inline std::string_view std_view(c10::string_view s) {
  return {s.data(), s.size()};
}

inline c10::string_view schema_str(std::string_view s) {
  return {s.data(), s.size()};
}

}  // namespace fusedops
