// fusedops._C._eager_op(name[, template]): a Python callable that runs op fusedops::<name> through the
// dispatcher exactly as torch.ops.fusedops.<name> does (every dispatch key, the C++ Autograd kernel
// included), minus the generic Python layer of torch.ops.
//
// Why: that layer converts each argument by matching it against the schema's types, ~1-2.5 us a call
// (more than a 1x192x7x7 channel_shuffle takes to move its data). Here each argument is converted by the
// kind read from the schema once, when the callable is made.
//
// The callable takes the schema's arguments positionally and accepts only their plain Python types (a
// tensor, None for an optional one, an int, a tuple or list of ints, or for int[N] a single int, a bool,
// a float, a str). For anything else -- another type (numpy ints, torch.Size...), a tensor with a
// __torch_function__ override (any subclass but nn.Parameter's kind), an active torch-function mode --
// it returns NotImplemented, and the caller takes its regular path, which converts, checks and
// overrides. Errors of the op itself (its argument checks) are raised as through torch.ops. Eager calls
// only: the Python wrappers keep torch.ops under torch.compile and torch.export tracing.
//
// With a template (a tuple of the schema's leading arguments, `...` where the call gives one), the
// callable is bound: the template's arguments are converted once, when it is made, and each call takes
// only the `...` ones, in order (the rest of the schema's arguments take their defaults). A frozen
// block's prepared call binds its weights and options so: converting 18 arguments per call is ~0.7 us
// of its ~10 us fixed cost. A template with an argument that is not of a plain type makes None (the
// caller keeps the unbound callable).
#include <Python.h>

