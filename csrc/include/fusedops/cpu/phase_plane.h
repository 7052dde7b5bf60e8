// A zero-padded, stride-phase-split copy of one (H, W) plane, for NCHW kernels.
//
// Along W the padded columns are split by `stride_w` phase: padded column x lives in phase x % sw at
// index x / sw. Output column ow, kernel column kw then reads phase (kw*dw) % sw at index ow + (kw*dw)/sw,
// so every stride and dilation becomes contiguous vector loads over ow, and the zero padding removes
// all bounds checks from the inner loops. The plane is built once per (n, c) in per-thread scratch
// that stays in L1/L2 while the kernel sweeps it.
//
// Stride-1 convolutions use the "flat" shape: rows of exactly W + 2*pad_w elements. Then output pixel
// (oh, ow), computed at flat index oh * pitch + ow, reads tap t at flat index + offsets[t] for every row,
// so a kernel sweeps the whole plane as one contiguous run (no per-row overhead, full vectors even on
// 7x7 maps); the pitch - out_w junk columns per row are dropped when results are compacted.
#pragma once

#include "fusedops/conv_geometry.h"
#include "fusedops/cpu/vec_io.h"

#include <cstring>

namespace fusedops {
namespace cpu {

template <typename T>
struct PhasePlane {
  T* data = nullptr;
  int64_t rows = 0;       // padded rows held
  int64_t phase_len = 0;  // elements per phase in a row
  int64_t pitch = 0;      // elements per row (stride_w * phase_len)
  int64_t stride_w = 1;
  int64_t size = 0;  // elements to allocate: rows * pitch plus slack for vector over-reads
};

// Offset of each kernel tap's contiguous run from the start of the plane row read by tap (0, 0):
// output row oh, tap t, columns ow.. start at data + oh * stride_h * pitch + offsets[t] + ow.
template <typename T>
void phase_plane_tap_offsets(const PhasePlane<T>& p, const ConvGeometry& g, int64_t* offsets) {
  for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
    for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
      const int64_t x = kw * g.dilation_w;
      offsets[kh * g.kernel_w + kw] = kh * g.dilation_h * p.pitch + (x % p.stride_w) * p.phase_len + x / p.stride_w;
    }
  }
}

// Whether geometry g can use the flat shape (stride 1 in both dimensions).
inline bool flat_plane_applies(const ConvGeometry& g) {
  return g.stride_h == 1 && g.stride_w == 1;
}

// Shape of the plane for geometry g; vector loads may run up to `overread` elements past the last
// output (row-wise for the phase-split shape, past the flat run for the flat shape).
template <typename T>
PhasePlane<T> phase_plane_shape(const ConvGeometry& g, int64_t overread, bool flat) {
  PhasePlane<T> p;
  p.stride_w = g.stride_w;
  p.rows = (g.out_h - 1) * g.stride_h + dilated_extent(g.kernel_h, g.dilation_h);
  if (flat) {
    TORCH_INTERNAL_ASSERT(flat_plane_applies(g));
    p.phase_len = p.pitch = g.in_w + 2 * g.pad_w;
    p.size = p.rows * p.pitch + overread;
    return p;
  }
  const int64_t out_w_padded = (g.out_w + overread - 1) / overread * overread;
  const int64_t from_taps = out_w_padded + ((g.kernel_w - 1) * g.dilation_w) / g.stride_w + 1;
  const int64_t from_input = (g.in_w + 2 * g.pad_w + g.stride_w - 1) / g.stride_w;
  p.phase_len = std::max(from_taps, from_input);
  p.pitch = p.phase_len * g.stride_w;
  p.size = p.rows * p.pitch;
  return p;
}

// Length of the flat run covering every output pixel of a flat plane.
inline int64_t flat_run_length(const ConvGeometry& g, int64_t pitch) {
  return (g.out_h - 1) * pitch + g.out_w;
}

// Copies padded row y of a phase plane back into a dense row of `in_w` elements (the inverse of the
// fill below), e.g. to crop a gradient accumulated in phase-plane form.
template <typename T, typename out_t>
void read_phase_plane_row(const PhasePlane<T>& p, const ConvGeometry& g, int64_t y, out_t* dst) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const T* row = p.data + y * p.pitch;
  int64_t iw = 0;
  if (p.stride_w == 1) {
    for (; iw + V <= g.in_w; iw += V) store_acc(dst + iw, Vec::loadu(row + g.pad_w + iw));
  } else if (p.stride_w == 2) {
    const T* first = row + (g.pad_w % 2) * p.phase_len + g.pad_w / 2;
    const T* second = row + ((g.pad_w + 1) % 2) * p.phase_len + (g.pad_w + 1) / 2;
    for (int64_t j = 0; iw + 2 * V <= g.in_w; iw += 2 * V, j += V) {
      auto [lo, hi] = at::vec::interleave2(Vec::loadu(first + j), Vec::loadu(second + j));
      store_acc(dst + iw, lo);
      store_acc(dst + iw + V, hi);
    }
  }
  const int64_t x = iw + g.pad_w;
  int64_t phase = x % p.stride_w, idx = x / p.stride_w;
  for (; iw < g.in_w; ++iw) {
    dst[iw] = static_cast<out_t>(row[phase * p.phase_len + idx]);
    if (++phase == p.stride_w) {
      phase = 0;
      ++idx;
    }
  }
}

