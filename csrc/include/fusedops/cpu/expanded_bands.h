// The tile engine of the fused CPU kernels whose depthwise stage reads a map computed just before it by a 1x1
// stage (inverted_residual's expanded map, ghost_module's primary half): that map is never written to memory.
// A work item is a strip of consecutive output rows of one image, run as bands of rows: for each band, a per-thread
// tile holds the 1x1 stage's rows the band's depthwise outputs read (its halo included), then the caller's stage
// consumes them while they are in cache. Consecutive bands share input rows: those stay in the tile, moved to its
// top, and only the band's new rows are computed, so only strip boundaries compute rows twice.
#pragma once

#include "fusedops/conv_geometry.h"
#include "fusedops/cpu/cache_size.h"
#include "fusedops/cpu/vec_io.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>

namespace fusedops {
namespace cpu {

// Upper bound of a band's tiles (the 1x1 stage's rows and the depthwise rows) in bytes: 3/8 of the L2, leaving
// room for the weight panels streaming past. On the 2 MiB L2 of the development host (Intel Xeon, 2 threads) 768 KiB
// against 256 KiB took inverted_residual's N=8 160->960->160 7x7 from 1137 to ~820 us and N=8 24->144->24 56x56 from
// ~1940 to ~1480 us: whole 7x7 images fit one band, whose project GEMM then streams the weights once per image.
inline int64_t band_tile_bytes() {
  return l2_cache_bytes() * 3 / 8;
}

// Below this many multiply-adds per work item, items are merged (waking the pool costs ~5-10 us).
inline constexpr int64_t kMinWorkItemMacs = 1 << 15;

// How many work items `macs` multiply-adds are worth cutting into: at most `most`, none under kMinWorkItemMacs, at
// least one. A 1x1 map at batch 1 (the late blocks' fixed cost) is one item on the calling thread: MobileNetV2's
// 32->192->32 on a 1x1 map took 5.9 us cut into two slices against 4.4 us on one thread (2-vCPU AMD EPYC).
inline int64_t work_items(int64_t macs, int64_t most) {
  return std::max<int64_t>(1, std::min(most, macs / kMinWorkItemMacs));
}

// Whether the chunks of one at::parallel_for region all run at the same time, so that they may wait for each other
// (ItemBarrier): ATen's OpenMP backend runs each thread's chunk, at most one, in one team (or the whole range on the
// calling thread, inside another region); other backends may queue chunks behind each other.
#if AT_PARALLEL_OPENMP
inline constexpr bool kConcurrentChunks = true;
#else
inline constexpr bool kConcurrentChunks = false;
#endif

// The chunks of one parallel region waiting for each other between two steps: each arrives with the count of items
// it ran and waits until all `items` have arrived. Only where kConcurrentChunks.
class ItemBarrier {
 public:
  explicit ItemBarrier(int64_t items) : items_(items) {}
  void arrive_and_wait(int64_t count) {
    arrived_.fetch_add(count, std::memory_order_acq_rel);
    for (int64_t spins = 0; arrived_.load(std::memory_order_acquire) < items_; ++spins) {
      if (spins < (1 << 14)) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      } else {
        std::this_thread::yield();  // more threads than cores
      }
    }
  }

