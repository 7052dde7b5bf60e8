// Schema of fusedops::_conv2d_activation, the models' stems. Kernel: csrc/cpu/conv2d_activation.cpp; fake kernel
// and the modules' use of it: fusedops/ops/conv2d_activation.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fusedops, m) {
  // activation(conv2d(input, weight, bias, stride, padding, dilation)) with groups 1, for inference (no autograd):
  // one pass, the activation applied before the output is stored. The output is channels-last when the input or
  // the weight is (torch.nn.functional.conv2d's rule), else NCHW. The CPU kernel is a direct convolution, meant for
  // inputs of few channels (an image's: the stems of MobileNet, ShuffleNet, GhostNet), where oneDNN's convolution
  // runs at a third of the machine's multiply-add rate.
  m.def(
      "_conv2d_activation(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, "
      "str activation) -> Tensor");
}
