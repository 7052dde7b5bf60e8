// Whether a call's tensors stream from beyond the caches, for kernels that prefetch only then.
#pragma once

#include <cstdint>

namespace fusedops {
namespace cpu {

// Bytes a call reads and writes above which its kernels prefetch. Measured on a 2-vCPU host with a
// 32 MiB L3 (shared with other cores and tenants; the CPU reports the socket's 320 MiB, so the reported
// size is no guide), depthwise channels-last, A/B in one process, time without / with prefetches:
// forward+backward steps at N=8 took 1/2.3 (C=144 56x56, 29 MB a forward call), 1/1.6 (C=32 112x112
// and C=192 28x28, 10 MB: inside a training step its tensors no longer fit the cache), 1/1.5 (C=96
// 112x112 stride 2); at 7 MB and below (C=384 and 576 14x14, batch 1) prefetching everything cost
// single calls up to 9%, where the hardware prefetchers keep up.
constexpr int64_t kStreamingBytes = int64_t{8} << 20;

inline bool streams_beyond_cache(int64_t bytes) {
  return bytes > kStreamingBytes;
}

}  // namespace cpu
}  // namespace fusedops
