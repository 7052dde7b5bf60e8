// The method fusedops._C._eager_op of the extension module (csrc/runtime/eager_call.cpp).
#pragma once

#include <Python.h>

namespace fusedops {

extern PyMethodDef eager_op_method;

}  // namespace fusedops
