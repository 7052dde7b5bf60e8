// Whether a call's tensors stream from beyond the caches, for kernels that prefetch (and store past the caches)
// only then.
#pragma once

#include <algorithm>
#include <cstdint>

#include "fusedops/cpu/cache_size.h"

namespace fusedops {
namespace cpu {

// Bytes a call reads and writes above which its kernels prefetch, as multiples of the per-core L2 (cpu_caches).
// The L3 a 2-vCPU tenant gets is not what the CPU reports (both development hosts report their socket's
// 300-320 MiB), so the L2 is the size the thresholds scale with. Measured with depthwise channels-last, 2 threads:
//
// A forward called on its own (inference: its input was just written by the layer before). AMD EPYC (Zen 4, 1 MiB
// L2): prefetching cost 5-15% at 10 MB and below, was neutral at 19 MB and took 0.5-0.75x of the time from 25 MB
// (N=8, C=32 112x112 and C=144 56x56). Intel Xeon (2 MiB L2): with prefetches and streaming stores N=8 C=144 56x56
// (29 MB) took 467-516 us, without 558-596. 12x the L2: 12 MB on the one, 24 MB on the other, and not below 16 MB:
// on the AMD EPYC of the Zen 3 generation (512 KiB L2) 12x put it at 6 MB, where what the L2 misses the L3 still
// holds. There, N=8, medians of 5 alternating processes, with / without prefetches and streaming stores: C=576
// 14x14 (7 MB) 382-402 / 190-208 us, C=192 28x28 stride 2 (6 MB) 138-144 / 117-122, C=72 56x56 (14 MB) 373-410 /
// 326-337; C=144 56x56 stride 2 (17 MB) and C=240 28x28 (12 MB) the same either way.
constexpr int64_t kMinForwardStreamingBytes = int64_t(16) << 20;
inline int64_t forward_streaming_bytes() {
  return std::max(12 * l2_cache_bytes(), kMinForwardStreamingBytes);
}

// A backward runs inside a training step, whose working set (the saved input, the output, the gradients) is
// about twice its own. AMD EPYC, time without / with prefetches: steps at N=8 took 1/2.3 (C=144 56x56), 1/1.6
// (C=32 112x112 and C=192 28x28, whose backward moves 14 MB), 1/1.5 (C=96 112x112 stride 2); at 7 MB and below
// (C=384 and 576 14x14, batch 1) prefetching cost single calls up to 9%, where the hardware prefetchers keep up.
// Intel Xeon: the C=144 and C=32 backwards (43 and 38 MB) gain 10-15%. 8x the L2: 8 MB on the one, 16 MB on the
// other (where C=192 28x28's 14 MB, which gained ~10% there with streaming stores, is left to the hardware). Not
// below 12 MB: on the Zen 3 EPYC (512 KiB L2) 8x put it at 4 MB. There, N=8, medians of 5 alternating processes,
// with / without: C=384 14x14 (7 MB) 568 / 305 us, C=576 14x14 (10 MB) 542 / 447, C=672 14x14 stride 2 (9 MB)
// 328 / 260, C=960 7x7 (4 MB) 281 / 255; C=192 28x28 (14 MB, still above) 598 / 581.
constexpr int64_t kMinBackwardStreamingBytes = int64_t(12) << 20;
inline int64_t backward_streaming_bytes() {
  return std::max(8 * l2_cache_bytes(), kMinBackwardStreamingBytes);
}

inline bool streams_beyond_cache(int64_t bytes, int64_t threshold) {
  return bytes > threshold;
}

}  // namespace cpu
}  // namespace fusedops
