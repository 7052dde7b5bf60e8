// Schemas of fusedops::channel_shuffle, fusedops::concat_shuffle and its backward. Argument checks:
// csrc/include/fusedops/shuffle_geometry.h; kernels: csrc/cpu/channel_shuffle.cpp,
// csrc/cuda/channel_shuffle.cu; native autograd: csrc/autograd/channel_shuffle.cpp; fake kernels and the
// Triton mirrors' autograd: fusedops/ops/channel_shuffle.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fusedops, m) {
  // Exactly torch.nn.functional.channel_shuffle(input, groups) for 4-D input: output channel
  // j * groups + i is input channel i * (C / groups) + j. The output takes the input's memory format.
  // Its gradient is channel_shuffle(grad, C / groups).
  m.def("channel_shuffle(Tensor input, int groups) -> Tensor");
  // channel_shuffle(torch.cat([a, b], 1), groups) without the concatenation. The output is channels-last
  // when a and b both are, else NCHW (torch.cat's rule).
  m.def("concat_shuffle(Tensor a, Tensor b, int groups) -> Tensor");
  // (grad_a, grad_b) of concat_shuffle(a, b, groups) where a has channels_a channels: the inverse shuffle
  // of grad, split at channels_a. Both take grad's memory format.
  m.def("_concat_shuffle_backward(Tensor grad, int channels_a, int groups) -> (Tensor, Tensor)");
}
