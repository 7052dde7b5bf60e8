// The extension module and the library-wide ops.
//
// `import fusedops._C` runs the static TORCH_LIBRARY initialisers of the op files: every op is a
// torch.ops.fusedops op. The module itself (no pybind11) has one method, _eager_op, the fast eager
// entry to those ops (csrc/eager_call.cpp).
#include <Python.h>
#include <torch/library.h>

#include "fusedops/eager_call.h"

#include <string>

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#ifndef FUSEDOPS_CPU_ARCH
#define FUSEDOPS_CPU_ARCH "default"
#endif
#ifndef FUSEDOPS_CUDA_ARCH_LIST
#define FUSEDOPS_CUDA_ARCH_LIST ""
#endif

PyMODINIT_FUNC PyInit__C(void) {
  static PyMethodDef methods[] = {fusedops::eager_op_method, {nullptr, nullptr, 0, nullptr}};
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}

namespace fusedops {
namespace {

// CUDA runtime version the kernels were compiled against, or -1 when they were not built.
int64_t cuda_version() {
#ifdef WITH_CUDA
  return CUDART_VERSION;
#else
  return -1;
#endif
}

// Instruction set the CPU kernels were vectorised for ("avx512", "avx2" or "default").
std::string cpu_arch() {
  return FUSEDOPS_CPU_ARCH;
}

// Comma-separated CUDA architectures compiled in ("" without CUDA).
std::string cuda_arch_list() {
  return FUSEDOPS_CUDA_ARCH_LIST;
}

}  // namespace
}  // namespace fusedops

TORCH_LIBRARY(fusedops, m) {
  m.def("_cuda_version() -> int", &fusedops::cuda_version);
  m.def("_cpu_arch() -> str", &fusedops::cpu_arch);
  m.def("_cuda_arch_list() -> str", &fusedops::cuda_arch_list);
}