 private:
  std::atomic<int64_t> arrived_{0};
  const int64_t items_;
};

// dst[i] += residual[i] for i < count, in the accumulation type (the output was rounded to scalar_t first, as the
// unfused sequence rounds the project convolution's output before the add).
template <typename scalar_t>
inline void add_residual(scalar_t* dst, const scalar_t* residual, int64_t count) {
  constexpr int64_t V = AccVec<scalar_t>::size();
  int64_t i = 0;
  for (; i + V <= count; i += V) store_acc(dst + i, load_acc(dst + i) + load_acc(residual + i));
  if (i < count) store_acc(dst + i, load_acc(dst + i, count - i) + load_acc(residual + i, count - i), count - i);
}

// Input rows [begin, end) of g that its output rows [r0, r1) read, clipped to the map.
struct RowRange {
  int64_t begin, end;
};
inline RowRange input_rows(const ConvGeometry& g, int64_t r0, int64_t r1) {
  const int64_t lo = r0 * g.stride_h - g.pad_h;
  const int64_t hi = (r1 - 1) * g.stride_h - g.pad_h + dilated_extent(g.kernel_h, g.dilation_h);
  const int64_t begin = std::clamp<int64_t>(lo, 0, g.in_h);
  return {begin, std::clamp<int64_t>(hi, begin, g.in_h)};
}

// Input rows of g that a band of `rows` output rows reads, its halo included (clipped to the map's height).
inline int64_t band_input_rows(const ConvGeometry& g, int64_t rows) {
  return std::min(g.in_h, (rows - 1) * g.stride_h + dilated_extent(g.kernel_h, g.dilation_h));
}

// The most output rows of g (at least one, at most out_h) whose band's input rows, of row_bytes each, fit a tile of
// band_tile_bytes(): for kernels whose tile holds nothing but those rows.
inline int64_t band_rows_fitting(const ConvGeometry& g, int64_t row_bytes) {
  int64_t rows = 1;
  while (rows < g.out_h && band_input_rows(g, rows + 1) * row_bytes <= band_tile_bytes()) ++rows;
  return rows;
}

// Output rows [strip_begin, strip_end) of the depthwise stage g, in bands of at most band_rows rows. For each band
// [r0, r1): `tile` (rows of row_elems elements) is made to hold the input rows `need` the band reads, the rows the
// previous band also read moved up and the others computed by expand(first_row, row_count, dst); then
// consume(band, need, r0, r1), where `band` is g with the tile standing for the image (its rows are input rows
// [need.begin, need.end), the rows above it counted as padding, which the band's outputs never read).
template <typename acc, typename Expand, typename Consume>
void for_each_expanded_band(const ConvGeometry& g, int64_t row_elems, int64_t strip_begin, int64_t strip_end,
                            int64_t band_rows, acc* tile, const Expand& expand, const Consume& consume) {
  RowRange held{0, 0};  // input rows in the tile
  for (int64_t r0 = strip_begin; r0 < strip_end; r0 += band_rows) {
    const int64_t r1 = std::min(strip_end, r0 + band_rows);
    const RowRange need = input_rows(g, r0, r1);
    int64_t first_new = need.begin;
    if (held.end > need.begin && need.begin >= held.begin) {
      std::memmove(tile, tile + (need.begin - held.begin) * row_elems,
                   (held.end - need.begin) * row_elems * sizeof(acc));
      first_new = held.end;
    }
    if (need.end > first_new) expand(first_new, need.end - first_new, tile + (first_new - need.begin) * row_elems);
    held = need;
    ConvGeometry band = g;
    band.in_h = need.end - need.begin;
    band.pad_h = g.pad_h + need.begin;
    consume(band, need, r0, r1);
  }
}

// How the out_h output rows of each of `batch` images are cut into strips (work items, spread over `threads`) run as
// bands of at most rows_fit rows (what the tile budget allows).
struct StripPlan {
  int64_t rows = 1;              // output rows per band
  int64_t strip_rows = 1;        // output rows per strip
  int64_t strips_per_image = 1;  // ceil(out_h / strip_rows)
  double time = 0;               // the estimate it was chosen by, in multiply-adds of one thread
};

// The strip count with the least estimated time per thread: an image's work (image_work multiply-adds) plus
// boundary_work for each strip boundary (rows computed twice), against how the strips fall on the threads; bands
// under ~48 output pixels (short GEMMs) are penalised.
inline StripPlan plan_strips(int64_t out_h, int64_t out_w, int64_t batch, int64_t threads, int64_t rows_fit,
                             double image_work, double boundary_work) {
  StripPlan best;
  best.time = -1.0;
  for (int64_t wanted = 1; wanted <= out_h; ++wanted) {
    StripPlan p;
    p.strip_rows = (out_h + wanted - 1) / wanted;
    p.strips_per_image = (out_h + p.strip_rows - 1) / p.strip_rows;
    if (p.strips_per_image != wanted) continue;  // the same cut as a smaller count
    p.rows = std::min(rows_fit, p.strip_rows);
    const double work = image_work + static_cast<double>(p.strips_per_image - 1) * boundary_work;
    const int64_t rounds = (batch * p.strips_per_image + threads - 1) / threads;
    const double short_gemm = std::min(1.0, static_cast<double>(p.rows * out_w) / 48.0);
    p.time = static_cast<double>(rounds) * work / static_cast<double>(p.strips_per_image) / short_gemm;
    if (best.time < 0 || p.time < best.time * (1 - 1e-9)) best = p;
  }
  return best;
}

}  // namespace cpu
}  // namespace fusedops
