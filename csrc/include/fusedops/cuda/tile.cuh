// Shared-memory staging of a 2-D window of one image plane (NCHW), with the convolution's zero
// padding materialised, so the inner loops of a stencil read shared memory without bounds checks.
#pragma once

#include "fusedops/cuda/common.cuh"

namespace fusedops {
namespace cuda {

// Copies rows x cols elements of `plane` (height x width, row-major), starting at (y0, x0) — which may
// lie outside the plane, where zeros are written — into `tile` (row pitch `pitch`), widened to acc_t.
// Consecutive threads take consecutive columns, so global reads are coalesced along W. Plane offsets
// must fit in int (the caller checks height * width < 2^31). No barrier: the caller synchronises.
template <typename acc_t, typename T>
__device__ __forceinline__ void load_tile_zero_padded(acc_t* __restrict__ tile, int pitch, int rows, int cols,
                                                      const T* __restrict__ plane, int height, int width, int y0,
                                                      int x0, int tid, int nthreads) {
  const int count = rows * cols;
  for (int i = tid; i < count; i += nthreads) {
    const int y = i / cols, x = i - y * cols;
    const int gy = y0 + y, gx = x0 + x;
    acc_t v = acc_t(0);
    if (gy >= 0 && gy < height && gx >= 0 && gx < width) v = static_cast<acc_t>(plane[gy * width + gx]);
    tile[y * pitch + x] = v;
  }
}

}  // namespace cuda
}  // namespace fusedops
