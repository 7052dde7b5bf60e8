// Schema of fusedops::_linear_activation, the models' classifiers and pooled heads. Kernel:
// csrc/cpu/linear_activation.cpp; fake kernel and the modules' use of it: fusedops/ops/linear_activation.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fusedops, m) {
  // activation(linear(input, weight, bias)) for a 2-D input (rows, in_features), for inference (no autograd): the
  // weight (out_features, in_features) read once for all the rows, the activation applied before the output (rows,
  // out_features) is stored. Meant for a few rows (a classifier at a small batch), where the product is bound by
  // reading the weight.
  m.def("_linear_activation(Tensor input, Tensor weight, Tensor? bias, str activation) -> Tensor");
}
