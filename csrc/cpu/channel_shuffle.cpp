// CPU kernels of fusedops::channel_shuffle, fusedops::concat_shuffle and fusedops::_concat_shuffle_backward.
//
// All three are one shuffled copy (see fusedops/shuffle_geometry.h) between one or two source tensors and
// one or two destination tensors, concatenated along channels. Elements are moved as raw 2/4/8-byte words,
// so every dtype is copied bit-exactly by one kernel per element size:
//
// * NCHW: each destination channel plane is one memcpy of the source channel's plane;
// * channels-last: per pixel, a gather of the C channels. Two groups is an interleave of two contiguous
//   halves and its inverse (C / 2 groups) a de-interleave, both vectorised; other groups run a small
//   in-cache transpose, and copies between two tensors split elsewhere a table-driven gather.
//
// One group or one channel per group is the identity, one plain copy.
//
// Sources are read in place when their planes (NCHW) or pixels (channels-last) are dense, which covers
// the channel slices of x.chunk(2, 1); other layouts are first made dense in the output's format.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "fusedops/shuffle_geometry.h"

#include <bit>
#include <cstring>
#include <type_traits>
#include <vector>

namespace fusedops {
namespace cpu {
namespace {

using at::Tensor;

// Elements below which a call runs on one thread: waking the pool costs more than copying them.
constexpr int64_t kMinParallelElements = 1 << 15;

// One or two tensors of a shuffled copy, concatenated along channels. Strides are in elements.
template <typename P>
struct Side {
  P base[2] = {nullptr, nullptr};
  int64_t split = 0;  // channels of the first tensor
  int64_t stride[2][4] = {};

