// Argument checks, sizes and entry points shared by the channel-shuffle ops on every backend.
//
// All three ops are one "shuffled copy": the channels of one or two source tensors, concatenated, are
// permuted into one or two destination tensors, concatenated, where destination channel d reads source
// channel (d % groups) * (channels / groups) + d / groups:
//
//   channel_shuffle(x, g)                 one source, one destination, groups g
//   concat_shuffle(a, b, g)               sources a and b, one destination, groups g
//   _concat_shuffle_backward(grad, Ca, g) one source, destinations of Ca and C - Ca channels, groups C / g
//
// (the inverse of a shuffle with groups g is the shuffle with groups C / g).
#pragma once

#include "fusedops/checks.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>
#include <vector>

namespace fusedops {

struct ShuffleGeometry {
  int64_t batch = 0;
  int64_t channels = 0;  // concatenated channels (sources and destinations alike)
  int64_t height = 0, width = 0;
  int64_t groups = 1;  // of the copy itself (C / g for the backward of a shuffle with g groups)
  at::MemoryFormat format = at::MemoryFormat::Contiguous;

  int64_t channels_per_group() const {
    return groups > 0 ? channels / groups : 0;
  }
  // Concatenated source channel read by concatenated destination channel d.
  int64_t source_channel(int64_t d) const {
    return (d % groups) * channels_per_group() + d / groups;
  }
};

namespace shuffle_detail {

inline void check_input(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, "fusedops: ", name, " must be a 4-D (N, C, H, W) tensor, got ", t.dim(), "-D with shape ",
              t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fusedops: ", name, " must be a floating-point tensor, got ",
              dtype_name(t.scalar_type()));
}

inline void check_groups(int64_t groups, int64_t channels, const char* channels_of) {
  TORCH_CHECK(groups > 0, "fusedops: groups must be positive, got ", groups);
  TORCH_CHECK(channels % groups == 0, "fusedops: the number of channels of ", channels_of, " (", channels,
              ") must be divisible by groups (", groups, ")");
}

}  // namespace shuffle_detail

// Output memory format of a shuffle of `input`: the input's, as torch.nn.functional.channel_shuffle.
inline at::MemoryFormat shuffle_memory_format(const at::Tensor& input) {
  return input.suggest_memory_format();
}

// Output memory format of concat_shuffle(a, b): torch.cat's rule (the inputs' common format, else NCHW).
inline at::MemoryFormat concat_memory_format(const at::Tensor& a, const at::Tensor& b) {
  const at::MemoryFormat fa = a.suggest_memory_format(), fb = b.suggest_memory_format();
  return fa == fb ? fa : at::MemoryFormat::Contiguous;
}

inline ShuffleGeometry channel_shuffle_geometry(const at::Tensor& input, int64_t groups) {
  shuffle_detail::check_input(input, "input");
  shuffle_detail::check_groups(groups, input.size(1), "input");
  ShuffleGeometry g;
  g.batch = input.size(0);
  g.channels = input.size(1);
  g.height = input.size(2);
  g.width = input.size(3);
  g.groups = groups;
  g.format = shuffle_memory_format(input);
  return g;
}

inline ShuffleGeometry concat_shuffle_geometry(const at::Tensor& a, const at::Tensor& b, int64_t groups) {
  shuffle_detail::check_input(a, "a");
  shuffle_detail::check_input(b, "b");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "fusedops: b dtype ", dtype_name(b.scalar_type()),
              " does not match a dtype ", dtype_name(a.scalar_type()));
  TORCH_CHECK(a.device() == b.device(), "fusedops: b is on ", b.device(), " but a is on ", a.device(),
              "; both must be on the same device");
  TORCH_CHECK(a.size(0) == b.size(0) && a.size(2) == b.size(2) && a.size(3) == b.size(3),
              "fusedops: a and b must have the same batch size, height and width (they are concatenated along "
              "channels), got a of shape ",
              a.sizes(), " and b of shape ", b.sizes());
  ShuffleGeometry g;
  g.batch = a.size(0);
  g.channels = a.size(1) + b.size(1);
  g.height = a.size(2);
  g.width = a.size(3);
  shuffle_detail::check_groups(groups, g.channels, "a and b together");
  g.groups = groups;
  g.format = concat_memory_format(a, b);
  return g;
}

// Geometry of the copy that computes (grad_a, grad_b) from the gradient of concat_shuffle(a, b, groups).
inline ShuffleGeometry concat_shuffle_backward_geometry(const at::Tensor& grad, int64_t channels_a, int64_t groups) {
  shuffle_detail::check_input(grad, "grad");
  shuffle_detail::check_groups(groups, grad.size(1), "grad");
  TORCH_CHECK(channels_a >= 0 && channels_a <= grad.size(1), "fusedops: channels_a must be in [0, ", grad.size(1),
              "] (the channels of grad), got ", channels_a);
  ShuffleGeometry g;
  g.batch = grad.size(0);
  g.channels = grad.size(1);
  g.height = grad.size(2);
  g.width = grad.size(3);
  g.groups = g.channels == 0 ? 1 : g.channels / groups;
  g.format = shuffle_memory_format(grad);
  return g;
}

// The three ops' entry points, generic over a backend that provides
//   static void check(const at::Tensor& t, const char* op, const char* name);  // refuses other devices
//   static void copy(std::vector<at::Tensor> srcs, const std::vector<at::Tensor>& dsts, const ShuffleGeometry& g);
// so each backend registers ShuffleOps<Backend>::... and writes only its shuffled copy.
template <typename Backend>
struct ShuffleOps {
  static at::Tensor channel_shuffle(const at::Tensor& input, int64_t groups) {
    const ShuffleGeometry g = channel_shuffle_geometry(input, groups);
    Backend::check(input, "channel_shuffle", "input");
    at::Tensor out = at::empty(input.sizes(), input.options().memory_format(g.format));
    Backend::copy({input}, {out}, g);
    return out;
  }

  static at::Tensor concat_shuffle(const at::Tensor& a, const at::Tensor& b, int64_t groups) {
    const ShuffleGeometry g = concat_shuffle_geometry(a, b, groups);  // a and b on one device
    Backend::check(a, "concat_shuffle", "a");
    at::Tensor out = at::empty({g.batch, g.channels, g.height, g.width}, a.options().memory_format(g.format));
    Backend::copy({a, b}, {out}, g);
    return out;
  }

  static std::tuple<at::Tensor, at::Tensor> concat_shuffle_backward(const at::Tensor& grad, int64_t channels_a,
                                                                    int64_t groups) {
    const ShuffleGeometry g = concat_shuffle_backward_geometry(grad, channels_a, groups);
    Backend::check(grad, "_concat_shuffle_backward", "grad");
    const auto options = grad.options().memory_format(g.format);
    at::Tensor grad_a = at::empty({g.batch, channels_a, g.height, g.width}, options);
    at::Tensor grad_b = at::empty({g.batch, g.channels - channels_a, g.height, g.width}, options);
    Backend::copy({grad}, {grad_a, grad_b}, g);
    return {grad_a, grad_b};
  }
};

}  // namespace fusedops
