// CUDA kernels of fusedops::channel_shuffle, fusedops::concat_shuffle and fusedops::_concat_shuffle_backward.
//
// All three are one shuffled copy between one or two source and one or two destination tensors,
// concatenated along channels (see fusedops/shuffle_geometry.h), moved as raw words so every dtype is
// copied bit-exactly:
//
// * NCHW: a plane copy per (image, destination channel), in the widest of 16/8/4/2-byte words that the
//   plane size, pointers and strides allow; consecutive threads copy consecutive words of a plane.
// * channels-last: one thread per destination element in memory order (coalesced stores); the loads
//   gather within one pixel's channels, i.e. a few contiguous runs per warp.
//
// Sources are read in place when their planes (NCHW) or pixels (channels-last) are dense; others are
// first made dense in the output's format.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "fusedops/cuda/common.cuh"
#include "fusedops/shuffle_geometry.h"

#include <cstdint>
#include <vector>

namespace fusedops {
namespace cuda {
namespace {

using at::Tensor;

constexpr int kThreads = 256;

// One or two tensors, concatenated along channels. Strides are in units of the kernel's word.
template <typename P>
struct Side {
  P base[2];
  int64_t split;  // channels of the first tensor
  int64_t stride[2][4];

  __device__ __forceinline__ P channel(int64_t n, int64_t c) const {
    const int k = c >= split ? 1 : 0;
    return base[k] + n * stride[k][0] + (c - k * split) * stride[k][1];
  }
  __device__ __forceinline__ P pixel_channel(int64_t n, int64_t h, int64_t w, int64_t c) const {
    const int k = c >= split ? 1 : 0;
    return base[k] + n * stride[k][0] + (c - k * split) + h * stride[k][2] + w * stride[k][3];
  }
};

template <typename U>
__global__ void shuffle_nchw_kernel(Side<const U*> src, Side<U*> dst, int64_t total, int64_t plane, int64_t C,
                                    int64_t groups, int64_t cpg) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = i / plane, j = i - p * plane;
    const int64_t n = p / C, d = p - n * C;
    const int64_t s = (d % groups) * cpg + d / groups;
    dst.channel(n, d)[j] = src.channel(n, s)[j];
  }
}

template <typename E>
__global__ void shuffle_nhwc_kernel(Side<const E*> src, Side<E*> dst, int64_t total, int64_t C, int64_t H, int64_t W,
                                    int64_t groups, int64_t cpg) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pix = i / C, d = i - pix * C;
    const int64_t w = pix % W, h = (pix / W) % H, n = pix / (W * H);
    const int64_t s = (d % groups) * cpg + d / groups;
    *dst.pixel_channel(n, h, w, d) = *src.pixel_channel(n, h, w, s);
  }
}

bool plane_dense(const Tensor& t) {
  return (t.size(3) == 1 || t.stride(3) == 1) && (t.size(2) == 1 || t.stride(2) == t.size(3));
}

bool pixel_dense(const Tensor& t) {
  return t.size(1) == 1 || t.stride(1) == 1;
}

Tensor readable(const Tensor& t, at::MemoryFormat format) {
  const bool ok = format == at::MemoryFormat::ChannelsLast ? pixel_dense(t) : plane_dense(t);
  return ok ? t : t.contiguous(format);
}

// Widest word (bytes) dividing the plane size and every base address and image/channel stride.
int64_t word_bytes(const std::vector<Tensor>& tensors, int64_t plane_bytes) {
  for (int64_t bytes : {16, 8, 4, 2}) {
    bool ok = plane_bytes % bytes == 0;
    for (const Tensor& t : tensors) {
      const int64_t es = t.element_size();
      ok = ok && reinterpret_cast<uintptr_t>(t.const_data_ptr()) % bytes == 0 && (t.stride(0) * es) % bytes == 0 &&
           (t.stride(1) * es) % bytes == 0;
    }
    if (ok) return bytes;
  }
  return 1;
}

