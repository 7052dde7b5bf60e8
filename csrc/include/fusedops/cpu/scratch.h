// Per-thread scratch memory that grows but is never freed while the thread lives, so kernels run
// without allocating once warmed up (intra-op worker threads persist between calls).
#pragma once

#include <c10/util/Exception.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>

namespace fusedops {
namespace cpu {

// Independent buffers a kernel may hold at once on one thread.
enum class ScratchSlot : int {
  kPlane = 0,        // a padded input plane
  kRun = 1,          // a flat output run / staged gradient plane
  kWeights = 2,      // weights re-laid out by the calling thread, shared with the workers
  kOffsets = 3,      // per-tap offsets
  kTapWeights = 4,   // one channel's taps in the accumulation type
  kTile = 5,         // a fused kernel's intermediate tile (e.g. depthwise rows feeding a pointwise GEMM)
  kTileOut = 6,      // a fused kernel's output tile, staged before a layout change
  kPacked = 7,       // weights packed for a GEMM micro-kernel by the calling thread, shared with the workers
  kTilePacked = 8,   // a fused kernel's tile re-packed as GEMM panels
  kBias = 9,         // per-channel bias in the accumulation type, shared with the workers
  kReduce = 10,      // per-worker partial sums, reduced by the calling thread
  kTileHidden = 11,  // a fused block's expanded rows (the input of its depthwise stage)
  kTileSecond = 12,  // a chained fused kernel's second-stage tile (ghost_bottleneck's second module's primary rows)
  kCount = 13
};

inline void* thread_scratch_bytes(size_t bytes, ScratchSlot slot) {
  struct Buffer {
    void* data = nullptr;
    size_t capacity = 0;
    ~Buffer() {
      std::free(data);
    }
  };
  thread_local Buffer buffers[static_cast<int>(ScratchSlot::kCount)];
  Buffer& b = buffers[static_cast<int>(slot)];
  if (b.capacity < bytes) {
    std::free(b.data);
    const size_t rounded = (bytes + 63) / 64 * 64;
    b.data = std::aligned_alloc(64, rounded);
    TORCH_CHECK(b.data != nullptr, "fusedops: out of memory allocating ", rounded, " bytes of scratch");
    b.capacity = rounded;
  }
  return b.data;
}

template <typename T>
inline T* thread_scratch(size_t count, ScratchSlot slot) {
  return static_cast<T*>(thread_scratch_bytes(count * sizeof(T), slot));
}

}  // namespace cpu
}  // namespace fusedops
