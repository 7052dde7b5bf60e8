// Tiny kernels that misuse the CUDA execution model on purpose, for the emulation's own tests
// (tests/test_cuda_emu_self_test.py): each error report of runtime.cpp is triggered by one of them, and the same
// kernel with `misuse` 0 is the control that must run cleanly. Written as the CUDA kernels are (through
// fusedops/cuda/common.cuh and its macros) and built only into the emulated library.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>
#include <string>
#include <vector>

#include "fusedops/cuda/common.cuh"

// Namespace fusedops::cuda: the loader registers the static __shared__ arrays of this namespace for poisoning.
namespace fusedops {
namespace cuda {
namespace emu_self_test {

constexpr unsigned kFull = 0xffffffffu;

__device__ int linear_thread() {
  return static_cast<int>(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
}

__device__ int64_t linear_block() {
  return blockIdx.x + int64_t(gridDim.x) * (blockIdx.y + int64_t(gridDim.y) * blockIdx.z);
}

// Every thread writes its index after one barrier.
// misuse 1: the upper half of the block waits at another __syncthreads() (a barrier in divergent code).
// misuse 2: the upper half exits before the barrier the others wait at.
__global__ void barrier_kernel(int64_t* out, int misuse) {
  const int t = linear_thread();
  const bool upper = t >= static_cast<int>(blockDim.x * blockDim.y * blockDim.z) / 2;
  if (misuse == 2 && upper) return;
  if (misuse == 1 && upper) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[linear_block() * blockDim.x * blockDim.y * blockDim.z + t] = t;
}

// Every lane passes one __syncwarp() of the whole warp.
// misuse 1: lanes 16-31 exit first, so the others wait for them forever.
// misuse 2: lanes 16-31 wait at __syncthreads() instead, which cannot open while lanes 0-15 wait at the warp.
__global__ void warp_deadlock_kernel(int64_t* out, int misuse) {
  const int t = linear_thread(), lane = t % warpSize;
  if (misuse == 1 && lane >= 16) return;
  if (misuse == 2 && lane >= 16) {
    __syncthreads();
    return;
  }
  __syncwarp();
  out[t] = t;
}

// The warp intrinsics' results, kResults per thread (the test computes what CUDA defines them to be).
constexpr int kResults = 11;
__global__ void warp_ops_kernel(int64_t* out, int /*misuse*/) {
  const int t = linear_thread(), lane = t % warpSize;
  const int64_t v = 1000 + t;
  int64_t* r = out + int64_t(t) * kResults;
  r[0] = __shfl_sync(kFull, v, 3);
  r[1] = __shfl_up_sync(kFull, v, 2);
  r[2] = __shfl_down_sync(kFull, v, 5);
  r[3] = __shfl_xor_sync(kFull, v, 6);
  r[4] = __shfl_down_sync(kFull, v, 3, 8);
  r[5] = __shfl_sync(kFull, v, 9, 16);
  r[6] = __ballot_sync(kFull, lane % 3 == 0);
  r[7] = __any_sync(kFull, lane == 5);
  r[8] = __all_sync(kFull, lane < 31);
  r[9] = __all_sync(kFull, lane < 32);
  // Two half-warps exchange within their own masks at the same time.
  const unsigned half = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  r[10] = __shfl_xor_sync(half, v, 1);
}

// One misuse of a warp intrinsic per `misuse` (0: none):
// 1 the calling lane is not in the mask; 2 a lane reads a lane outside the mask; 3 a width that is not a power of
// 2; 4 the mask names lanes the block lacks (the block has blockDim.x < 32 threads); 5 two groups of lanes wait
// with overlapping masks; 6 lanes of one mask wait at different shuffles.
__global__ void warp_misuse_kernel(int64_t* out, int misuse) {
  const int t = linear_thread(), lane = t % warpSize;
  const int threads = static_cast<int>(blockDim.x);
  const unsigned present = threads >= warpSize ? kFull : (1u << threads) - 1u;
  const int64_t v = 1000 + t;
  int64_t r = -1;
  switch (misuse) {
    case 0: r = __shfl_xor_sync(present, v, 1); break;
    case 1: r = __shfl_sync(0xfffffffeu, v, 1); break;
    case 2:
      if (lane < 16) r = __shfl_down_sync(0x0000ffffu, v, 8);
      break;
    case 3: r = __shfl_sync(kFull, v, 0, 12); break;
    case 4: r = __shfl_xor_sync(kFull, v, 1); break;
    case 5:
      if (lane < 16) {
        __syncwarp(0x0001ffffu);
      } else {
        __syncwarp(0xffff0000u);
      }
      break;
    case 6:
      if (lane % 2 == 0) {
        r = __shfl_xor_sync(kFull, v, 1);
      } else {
        r = __shfl_xor_sync(kFull, v, 1);
      }
      break;
  }
  out[t] = r;
}

// Each block first reads what its shared memory holds (it must be the poison, not an earlier block's data),
// then writes its own block index over it. out[0] holds the launch's dynamic shared-memory bytes. misuse 1: the
// write goes one byte past the end of the dynamic shared memory.
__global__ void shared_kernel(int64_t* out, int misuse) {
  __shared__ unsigned char tile[48];
  FUSEDOPS_DYNAMIC_SHARED(unsigned char, dynamic);
  const int64_t dynamic_bytes = out[0], b = linear_block();
  if (linear_thread() != 0) return;
  int64_t* r = out + 1 + b * (int64_t(sizeof(tile)) + dynamic_bytes);
  for (size_t i = 0; i < sizeof(tile); ++i) r[i] = tile[i];
  for (int64_t i = 0; i < dynamic_bytes; ++i) r[sizeof(tile) + i] = dynamic[i];
  for (size_t i = 0; i < sizeof(tile); ++i) tile[i] = static_cast<unsigned char>(b);
  for (int64_t i = 0; i < dynamic_bytes + (misuse == 1); ++i) dynamic[i] = static_cast<unsigned char>(b);
}

// The order threads run in: each records (block, thread) in a shared counter's next slot, once before a barrier
// and once after it.
__global__ void order_kernel(int64_t* out, int /*misuse*/) {
  const int64_t id = linear_block() * blockDim.x * blockDim.y * blockDim.z + linear_thread();
  out[1 + atomicAdd(out, int64_t(1))] = id;
  __syncthreads();
  out[1 + atomicAdd(out, int64_t(1))] = id;
}

void launch(c10::string_view kernel, int64_t misuse, std::vector<int64_t> grid, std::vector<int64_t> block,
            int64_t shared_bytes, const at::Tensor& out) {
  TORCH_CHECK(grid.size() == 3 && block.size() == 3, "fusedops_emu.self_test: grid and block take 3 sizes");
  TORCH_CHECK(out.is_cpu() && out.scalar_type() == at::kLong && out.is_contiguous(),
              "fusedops_emu.self_test: out must be a contiguous int64 CPU tensor");
  const dim3 g(static_cast<unsigned>(grid[0]), static_cast<unsigned>(grid[1]), static_cast<unsigned>(grid[2]));
  const dim3 b(static_cast<unsigned>(block[0]), static_cast<unsigned>(block[1]), static_cast<unsigned>(block[2]));
  const auto smem = static_cast<size_t>(shared_bytes);
  const int m = static_cast<int>(misuse);
  int64_t* o = out.data_ptr<int64_t>();
  const std::string name(kernel.data(), kernel.size());
  if (name == "barrier") {
    FUSEDOPS_LAUNCH(g, b, smem, nullptr, barrier_kernel)(o, m);
  } else if (name == "warp_deadlock") {
    FUSEDOPS_LAUNCH(g, b, smem, nullptr, warp_deadlock_kernel)(o, m);
  } else if (name == "warp_ops") {
    FUSEDOPS_LAUNCH(g, b, smem, nullptr, warp_ops_kernel)(o, m);
  } else if (name == "warp_misuse") {
    FUSEDOPS_LAUNCH(g, b, smem, nullptr, warp_misuse_kernel)(o, m);
  } else if (name == "shared") {
    FUSEDOPS_LAUNCH(g, b, smem, nullptr, shared_kernel)(o, m);
  } else if (name == "order") {
    FUSEDOPS_LAUNCH(g, b, smem, nullptr, order_kernel)(o, m);
  } else {
    TORCH_CHECK(false, "fusedops_emu.self_test: no kernel ", name);
  }
}

}  // namespace emu_self_test
}  // namespace cuda
}  // namespace fusedops

TORCH_LIBRARY_FRAGMENT(fusedops_emu, m) {
  // Launches one of the self-test kernels above with `misuse` (0: used correctly).
  m.def("self_test(str kernel, int misuse, int[] grid, int[] block, int shared_bytes, Tensor(a!) out) -> ()",
        &fusedops::cuda::emu_self_test::launch);
}
