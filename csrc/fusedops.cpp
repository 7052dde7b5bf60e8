// The extension module and the library-wide ops.
//
// `import fusedops._C` only has to run the static TORCH_LIBRARY initialisers of the op files, so the
// module itself is an empty stub (no pybind11): every op is reached through torch.ops.fusedops.
#include <Python.h>
#include <torch/library.h>

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
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
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
