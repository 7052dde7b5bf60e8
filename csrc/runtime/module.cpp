// The extension module fusedops._C and the library-wide ops.
//
// `import fusedops._C` runs the static TORCH_LIBRARY initialisers of the op files: every op is a
// torch.ops.fusedops op. The module itself (no pybind11) has two methods: _eager_op, the fast eager
// entry to those ops (csrc/runtime/eager_call.cpp), and _shared_facts, the facts Python must state exactly
// as the C++ does.
#include <Python.h>
#include <torch/csrc/Exceptions.h>
#include <torch/library.h>

#include "fusedops/autograd.h"
#include "fusedops/cpu/cache_size.h"
#include "fusedops/dwpw.h"
#include "fusedops/eager_call.h"

#include <string>
#include <string_view>
#include <vector>

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#ifndef FUSEDOPS_CPU_ARCH
#define FUSEDOPS_CPU_ARCH "default"
#endif
#ifndef FUSEDOPS_CUDA_ARCH_LIST
#define FUSEDOPS_CUDA_ARCH_LIST ""
#endif

namespace fusedops {
namespace {

PyObject* str_of(std::string_view s) {
  PyObject* str = PyUnicode_FromStringAndSize(s.data(), static_cast<Py_ssize_t>(s.size()));
  if (str == nullptr) throw python_error();
  return str;
}

// A tuple of the strings name(item) of `items`.
template <typename Items, typename Name>
PyObject* tuple_of(const Items& items, Name name) {
  PyObject* tuple = PyTuple_New(static_cast<Py_ssize_t>(items.size()));
  if (tuple == nullptr) throw python_error();
  try {
    Py_ssize_t k = 0;
    for (const auto& item : items) PyTuple_SET_ITEM(tuple, k++, str_of(name(item)));
  } catch (...) {
    Py_DECREF(tuple);
    throw;
  }
  return tuple;
}

void set_item(PyObject* dict, const char* key, PyObject* value) {
  const int failed = PyDict_SetItemString(dict, key, value);
  Py_DECREF(value);
  if (failed != 0) throw python_error();
}

// fusedops._C._shared_facts(): what the Python side (the Triton mirrors' autograd) states exactly as the C++
// one, from the C++ sources:
//   double_backward_message         the error of differentiating a backward op, "{op}" where the forward op's
//                                   name goes (str.format(op=name))
//   dwpw_saved_output_activations   dwpw_conv2d's output activations for which its output is saved for the
//   dwpw_saved_output_dtypes        backward, and the dtypes ("float32", ...) for which it is
PyObject* shared_facts(PyObject* /*module*/, PyObject* /*unused*/) {
  HANDLE_TH_ERRORS
  PyObject* facts = PyDict_New();
  if (facts == nullptr) throw python_error();
  try {
    set_item(facts, "double_backward_message", str_of(autograd::kDoubleBackwardMessage));
    set_item(facts, "dwpw_saved_output_activations", tuple_of(kDwpwSavedOutputActivations, activation_name));
    set_item(facts, "dwpw_saved_output_dtypes",
             tuple_of(kDwpwSavedOutputDtypes, [](at::ScalarType t) { return c10::getDtypeNames(t).first; }));
  } catch (...) {
    Py_DECREF(facts);
    throw;
  }
  return facts;
  END_HANDLE_TH_ERRORS
}

PyMethodDef shared_facts_method = {"_shared_facts", shared_facts, METH_NOARGS,
                                   "_shared_facts(): facts the Python side states exactly as the C++ one, by key "
                                   "(see csrc/runtime/module.cpp)."};

}  // namespace
}  // namespace fusedops

PyMODINIT_FUNC PyInit__C(void) {
  static PyMethodDef methods[] = {
      fusedops::eager_op_method, fusedops::shared_facts_method, {nullptr, nullptr, 0, nullptr}};
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

// The cache sizes the CPU kernels' tuning follows: [L1d, L2, L3] bytes (cpu/cache_size.h).
std::vector<int64_t> cpu_caches() {
  const cpu::CpuCaches& caches = cpu::cpu_caches();
  return {caches.l1d, caches.l2, caches.l3};
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
  m.def("_cpu_caches() -> int[]", &fusedops::cpu_caches);
}
