// A CPU emulation of the CUDA execution model, for tests only: the kernels of csrc/cuda/*.cu compile with
// a host compiler against this header (force-included, with FUSEDOPS_CUDA_EMULATION defined) and run on
// CPU tensors. Never a user-facing backend.
//
// Each block's threads run as cooperative fibers that switch only at __syncthreads() and the warp
// intrinsics, so a kernel that reads shared memory before the barrier that should publish it reads what
// another thread has not written yet: shared memory is refilled with 0xFF bytes (NaN in every float type)
// before every block. Blocks run one at a time, threads and blocks in a configurable order (forward,
// reversed, seeded-random). Barrier and warp-intrinsic misuse, and launch configurations a GPU rejects,
// raise errors from the launch. See runtime.cpp.
#pragma once

#ifndef FUSEDOPS_CUDA_EMULATION
#define FUSEDOPS_CUDA_EMULATION 1
#endif

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda_runtime_api.h"

// ---------------------------------------------------------------------------------------------------
// Qualifiers

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Static shared arrays are static locals (blocks run one at a time, so one copy serves every block). The
// loader finds them in the library's symbol table and registers them (register_static_shared), and the
// runtime poisons them before every block.
#define __shared__ static

// ---------------------------------------------------------------------------------------------------
// Built-in variables (set by the scheduler whenever it switches to a thread; launches are serialised)

extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;
constexpr int warpSize = 32;

namespace fusedops_emu {

// Schedules: the order in which a block's threads (between synchronisations) and a grid's blocks run.
enum Schedule : int { kForward = 0, kReversed = 1, kRandom = 2 };

struct Config {
  int multiprocessors = 132;
  int schedule = kForward;
  uint64_t seed = 0;
};
Config& config();

// Runs body(ctx) as every thread of every block of the grid; throws c10::Error on misuse.
void run_grid(dim3 grid, dim3 block, size_t dynamic_shared_bytes, const char* where, void (*body)(void*), void* ctx);

void syncthreads(const char* file, int line);
unsigned char* dynamic_shared();

enum WarpOp : int { kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll, kSyncWarp };
// One lane's part of a warp-wide operation: blocks until every lane of `mask` has arrived, then returns
// this lane's result (the value bits read from another lane, or the ballot/vote).
uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int arg, int width, const char* file, int line);

template <typename T>
T shuffle(WarpOp op, unsigned mask, T v, int arg, int width, const char* file, int line) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>, "shuffle of a wide type");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = warp_op(op, mask, bits, arg, width, file, line);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

template <typename... P>
struct Launch {
  void (*kernel)(P...);
  dim3 grid, block;
  size_t shared_bytes;
  const char* where;

  template <typename... A>
  void operator()(A&&... a) const {
    // Converted once, as the CUDA runtime copies kernel arguments once; every thread gets its own copy.
    struct Ctx {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...> args;
    } ctx{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(a)...)};
    run_grid(
        grid, block, shared_bytes, where,
        [](void* c) {
          auto* x = static_cast<Ctx*>(c);
          std::apply(x->kernel, x->args);
        },
        &ctx);
  }
};

template <typename... P>
Launch<P...> launcher(dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t /*stream*/, const char* where,
                      void (*kernel)(P...)) {
  return Launch<P...>{kernel, grid, block, shared_bytes, where};
}

}  // namespace fusedops_emu

#define FUSEDOPS_EMU_STR2(x) #x
#define FUSEDOPS_EMU_STR(x) FUSEDOPS_EMU_STR2(x)
#define FUSEDOPS_LAUNCH(grid, block, shared_bytes, stream, ...) \
  ::fusedops_emu::launcher(grid, block, shared_bytes, stream, __FILE__ ":" FUSEDOPS_EMU_STR(__LINE__), &__VA_ARGS__)
#define FUSEDOPS_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(::fusedops_emu::dynamic_shared())
// The emulated kernels replace the CPU kernels of the ops, in a test process of their own.
#define FUSEDOPS_REGISTER_CUDA_KERNELS(m) TORCH_LIBRARY_IMPL(fusedops, CPU, m)

// ---------------------------------------------------------------------------------------------------
// Intrinsics

#define __syncthreads() ::fusedops_emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::fusedops_emu::syncwarp_at(__FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_sync(mask, v, lane, ...) \
  ::fusedops_emu::shfl_at(::fusedops_emu::kShflIdx, mask, v, lane, __FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_up_sync(mask, v, delta, ...) \
  ::fusedops_emu::shfl_at(::fusedops_emu::kShflUp, mask, v, delta, __FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_down_sync(mask, v, delta, ...) \
  ::fusedops_emu::shfl_at(::fusedops_emu::kShflDown, mask, v, delta, __FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_xor_sync(mask, v, lane_mask, ...) \
  ::fusedops_emu::shfl_at(::fusedops_emu::kShflXor, mask, v, lane_mask, __FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__)
#define __ballot_sync(mask, pred) \
  static_cast<unsigned>(::fusedops_emu::warp_op(::fusedops_emu::kBallot, mask, (pred) != 0, 0, 32, __FILE__, __LINE__))
#define __any_sync(mask, pred) \
  static_cast<int>(::fusedops_emu::warp_op(::fusedops_emu::kAny, mask, (pred) != 0, 0, 32, __FILE__, __LINE__))
#define __all_sync(mask, pred) \
  static_cast<int>(::fusedops_emu::warp_op(::fusedops_emu::kAll, mask, (pred) != 0, 0, 32, __FILE__, __LINE__))

namespace fusedops_emu {

template <typename T>
T shfl_at(WarpOp op, unsigned mask, T v, int arg, const char* file, int line, int width = warpSize) {
  return shuffle(op, mask, v, arg, width, file, line);
}
inline void syncwarp_at(const char* file, int line, unsigned mask = 0xffffffffu) {
  warp_op(kSyncWarp, mask, 0, 0, 32, file, line);
}

}  // namespace fusedops_emu

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

// Atomics: threads switch only at synchronisations, so a read-modify-write is atomic by construction.
namespace fusedops_emu {
template <typename T, typename F>
inline T atomic_update(T* p, F f) {
  const T old = *p;
  *p = f(old);
  return old;
}
}  // namespace fusedops_emu
template <typename T>
inline T atomicAdd(T* p, T v) {
  return fusedops_emu::atomic_update(p, [v](T old) { return old + v; });
}
template <typename T>
inline T atomicSub(T* p, T v) {
  return fusedops_emu::atomic_update(p, [v](T old) { return old - v; });
}
template <typename T>
inline T atomicMax(T* p, T v) {
  return fusedops_emu::atomic_update(p, [v](T old) { return old < v ? v : old; });
}
template <typename T>
inline T atomicMin(T* p, T v) {
  return fusedops_emu::atomic_update(p, [v](T old) { return v < old ? v : old; });
}
template <typename T>
inline T atomicExch(T* p, T v) {
  return fusedops_emu::atomic_update(p, [v](T) { return v; });
}
template <typename T>
inline T atomicCAS(T* p, T compare, T v) {
  return fusedops_emu::atomic_update(p, [compare, v](T old) { return old == compare ? v : old; });
}
inline void __threadfence() {}
inline void __threadfence_block() {}
