// Test-only stand-in for c10's CUDA error checks under the CPU emulation: emulated launches report
// their errors by throwing, so the launch check has nothing left to do.
#pragma once

#include <c10/util/Exception.h>

#include "cuda_runtime_api.h"

#define C10_CUDA_CHECK(expr)                                                                            \
  do {                                                                                                  \
    const cudaError_t fusedops_emu_err = (expr);                                                        \
    TORCH_CHECK(fusedops_emu_err == cudaSuccess, "CUDA error: ", cudaGetErrorString(fusedops_emu_err)); \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())