  void add(int k, P ptr, const Tensor& t) {
    base[k] = ptr;
    for (int i = 0; i < 4; ++i) stride[k][i] = t.stride(i);
  }
  // Pointer to channel c (concatenated numbering) of image n; the plane or pixel run starts there.
  // kTwo: the side has two tensors (else the choice between them is compiled out).
  template <bool kTwo>
  P channel(int64_t n, int64_t c) const {
    if constexpr (!kTwo) {
      return base[0] + n * stride[0][0] + c * stride[0][1];
    } else {
      const int k = c >= split ? 1 : 0;
      return base[k] + n * stride[k][0] + (c - k * split) * stride[k][1];
    }
  }
  // Pixel row h of image n of tensor k: its first pixel and the step between pixels.
  struct Row {
    P first;
    int64_t step;
    P at(int64_t w) const {
      return first + w * step;
    }
  };
  Row row(int k, int64_t n, int64_t h) const {
    return {base[k] + n * stride[k][0] + h * stride[k][2], stride[k][3]};
  }
};

bool plane_dense(const Tensor& t) {
  const int64_t h = t.size(2), w = t.size(3);
  return (w == 1 || t.stride(3) == 1) && (h == 1 || t.stride(2) == w);
}

bool pixel_dense(const Tensor& t) {
  return t.size(1) == 1 || t.stride(1) == 1;
}

// A source readable in place by the kernel for `format`, or a dense copy of it in that format.
Tensor readable(const Tensor& t, at::MemoryFormat format) {
  const bool ok = format == at::MemoryFormat::ChannelsLast ? pixel_dense(t) : plane_dense(t);
  return ok ? t : t.contiguous(format);
}

// ---------------------------------------------------------------------------------------------------
// NCHW: one plane copy per (image, destination channel).

// Copies n bytes. Planes of late layers are 100-400 bytes, where a libc memcpy call costs as much as the
// copy: below 1 KiB the copy runs as fixed-size chunks, which the compiler turns into vector moves.
inline void copy_plane_bytes(char* d, const char* s, size_t n) {
  if (n >= 1024) {
    std::memcpy(d, s, n);
    return;
  }
  for (; n >= 64; n -= 64, d += 64, s += 64) std::memcpy(d, s, 64);
  for (size_t chunk = 32; chunk >= 1; chunk /= 2) {
    if (n >= chunk) {
      std::memcpy(d, s, chunk);
      d += chunk;
      s += chunk;
      n -= chunk;
    }
  }
}

// kTwoSources / kTwoDestinations: which sides have two tensors. Choosing the tensor per plane cost ~15%
// on 7x7 planes (3712 planes of 196 bytes: 25 -> 21 us a call in a standalone loop, one thread).
template <typename E, bool kTwoSources, bool kTwoDestinations>
void shuffle_nchw(const Side<const E*>& src, const Side<E*>& dst, const ShuffleGeometry& g) {
  const int64_t C = g.channels, plane = g.height * g.width;
  const int64_t grain = std::max<int64_t>(1, kMinParallelElements / std::max<int64_t>(1, plane));
  const int64_t groups = g.groups, per_group = g.channels_per_group();
  at::parallel_for(0, g.batch * C, grain, [&](int64_t begin, int64_t end) {
    // Destination channel d = j * groups + i reads source channel i * per_group + j. (i, j) advance
    // incrementally: two integer divisions per plane would cost more than copying a 7x7 plane.
    int64_t n = begin / C, d = begin % C;
    int64_t i = d % groups, j = d / groups;
    for (int64_t item = begin; item < end; ++item) {
      copy_plane_bytes(reinterpret_cast<char*>(dst.template channel<kTwoDestinations>(n, d)),
                       reinterpret_cast<const char*>(src.template channel<kTwoSources>(n, i * per_group + j)),
                       plane * sizeof(E));
      ++d;
      if (++i == groups) {
        i = 0;
        if (++j == per_group) {
          j = 0;
          d = 0;
          ++n;
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// Channels-last per-pixel gathers.

template <typename E>
using VecOf = at::vec::Vectorized<std::conditional_t<sizeof(E) == 4, float, double>>;

// The first `count` words at p (count <= 0: none), the rest of the vector zero; never reads past them.
template <typename V, typename E>
inline V load_words(const E* p, int64_t count) {
  if (count <= 0) return V(typename V::value_type(0));
  return count >= V::size() ? V::loadu(p) : V::loadu(p, count);
}

// Stores the first `count` (< 2 * size) words of the concatenation lo, hi at p.
template <typename V, typename E>
inline void store_words(E* p, const V& lo, const V& hi, int64_t count) {
  using F = typename V::value_type;
  constexpr int64_t S = V::size();
  if (count < S) {
    lo.store(reinterpret_cast<F*>(p), count);
    return;
  }
  lo.store(reinterpret_cast<F*>(p));
  if (count > S) hi.store(reinterpret_cast<F*>(p + S), count - S);
}

// out[2j] = r0[j], out[2j + 1] = r1[j] for j < n.
template <typename E>
inline void interleave(E* out, const E* r0, const E* r1, int64_t n) {
  int64_t j = 0;
  if constexpr (sizeof(E) == 4 || sizeof(E) == 8) {
    using V = VecOf<E>;
    using F = typename V::value_type;
    constexpr int64_t S = V::size();
    for (; j + S <= n; j += S) {
      const auto [lo, hi] = at::vec::interleave2(V::loadu(r0 + j), V::loadu(r1 + j));
      lo.store(reinterpret_cast<F*>(out + 2 * j));
      hi.store(reinterpret_cast<F*>(out + 2 * j + S));
    }
    // The tail through masked loads and stores: ShuffleNetV2's halves (24, 58, 116 channels) leave 8-10
    // channels after the full vectors; copied one by one, they made the interleave of 784 pixels of 48
    // or 116 channels 1.1-1.7x slower (measured in a standalone loop, one thread).
    if (const int64_t rest = n - j; rest > 0) {
      const auto [lo, hi] = at::vec::interleave2(V::loadu(r0 + j, rest), V::loadu(r1 + j, rest));
      store_words(out + 2 * j, lo, hi, 2 * rest);
    }
    return;
  } else if constexpr (sizeof(E) == 2 && std::endian::native == std::endian::little) {
    // A pair of 16-bit words is one 32-bit word (first in the low half); compilers vectorise this loop.
    uint32_t* o = reinterpret_cast<uint32_t*>(out);
    for (; j < n; ++j) o[j] = uint32_t(r0[j]) | (uint32_t(r1[j]) << 16);
  }
  for (; j < n; ++j) {
    out[2 * j] = r0[j];
    out[2 * j + 1] = r1[j];
  }
}

// d0[j] = in[2j], d1[j] = in[2j + 1] for j < n.
template <typename E>
inline void deinterleave(E* d0, E* d1, const E* in, int64_t n) {
  int64_t j = 0;
  if constexpr (sizeof(E) == 4 || sizeof(E) == 8) {
    using V = VecOf<E>;
    using F = typename V::value_type;
    constexpr int64_t S = V::size();
    for (; j + S <= n; j += S) {
      const auto [even, odd] = at::vec::deinterleave2(V::loadu(in + 2 * j), V::loadu(in + 2 * j + S));
      even.store(reinterpret_cast<F*>(d0 + j));
      odd.store(reinterpret_cast<F*>(d1 + j));
    }
    if (const int64_t rest = n - j; rest > 0) {  // the tail masked, as in interleave()
      const auto [even, odd] = at::vec::deinterleave2(load_words<V>(in + 2 * j, std::min(2 * rest, S)),
                                                      load_words<V>(in + 2 * j + S, 2 * rest - S));
      even.store(reinterpret_cast<F*>(d0 + j), rest);
      odd.store(reinterpret_cast<F*>(d1 + j), rest);
    }
    return;
  } else if constexpr (sizeof(E) == 2 && std::endian::native == std::endian::little) {
    const uint32_t* p = reinterpret_cast<const uint32_t*>(in);
    for (; j < n; ++j) {
      d0[j] = static_cast<E>(p[j] & 0xffffu);
      d1[j] = static_cast<E>(p[j] >> 16);
    }
  }
  for (; j < n; ++j) {
    d0[j] = in[2 * j];
    d1[j] = in[2 * j + 1];
  }
}

// out[j * groups + i] = in[i * cpg + j]: a (groups x cpg) -> (cpg x groups) transpose within one pixel.
template <typename E>
inline void transpose_pixel(E* out, const E* in, int64_t groups, int64_t cpg) {
  for (int64_t i = 0; i < groups; ++i) {
    const E* row = in + i * cpg;
    E* col = out + i;
    for (int64_t j = 0; j < cpg; ++j) col[j * groups] = row[j];
  }
}

// Runs fn(n, h) over all pixel rows, in parallel. The kernels take each row's pointers into locals
// (Side::row): read through the captured Sides per pixel, GCC reloaded and recomputed them every pixel.
template <typename Fn>
void for_each_row(const ShuffleGeometry& g, Fn fn) {
  const int64_t row = g.width * g.channels;
  const int64_t grain = std::max<int64_t>(1, kMinParallelElements / std::max<int64_t>(1, row));
  at::parallel_for(0, g.batch * g.height, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) fn(r / g.height, r % g.height);
  });
}

template <typename E>
void shuffle_nhwc(const Side<const E*>& src, int nsrc, const Side<E*>& dst, int ndst, const ShuffleGeometry& g) {
  const int64_t C = g.channels, W = g.width, groups = g.groups, cpg = g.channels_per_group();
  // Two groups: interleave the two halves, each of which lies in one source tensor.
  if (groups == 2 && ndst == 1 && (nsrc == 1 || src.split == cpg)) {
    for_each_row(g, [&](int64_t n, int64_t h) {
      const auto r0 = src.row(0, n, h);
      const auto r1 = nsrc == 1 ? decltype(r0){r0.first + cpg, r0.step} : src.row(1, n, h);
      const auto out = dst.row(0, n, h);
      for (int64_t w = 0; w < W; ++w) interleave(out.at(w), r0.at(w), r1.at(w), cpg);
    });
    return;
  }
  // Two channels per group (the inverse of two groups): de-interleave into the two halves.
  if (cpg == 2 && nsrc == 1 && (ndst == 1 || dst.split == groups)) {
    for_each_row(g, [&](int64_t n, int64_t h) {
      const auto d0 = dst.row(0, n, h);
      const auto d1 = ndst == 1 ? decltype(d0){d0.first + groups, d0.step} : dst.row(1, n, h);
      const auto in = src.row(0, n, h);
      for (int64_t w = 0; w < W; ++w) deinterleave(d0.at(w), d1.at(w), in.at(w), groups);
    });
    return;
  }
  if (nsrc == 1 && ndst == 1) {
    for_each_row(g, [&](int64_t n, int64_t h) {
      const auto in = src.row(0, n, h);
      const auto out = dst.row(0, n, h);
      for (int64_t w = 0; w < W; ++w) transpose_pixel(out.at(w), in.at(w), groups, cpg);
    });
    return;
  }
  // Two tensors on a side, split elsewhere than at a group boundary: gather through channel tables.
  std::vector<int64_t> src_channel(C), dst_channel(C);
  std::vector<uint8_t> src_tensor(C), dst_tensor(C);
  for (int64_t d = 0; d < C; ++d) {
    const int64_t s = g.source_channel(d);
    src_tensor[d] = s >= src.split;
    src_channel[d] = s - src_tensor[d] * src.split;
    dst_tensor[d] = d >= dst.split;
    dst_channel[d] = d - dst_tensor[d] * dst.split;
  }
  for_each_row(g, [&](int64_t n, int64_t h) {
    const auto s0 = src.row(0, n, h), s1 = nsrc == 2 ? src.row(1, n, h) : s0;
    const auto d0 = dst.row(0, n, h), d1 = ndst == 2 ? dst.row(1, n, h) : d0;
    for (int64_t w = 0; w < W; ++w) {
      const E* sp[2] = {s0.at(w), s1.at(w)};
      E* dp[2] = {d0.at(w), d1.at(w)};
      for (int64_t d = 0; d < C; ++d) dp[dst_tensor[d]][dst_channel[d]] = sp[src_tensor[d]][src_channel[d]];
    }
  });
}

// ---------------------------------------------------------------------------------------------------

template <typename E>
void run_typed(const std::vector<Tensor>& srcs, const std::vector<Tensor>& dsts, const ShuffleGeometry& g) {
  Side<const E*> src;
  Side<E*> dst;
  for (size_t k = 0; k < srcs.size(); ++k) src.add(k, static_cast<const E*>(srcs[k].const_data_ptr()), srcs[k]);
  for (size_t k = 0; k < dsts.size(); ++k) dst.add(k, static_cast<E*>(dsts[k].mutable_data_ptr()), dsts[k]);
  src.split = srcs[0].size(1);
  dst.split = dsts[0].size(1);
  if (g.format == at::MemoryFormat::ChannelsLast) {
    shuffle_nhwc<E>(src, static_cast<int>(srcs.size()), dst, static_cast<int>(dsts.size()), g);
  } else {
    const bool two_sources = srcs.size() == 2, two_destinations = dsts.size() == 2;
    TORCH_INTERNAL_ASSERT(!(two_sources && two_destinations), "fusedops: a shuffled copy has one side of one tensor");
    if (two_sources) {
      shuffle_nchw<E, true, false>(src, dst, g);
    } else if (two_destinations) {
      shuffle_nchw<E, false, true>(src, dst, g);
    } else {
      shuffle_nchw<E, false, false>(src, dst, g);
    }
  }
}

// The shuffled copy from `srcs` (1 or 2) into freshly allocated `dsts` (1 or 2) in g.format.
void shuffled_copy(std::vector<Tensor> srcs, const std::vector<Tensor>& dsts, const ShuffleGeometry& g) {
  if (g.batch * g.channels * g.height * g.width == 0) return;
  // One group, or one channel per group: the identity permutation, a plain copy (ATen's copy kernel;
  // the channels-last per-pixel transpose would move one element at a time).
  if ((g.groups == 1 || g.channels_per_group() == 1) && srcs.size() == 1 && dsts.size() == 1) {
    dsts[0].copy_(srcs[0]);
    return;
  }
  for (Tensor& s : srcs) s = readable(s, g.format);
  switch (srcs[0].element_size()) {
    case 2: run_typed<uint16_t>(srcs, dsts, g); break;
    case 4: run_typed<uint32_t>(srcs, dsts, g); break;
    case 8: run_typed<uint64_t>(srcs, dsts, g); break;
    default: TORCH_CHECK(false, "fusedops: channel shuffle does not support dtype ", srcs[0].scalar_type());
  }
}

struct CpuShuffle {
  static void check(const Tensor& t, const char* op, const char* name) {
    TORCH_CHECK(t.device().is_cpu(), "fusedops: ", op, " CPU kernel got ", name, " on ", t.device());
  }
  static void copy(std::vector<Tensor> srcs, const std::vector<Tensor>& dsts, const ShuffleGeometry& g) {
    shuffled_copy(std::move(srcs), dsts, g);
  }
};

}  // namespace
}  // namespace cpu
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, CPU, m) {
  using Ops = fusedops::ShuffleOps<fusedops::cpu::CpuShuffle>;
  m.impl("channel_shuffle", &Ops::channel_shuffle);
  m.impl("concat_shuffle", &Ops::concat_shuffle);
  m.impl("_concat_shuffle_backward", &Ops::concat_shuffle_backward);
}