#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include "fusedops/eager_call.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace fusedops {
namespace {

enum class ArgKind { Tensor, OptionalTensor, Int, IntList, Bool, BoolList, Float, Str };

struct EagerOp {
  explicit EagerOp(c10::OperatorHandle h) : handle(std::move(h)) {}
  c10::OperatorHandle handle;
  std::vector<ArgKind> kinds;
  std::vector<c10::IValue> defaults;  // per argument; None where it has none
  std::vector<int64_t> list_sizes;    // per argument: N of int[N], else 0
  size_t required = 0;                // leading arguments without defaults
  // Bound (made with a template): per argument, its converted value, or None where the call gives it
  // (`holes` marks those); empty when not bound.
  std::vector<c10::IValue> bound;
  std::vector<bool> holes;
  size_t hole_count = 0;
};

constexpr const char* kCapsuleName = "fusedops.EagerOp";

ArgKind kind_of(const c10::Argument& arg, const std::string& op) {
  const c10::TypePtr& t = arg.type();
  switch (t->kind()) {
    case c10::TypeKind::TensorType: return ArgKind::Tensor;
    case c10::TypeKind::IntType: return ArgKind::Int;
    case c10::TypeKind::BoolType: return ArgKind::Bool;
    case c10::TypeKind::FloatType: return ArgKind::Float;
    case c10::TypeKind::StringType: return ArgKind::Str;
    case c10::TypeKind::OptionalType:
      if (t->castRaw<c10::OptionalType>()->getElementType()->kind() == c10::TypeKind::TensorType) {
        return ArgKind::OptionalTensor;
      }
      break;
    case c10::TypeKind::ListType: {
      const c10::TypeKind elem = t->castRaw<c10::ListType>()->getElementType()->kind();
      if (elem == c10::TypeKind::IntType) return ArgKind::IntList;
      if (elem == c10::TypeKind::BoolType) return ArgKind::BoolList;
      break;
    }
    default: break;
  }
  TORCH_CHECK(false, "fusedops: _eager_op does not support argument '", arg.name(), "' of type ", t->str(), " of ", op);
}

// torch._C._disabled_torch_function_impl: the __torch_function__ of tensor subclasses that opt out of
// overriding (nn.Parameter).
PyObject* disabled_torch_function() {
  static PyObject* impl = [] {
    PyObject* torch_c = PyImport_ImportModule("torch._C");
    if (torch_c == nullptr) throw python_error();
    PyObject* f = PyObject_GetAttrString(torch_c, "_disabled_torch_function_impl");
    Py_DECREF(torch_c);
    if (f == nullptr) throw python_error();
    return f;  // kept for the life of the process
  }();
  return impl;
}

// Whether `obj`, known to be a tensor, may skip __torch_function__ handling: a plain torch.Tensor, or a
// subclass whose __torch_function__ is the disabled one. The last such subclass seen is remembered (one
// attribute lookup per new type, not per call), with a reference so that its address cannot be reused by
// another type.
bool plain_tensor(PyObject* obj) {
  PyTypeObject* type = Py_TYPE(obj);
  if (type == reinterpret_cast<PyTypeObject*>(THPVariableClass)) return true;
  static PyTypeObject* plain_subclass = nullptr;
  if (type == plain_subclass) return true;
  PyObject* tf = PyObject_GetAttrString(reinterpret_cast<PyObject*>(type), "__torch_function__");
  if (tf == nullptr) throw python_error();
  const bool plain = tf == disabled_torch_function();
  Py_DECREF(tf);
  if (plain) {
    Py_INCREF(type);
    Py_XDECREF(plain_subclass);
    plain_subclass = type;
  }
  return plain;
}

// Plain Python ints only (not bool, not numpy integers: those take the regular path).
bool plain_int(PyObject* obj, int64_t& out) {
  if (!PyLong_CheckExact(obj)) return false;
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
  if (overflow != 0 || (v == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    return false;
  }
  out = v;
  return true;
}

// A tuple or list of plain ints (of `size` items when size > 0), or for size > 0 one int repeated.
bool plain_int_list(PyObject* obj, int64_t size, std::vector<int64_t>& out) {
  int64_t v = 0;
  if (size > 0 && plain_int(obj, v)) {
    out.assign(size, v);
    return true;
  }
  if (!PyTuple_CheckExact(obj) && !PyList_CheckExact(obj)) return false;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(obj);
  if (size > 0 && n != size) return false;
  PyObject** items = PySequence_Fast_ITEMS(obj);
  out.resize(n);
  for (Py_ssize_t k = 0; k < n; ++k) {
    if (!plain_int(items[k], out[k])) return false;
  }
  return true;
}

bool plain_bool_list(PyObject* obj, int64_t size, c10::List<bool>& out) {
  if (!PyTuple_CheckExact(obj) && !PyList_CheckExact(obj)) return false;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(obj);
  if (size > 0 && n != size) return false;
  PyObject** items = PySequence_Fast_ITEMS(obj);
  for (Py_ssize_t k = 0; k < n; ++k) {
    if (!PyBool_Check(items[k])) return false;
    out.push_back(items[k] == Py_True);
  }
  return true;
}

// Converts argument i onto the stack; false when it is not of a plain type (the regular path's job).
bool push_argument(const EagerOp& op, size_t i, PyObject* obj, torch::jit::Stack& stack) {
  switch (op.kinds[i]) {
    case ArgKind::OptionalTensor:
      if (obj == Py_None) {
        stack.emplace_back();
        return true;
      }
      [[fallthrough]];
    case ArgKind::Tensor:
      if (!THPVariable_Check(obj) || !plain_tensor(obj)) return false;
      stack.emplace_back(THPVariable_Unpack(obj));
      return true;
    case ArgKind::Int: {
      int64_t v = 0;
      if (!plain_int(obj, v)) return false;
      stack.emplace_back(v);
      return true;
    }
    case ArgKind::IntList: {
      std::vector<int64_t> v;
      if (!plain_int_list(obj, op.list_sizes[i], v)) return false;
      stack.emplace_back(std::move(v));
      return true;
    }
    case ArgKind::Bool:
      if (!PyBool_Check(obj)) return false;
      stack.emplace_back(obj == Py_True);
      return true;
    case ArgKind::BoolList: {
      c10::List<bool> v;
      if (!plain_bool_list(obj, op.list_sizes[i], v)) return false;
      stack.emplace_back(std::move(v));
      return true;
    }
    case ArgKind::Float: {
      if (PyFloat_CheckExact(obj)) {
        stack.emplace_back(PyFloat_AS_DOUBLE(obj));
        return true;
      }
      int64_t v = 0;
      if (!plain_int(obj, v)) return false;
      stack.emplace_back(static_cast<double>(v));
      return true;
    }
    case ArgKind::Str: {
      if (!PyUnicode_CheckExact(obj)) return false;
      Py_ssize_t n = 0;
      const char* utf8 = PyUnicode_AsUTF8AndSize(obj, &n);
      if (utf8 == nullptr) throw python_error();
      stack.emplace_back(std::string(utf8, n));
      return true;
    }
  }
  return false;
}

PyObject* wrap(c10::IValue&& v) {
  if (v.isTensor()) return THPVariable_Wrap(std::move(v).toTensor());
  TORCH_CHECK(v.isNone(), "fusedops: _eager_op cannot return a ", v.tagKind());
  Py_RETURN_NONE;
}

// Releases the GIL for the op's run, as torch.ops does (other Python threads go on meanwhile).
struct GilRelease {
  PyThreadState* state = PyEval_SaveThread();
  ~GilRelease() {
    PyEval_RestoreThread(state);
  }
};

// Runs the op on `stack` (the GIL released, as torch.ops does) and returns its results.
PyObject* run(const EagerOp& op, torch::jit::Stack& stack) {
  {
    GilRelease no_gil;
    op.handle.callBoxed(stack);
  }
  if (stack.size() == 1) return wrap(std::move(stack[0]));
  PyObject* out = PyTuple_New(static_cast<Py_ssize_t>(stack.size()));
  if (out == nullptr) throw python_error();
  for (size_t k = 0; k < stack.size(); ++k) PyTuple_SET_ITEM(out, k, wrap(std::move(stack[k])));
  return out;
}

PyObject* call_eager_op(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const EagerOp& op = *static_cast<EagerOp*>(PyCapsule_GetPointer(self, kCapsuleName));
  const size_t n = op.kinds.size();
  if (at::impl::torch_function_mode_enabled()) Py_RETURN_NOTIMPLEMENTED;
  torch::jit::Stack stack;
  stack.reserve(n);
  if (!op.holes.empty()) {
    if (static_cast<size_t>(nargs) != op.hole_count) Py_RETURN_NOTIMPLEMENTED;
    Py_ssize_t given = 0;
    for (size_t i = 0; i < n; ++i) {
      if (!op.holes[i]) {
        stack.push_back(op.bound[i]);
      } else if (!push_argument(op, i, args[given++], stack)) {
        Py_RETURN_NOTIMPLEMENTED;
      }
    }
    return run(op, stack);
  }
  if (static_cast<size_t>(nargs) < op.required || static_cast<size_t>(nargs) > n) Py_RETURN_NOTIMPLEMENTED;
  for (size_t i = 0; i < n; ++i) {
    if (i >= static_cast<size_t>(nargs)) {
      stack.push_back(op.defaults[i]);
    } else if (!push_argument(op, i, args[i], stack)) {
      Py_RETURN_NOTIMPLEMENTED;
    }
  }
  return run(op, stack);
  END_HANDLE_TH_ERRORS
}

// Binds `op` to `template_` (see the top of the file): false where an argument is not of a plain type, or
// the template is longer than the schema or leaves out an argument without a default.
bool bind(EagerOp& op, PyObject* template_) {
  const size_t n = op.kinds.size();
  const Py_ssize_t given = PyTuple_GET_SIZE(template_);
  if (static_cast<size_t>(given) > n || static_cast<size_t>(given) < op.required) return false;
  op.holes.assign(n, false);
  torch::jit::Stack converted;
  converted.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    if (i >= static_cast<size_t>(given)) {
      converted.push_back(op.defaults[i]);
      continue;
    }
    PyObject* obj = PyTuple_GET_ITEM(template_, i);
    if (obj == Py_Ellipsis) {
      op.holes[i] = true;
      ++op.hole_count;
      converted.emplace_back();
    } else if (!push_argument(op, i, obj, converted)) {
      return false;
    }
  }
  op.bound = std::move(converted);
  return true;
}

void destroy_eager_op(PyObject* capsule) {
  delete static_cast<EagerOp*>(PyCapsule_GetPointer(capsule, kCapsuleName));
}

PyMethodDef call_def = {"eager_op", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(call_eager_op)),
                        METH_FASTCALL, "Runs a fusedops op eagerly (see fusedops._C._eager_op)."};

