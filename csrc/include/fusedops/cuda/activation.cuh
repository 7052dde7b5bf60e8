// The activations (fusedops/activation.h's Activation, passed as its int value) on the device, for kernels that
// apply them in their epilogues.
#pragma once

#include "fusedops/cuda/common.cuh"

namespace fusedops {
namespace cuda {

template <typename T>
__device__ __forceinline__ T activate(T v, int kind) {
  switch (kind) {
    case 1: return v < T(0) ? T(0) : v;  // NaN stays NaN, as torch.relu (v > 0 ? v : 0 made it 0)
    case 2: return v < T(0) ? T(0) : (v > T(6) ? T(6) : v);
    case 3: {
      T r = v + T(3);
      r = r < T(0) ? T(0) : (r > T(6) ? T(6) : r);
      return v * r / T(6);
    }
    case 4: return v / (T(1) + exp(-v));
    default: return v;
  }
}

}  // namespace cuda
}  // namespace fusedops