// Fills `p` (whose data points at rows * pitch elements) with the zero-padded plane `src`
// (element (ih, iw) at src[ih * row_stride + iw]).
template <typename in_t, typename T>
void fill_phase_plane(PhasePlane<T>& p, const ConvGeometry& g, const in_t* src, int64_t row_stride) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const int64_t ih_end = std::min(g.in_h, p.rows - g.pad_h);
  // Zero what the copy below does not overwrite: small planes (the 7x7-28x28 maps) in one memset, which
  // costs less than the per-row calls; large ones only their padding rows, each phase's padding columns
  // and the over-read slack after the last row.
  constexpr int64_t kSmallPlaneBytes = 32 * 1024;
  const bool small = static_cast<int64_t>(sizeof(T)) * p.size <= kSmallPlaneBytes;
  if (small) std::memset(p.data, 0, sizeof(T) * p.size);
  const int64_t data_rows_begin = std::min(g.pad_h, p.rows),
                data_rows_end = std::max(data_rows_begin, g.pad_h + ih_end);
  if (!small) {
    std::memset(p.data, 0, sizeof(T) * data_rows_begin * p.pitch);
    std::memset(p.data + data_rows_end * p.pitch, 0, sizeof(T) * (p.size - data_rows_end * p.pitch));
  }
  const int64_t x_first = g.pad_w, x_last = g.pad_w + g.in_w - 1;  // padded columns holding data
  for (int64_t y = small ? data_rows_end : data_rows_begin; y < data_rows_end; ++y) {
    T* row = p.data + y * p.pitch;
    for (int64_t q = 0; q < p.stride_w; ++q) {
      T* phase = row + q * p.phase_len;
      const int64_t x0 = x_first + ((q - x_first) % p.stride_w + p.stride_w) % p.stride_w;
      const int64_t x1 = x_last - ((x_last - q) % p.stride_w + p.stride_w) % p.stride_w;
      if (g.in_w == 0 || x0 > x_last) {
        std::fill(phase, phase + p.phase_len, T(0));
        continue;
      }
      std::fill(phase, phase + x0 / p.stride_w, T(0));
      std::fill(phase + x1 / p.stride_w + 1, phase + p.phase_len, T(0));
    }
  }
  for (int64_t ih = 0; ih < ih_end; ++ih) {
    const in_t* s = src + ih * row_stride;
    const int64_t y = ih + g.pad_h;
    if (p.stride_w == 1) {
      T* d = p.data + y * p.pitch + g.pad_w;
      int64_t iw = 0;
      for (; iw + V <= g.in_w; iw += V) load_acc(s + iw).store(d + iw);
      if (iw < g.in_w) load_acc(s + iw, g.in_w - iw).store(d + iw, g.in_w - iw);
    } else if (p.stride_w == 2 && kSameAsAcc<in_t>) {
      if constexpr (kSameAsAcc<in_t>) {
        // Split even/odd padded columns with vector permutes.
        T* phase_of_first = p.data + y * p.pitch + (g.pad_w % 2) * p.phase_len + g.pad_w / 2;
        T* phase_of_second = p.data + y * p.pitch + ((g.pad_w + 1) % 2) * p.phase_len + (g.pad_w + 1) / 2;
        int64_t iw = 0, j = 0;
        for (; iw + 2 * V <= g.in_w; iw += 2 * V, j += V) {
          auto [even, odd] = at::vec::deinterleave2(Vec::loadu(s + iw), Vec::loadu(s + iw + V));
          even.store(phase_of_first + j);
          odd.store(phase_of_second + j);
        }
        // Tail (< 2V elements): even/odd input columns alternate between the two phases.
        for (; iw < g.in_w; ++iw, j += (iw % 2 == 0)) (iw % 2 == 0 ? phase_of_first : phase_of_second)[j] = s[iw];
      }
    } else {
      T* row = p.data + y * p.pitch;
      int64_t phase = g.pad_w % p.stride_w, idx = g.pad_w / p.stride_w;
      for (int64_t iw = 0; iw < g.in_w; ++iw) {
        row[phase * p.phase_len + idx] = static_cast<T>(s[iw]);
        if (++phase == p.stride_w) {
          phase = 0;
          ++idx;
        }
      }
    }
  }
}

}  // namespace cpu
}  // namespace fusedops