PyObject* make_eager_op(PyObject* /*module*/, PyObject* args) {
  HANDLE_TH_ERRORS
  const char* name = nullptr;
  PyObject* template_ = nullptr;
  if (!PyArg_ParseTuple(args, "s|O!:_eager_op", &name, &PyTuple_Type, &template_)) return nullptr;
  const std::string qualified = std::string("fusedops::") + name;
  auto op = std::make_unique<EagerOp>(c10::Dispatcher::singleton().findSchemaOrThrow(qualified.c_str(), ""));
  const c10::FunctionSchema& schema = op->handle.schema();
  TORCH_CHECK(!schema.is_mutable(), "fusedops: _eager_op does not support the mutable op ", qualified);
  bool defaults_started = false;
  for (const c10::Argument& arg : schema.arguments()) {
    TORCH_CHECK(!arg.kwarg_only(), "fusedops: _eager_op does not support keyword-only argument '", arg.name(), "' of ",
                qualified);
    op->kinds.push_back(kind_of(arg, qualified));
    op->list_sizes.push_back(arg.N().value_or(0));
    op->defaults.push_back(arg.default_value().value_or(c10::IValue()));
    defaults_started = defaults_started || arg.default_value().has_value();
    if (!defaults_started) ++op->required;
  }
  for (const c10::Argument& ret : schema.returns()) {
    const c10::TypeKind k = ret.type()->kind();
    TORCH_CHECK(k == c10::TypeKind::TensorType, "fusedops: _eager_op supports Tensor returns only (", qualified, ")");
  }
  if (template_ != nullptr && !bind(*op, template_)) Py_RETURN_NONE;
  PyObject* capsule = PyCapsule_New(op.get(), kCapsuleName, destroy_eager_op);
  if (capsule == nullptr) throw python_error();
  op.release();
  PyObject* fn = PyCFunction_New(&call_def, capsule);
  Py_DECREF(capsule);
  return fn;
  END_HANDLE_TH_ERRORS
}

}  // namespace

PyMethodDef eager_op_method = {
    "_eager_op", make_eager_op, METH_VARARGS,
    "_eager_op(name[, template]): a callable running fusedops::<name> eagerly, or returning NotImplemented for "
    "arguments it leaves to torch.ops; with a template, bound to its arguments (None where it cannot be): each call "
    "gives those at its `...` (see csrc/runtime/eager_call.cpp)."};

}  // namespace fusedops
