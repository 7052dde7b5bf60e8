// Whether a call's tensors stream from beyond the caches, for kernels that prefetch only then.
#pragma once

#include <cstdint>

namespace fusedops {
namespace cpu {

// Bytes a call reads and writes above which its kernels prefetch, measured on a 2-vCPU host with a
// 32 MiB L3 (shared with other cores and tenants; the CPU reports the socket's 320 MiB, so the reported
// size is no guide), depthwise channels-last, 2 threads.
//
// A forward called on its own (inference: its input was just written by the layer before) keeps its
// tensors in L3 up to ~16 MB a call: prefetching cost it 5-15% at 10 MB and below, was neutral at
// 19 MB and took 0.5-0.75x of the time from 25 MB (N=8, C=32 112x112 and C=144 56x56).
constexpr int64_t kStreamingBytes = int64_t{16} << 20;

// A backward runs inside a training step, whose working set (the saved input, the output, the
// gradients) is about twice its own. A/B in one process, time without / with prefetches: steps at N=8
// took 1/2.3 (C=144 56x56), 1/1.6 (C=32 112x112 and C=192 28x28, whose backward moves 14 MB), 1/1.5
// (C=96 112x112 stride 2); at 7 MB and below (C=384 and 576 14x14, batch 1) prefetching cost single
// calls up to 9%, where the hardware prefetchers keep up.
constexpr int64_t kBackwardStreamingBytes = int64_t{8} << 20;

inline bool streams_beyond_cache(int64_t bytes, int64_t threshold = kStreamingBytes) {
  return bytes > threshold;
}

}  // namespace cpu
}  // namespace fusedops