template <typename U>
void launch(const std::vector<Tensor>& srcs, const std::vector<Tensor>& dsts, const ShuffleGeometry& g, int64_t word) {
  Side<const U*> src{};
  Side<U*> dst{};
  const int64_t es = srcs[0].element_size();
  // Strides of NCHW copies are in words; channels-last copies move whole elements (word == element size).
  for (size_t k = 0; k < 2; ++k) {
    const Tensor& s = srcs[std::min(k, srcs.size() - 1)];
    const Tensor& d = dsts[std::min(k, dsts.size() - 1)];
    src.base[k] = static_cast<const U*>(s.const_data_ptr());
    dst.base[k] = static_cast<U*>(d.mutable_data_ptr());
    for (int i = 0; i < 4; ++i) {
      src.stride[k][i] = s.stride(i) * es / word;
      dst.stride[k][i] = d.stride(i) * es / word;
    }
  }
  src.split = srcs.size() == 2 ? srcs[0].size(1) : g.channels;
  dst.split = dsts.size() == 2 ? dsts[0].size(1) : g.channels;
  const bool cl = g.format == at::MemoryFormat::ChannelsLast;
  const int64_t plane = cl ? 1 : g.height * g.width * es / word;
  const int64_t total = cl ? g.batch * g.channels * g.height * g.width : g.batch * g.channels * plane;
  const int64_t max_blocks = int64_t(std::max(multiprocessor_count(), 1)) * 32;
  const int blocks = static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, max_blocks));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (cl) {
    FUSEDOPS_LAUNCH(blocks, kThreads, 0, stream, shuffle_nhwc_kernel<U>)(src, dst, total, g.channels, g.height, g.width,
                                                                         g.groups, g.channels_per_group());
  } else {
    FUSEDOPS_LAUNCH(blocks, kThreads, 0, stream, shuffle_nchw_kernel<U>)(src, dst, total, plane, g.channels, g.groups,
                                                                         g.channels_per_group());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <int kBytes>
struct Word;
template <>
struct Word<2> {
  using type = uint16_t;
};
template <>
struct Word<4> {
  using type = uint32_t;
};
template <>
struct Word<8> {
  using type = uint2;
};
template <>
struct Word<16> {
  using type = uint4;
};

void shuffled_copy(std::vector<Tensor> srcs, const std::vector<Tensor>& dsts, const ShuffleGeometry& g) {
  if (g.batch * g.channels * g.height * g.width == 0) return;
  for (Tensor& s : srcs) s = readable(s, g.format);
  const c10::cuda::CUDAGuard guard(dsts[0].device());
  const int64_t es = srcs[0].element_size();
  TORCH_CHECK(es == 2 || es == 4 || es == 8, "fusedops: channel shuffle does not support dtype ",
              srcs[0].scalar_type());
  int64_t word = es;
  if (g.format != at::MemoryFormat::ChannelsLast) {
    std::vector<Tensor> all(srcs);
    all.insert(all.end(), dsts.begin(), dsts.end());
    word = std::max(es, word_bytes(all, g.height * g.width * es));
  }
  switch (word) {
    case 2: launch<Word<2>::type>(srcs, dsts, g, word); break;
    case 4: launch<Word<4>::type>(srcs, dsts, g, word); break;
    case 8: launch<Word<8>::type>(srcs, dsts, g, word); break;
    default: launch<Word<16>::type>(srcs, dsts, g, word); break;
  }
}

struct CudaShuffle {
  // Only the first tensor's device: the geometry checks already put a and b on one device.
  static void check(const Tensor& t, const char* op, const char* /*name*/) {
    TORCH_CHECK(on_kernel_device(t), "fusedops: ", op, " CUDA kernel got a tensor on ", t.device());
  }
  static void copy(std::vector<Tensor> srcs, const std::vector<Tensor>& dsts, const ShuffleGeometry& g) {
    shuffled_copy(std::move(srcs), dsts, g);
  }
};

}  // namespace
}  // namespace cuda
}  // namespace fusedops

FUSEDOPS_REGISTER_CUDA_KERNELS(m) {
  using Ops = fusedops::ShuffleOps<fusedops::cuda::CudaShuffle>;
  m.impl("channel_shuffle", &Ops::channel_shuffle);
  m.impl("concat_shuffle", &Ops::concat_shuffle);
  m.impl("_concat_shuffle_backward", &Ops::concat_shuffle_backward);
}
