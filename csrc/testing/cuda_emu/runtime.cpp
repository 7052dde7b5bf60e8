// The runtime of the test-only CUDA emulation (see include/fusedops_cuda_emu/emu.h): fibers, the block
// scheduler, barriers, warp intrinsics, launch checks, and the torch.ops.fusedops_emu controls.
//
// Fibers switch with a few instructions of assembly (x86-64 System V: callee-saved registers, the stack
// pointer, MXCSR and the x87 control word), on mmap'ed stacks with a guard page below them. A thread that
// reaches __syncthreads() or a warp intrinsic yields to the scheduler, which runs the block's other
// runnable threads in the configured order; a barrier opens when every thread of the block waits at it,
// a warp intrinsic completes when every lane of its mask has arrived.
#include "fusedops_cuda_emu/emu.h"

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define FUSEDOPS_EMU_ASAN 1
#endif

#if !defined(__x86_64__)
#error "the CUDA emulation switches fibers with x86-64 assembly"
#endif

uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

// void fusedops_emu_switch(void** save_sp, void* next_sp): saves this context on its stack, stores the
// stack pointer in *save_sp and resumes the context saved at next_sp.
extern "C" void fusedops_emu_switch(void** save_sp, void* next_sp);
asm(R"(
  .text
  .globl fusedops_emu_switch
  .hidden fusedops_emu_switch
  .type fusedops_emu_switch, @function
fusedops_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fusedops_emu_switch, .-fusedops_emu_switch
)");

namespace fusedops_emu {
namespace {

constexpr int kMaxThreads = 1024;
constexpr size_t kMaxDynamicShared = 48 * 1024;  // without cudaFuncSetAttribute opt-in
constexpr size_t kSharedGuard = 256;             // bytes checked past the end of dynamic shared memory
constexpr unsigned char kPoison = 0xFF;          // NaN in every floating-point type
constexpr unsigned char kGuardByte = 0xA5;
#ifdef FUSEDOPS_EMU_ASAN
constexpr size_t kStackBytes = 1 << 20;  // ASan's redzones make frames much larger
constexpr size_t kStackTopBytes = 16 << 10;
#else
constexpr size_t kStackBytes = 256 << 10;
#endif

enum State { kRunnable, kAtBarrier, kAtWarp, kDone };

struct Fiber {
  void* sp = nullptr;
  unsigned char* stack = nullptr;  // lowest usable byte (a guard page lies below)
  State state = kDone;
  uint3 idx{};
  int linear = 0;
  const char* file = nullptr;  // where it waits
  int line = 0;
  uint64_t warp_result = 0;
#ifdef FUSEDOPS_EMU_ASAN
  void* fake_stack = nullptr;
#endif
};

struct PendingWarpOp {
  WarpOp op;
  unsigned mask, arrived;
  int width;
  const char* file;
  int line;
  uint64_t value[32];
  int arg[32];
};

struct Grid {
  std::vector<Fiber> fibers;  // sized to the largest block seen; stacks kept between launches
  std::vector<std::vector<PendingWarpOp>> warps;
  int threads = 0;
  Fiber* current = nullptr;
  void* scheduler_sp = nullptr;
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
  std::string error;
  unsigned char* dynamic = nullptr;
  size_t dynamic_bytes = 0;
  std::mt19937_64 rng;
#ifdef FUSEDOPS_EMU_ASAN
  void* scheduler_fake_stack = nullptr;
  const void* scheduler_stack_bottom = nullptr;
  size_t scheduler_stack_size = 0;
#endif
};

Grid& grid_state() {
  static Grid g;
  return g;
}

std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

int64_t g_launches = 0, g_blocks = 0;
// Launches since the schedule was last configured: each launch's random order comes from the seed and this count,
// so configuring the same seed again replays the same orders.
uint64_t g_launches_in_schedule = 0;

// The kernels' static __shared__ arrays: (address, bytes).
std::vector<std::pair<unsigned char*, size_t>>& static_shared() {
  static std::vector<std::pair<unsigned char*, size_t>> arrays;
  return arrays;
}

std::string describe(uint3 v) {
  std::ostringstream s;
  s << "(" << v.x << ", " << v.y << ", " << v.z << ")";
  return s.str();
}

// Leaves the current fiber for the scheduler (returns when the scheduler resumes it).
void yield_to_scheduler(bool exiting = false) {
  Grid& g = grid_state();
  Fiber* f = g.current;
#ifdef FUSEDOPS_EMU_ASAN
  __sanitizer_start_switch_fiber(exiting ? nullptr : &f->fake_stack, g.scheduler_stack_bottom, g.scheduler_stack_size);
#else
  (void)exiting;
#endif
  fusedops_emu_switch(&f->sp, g.scheduler_sp);
#ifdef FUSEDOPS_EMU_ASAN
  __sanitizer_finish_switch_fiber(f->fake_stack, nullptr, nullptr);
#endif
}

// Records a misuse found by a thread and never returns to it: the launch is abandoned.
[[noreturn]] void fail_in_thread(const std::string& message) {
  Grid& g = grid_state();
  if (g.error.empty()) {
    std::ostringstream s;
    s << message << " [block " << describe(blockIdx) << ", thread " << describe(g.current->idx) << "]";
    g.error = s.str();
  }
  g.current->state = kDone;
  yield_to_scheduler(true);
  std::abort();  // unreachable: an abandoned fiber is never resumed
}

[[noreturn]] void fiber_main() {
  Grid& g = grid_state();
#ifdef FUSEDOPS_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g.scheduler_stack_bottom, &g.scheduler_stack_size);
#endif
  try {
    g.body(g.ctx);
  } catch (const std::exception& e) {
    if (g.error.empty()) g.error = std::string("exception in a kernel thread: ") + e.what();
  }
  g.current->state = kDone;
  yield_to_scheduler(true);
  std::abort();
}

void allocate_stack(Fiber& f) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* p =
      mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  TORCH_CHECK(p != MAP_FAILED, "fusedops_emu: cannot map a fiber stack");
  TORCH_CHECK(mprotect(p, page, PROT_NONE) == 0, "fusedops_emu: cannot protect a fiber stack's guard page");
  f.stack = static_cast<unsigned char*>(p) + page;
}

// A stack that fusedops_emu_switch "returns" into fiber_main from, with a 16-byte aligned frame.
void start_fiber(Fiber& f) {
#ifdef FUSEDOPS_EMU_ASAN
  // The frames that never return (fiber_main's, and the final switch's below it) keep their redzones poisoned
  // at the top of the stack; every other frame of a completed thread returned and unpoisoned its own.
  __asan_unpoison_memory_region(f.stack + kStackBytes - kStackTopBytes, kStackTopBytes);
  f.fake_stack = nullptr;
#endif
  auto top = reinterpret_cast<uintptr_t>(f.stack + kStackBytes) & ~uintptr_t(15);
  auto* slot = reinterpret_cast<uint64_t*>(top - 8);  // fiber_main's frame starts here, as after a call
  *--slot = reinterpret_cast<uint64_t>(&fiber_main);  // return address
  for (int r = 0; r < 6; ++r) *--slot = 0;            // rbp, rbx, r12-r15
  *--slot = uint64_t(0x037F) << 32 | 0x1F80;          // x87 control word, MXCSR (defaults)
  f.sp = slot;
  f.state = kRunnable;
}

void resume(Grid& g, Fiber& f) {
  g.current = &f;
  threadIdx = f.idx;
#ifdef FUSEDOPS_EMU_ASAN
  __sanitizer_start_switch_fiber(&g.scheduler_fake_stack, f.stack, kStackBytes);
#endif
  fusedops_emu_switch(&g.scheduler_sp, f.sp);
#ifdef FUSEDOPS_EMU_ASAN
  __sanitizer_finish_switch_fiber(g.scheduler_fake_stack, nullptr, nullptr);
#endif
  g.current = nullptr;
}

std::string lanes_of(unsigned bits) {
  std::ostringstream s;
  bool first = true;
  for (int l = 0; l < 32; ++l)
    if (bits >> l & 1u) {
      s << (first ? "" : ",") << l;
      first = false;
    }
  return s.str();
}

const char* op_name(WarpOp op) {
  switch (op) {
    case kShflIdx: return "__shfl_sync";
    case kShflUp: return "__shfl_up_sync";
    case kShflDown: return "__shfl_down_sync";
    case kShflXor: return "__shfl_xor_sync";
    case kBallot: return "__ballot_sync";
    case kAny: return "__any_sync";
    case kAll: return "__all_sync";
    default: return "__syncwarp";
  }
}

// When no thread can run: opens the barrier every thread waits at, or reports the misuse or deadlock.
void settle(Grid& g) {
  int at_barrier = 0, done = 0;
  const Fiber* first = nullptr;
  for (int i = 0; i < g.threads; ++i) {
    const Fiber& f = g.fibers[i];
    if (f.state == kDone) ++done;
    if (f.state != kAtBarrier) continue;
    ++at_barrier;
    if (first == nullptr) {
      first = &f;
    } else if (f.line != first->line || std::strcmp(f.file, first->file) != 0) {
      std::ostringstream s;
      s << "threads of one block wait at different barriers: thread " << describe(first->idx) << " at " << first->file
        << ":" << first->line << ", thread " << describe(f.idx) << " at " << f.file << ":" << f.line << " [block "
        << describe(blockIdx) << "]";
      g.error = s.str();
      return;
    }
  }
  for (size_t w = 0; w < g.warps.size(); ++w)
    if (!g.warps[w].empty()) {
      const PendingWarpOp& p = g.warps[w].front();
      std::ostringstream s;
      s << "deadlock: " << op_name(p.op) << " at " << p.file << ":" << p.line << " in warp " << w << " waits for lanes "
        << lanes_of(p.mask & ~p.arrived) << " of mask 0x" << std::hex << p.mask << std::dec
        << ", which exited or wait elsewhere [block " << describe(blockIdx) << "]";
      g.error = s.str();
      return;
    }
  if (at_barrier > 0 && done > 0) {
    std::ostringstream s;
    s << "__syncthreads() at " << first->file << ":" << first->line << " reached by " << at_barrier << " threads after "
      << done << " threads of the block exited [block " << describe(blockIdx) << "]";
    g.error = s.str();
    return;
  }
  for (int i = 0; i < g.threads; ++i)
    if (g.fibers[i].state == kAtBarrier) g.fibers[i].state = kRunnable;
}

void run_block(Grid& g, std::vector<int>& order) {
  for (int i = 0; i < g.threads; ++i) start_fiber(g.fibers[i]);
  for (auto& w : g.warps) w.clear();
  for (;;) {
    if (config().schedule == kRandom) std::shuffle(order.begin(), order.end(), g.rng);
    bool ran = false, all_done = true;
    for (int i : order) {
      Fiber& f = g.fibers[i];
      if (f.state == kRunnable) {
        resume(g, f);
        ran = true;
        if (!g.error.empty()) return;
      }
      all_done = all_done && f.state == kDone;
    }
    if (all_done) return;
    if (!ran) {
      settle(g);
      if (!g.error.empty()) return;
    }
  }
}

void poison_shared(Grid& g) {
  for (const auto& [address, bytes] : static_shared()) std::memset(address, kPoison, bytes);
  if (g.dynamic_bytes > 0) std::memset(g.dynamic, kPoison, g.dynamic_bytes);
}

bool guard_intact(const Grid& g) {
  for (size_t i = 0; i < kSharedGuard; ++i)
    if (g.dynamic[g.dynamic_bytes + i] != kGuardByte) return false;
  return true;
}

}  // namespace

Config& config() {
  static Config c;
  return c;
}

unsigned char* dynamic_shared() {
  return grid_state().dynamic;
}

void syncthreads(const char* file, int line) {
  Grid& g = grid_state();
  Fiber* f = g.current;
  f->state = kAtBarrier;
  f->file = file;
  f->line = line;
  yield_to_scheduler();
}

uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int arg, int width, const char* file, int line) {
  Grid& g = grid_state();
  Fiber* f = g.current;
  const int lane = f->linear % warpSize, warp = f->linear / warpSize;
  const int lanes_present = std::min(warpSize, g.threads - warp * warpSize);
  const unsigned present = lanes_present == 32 ? 0xffffffffu : (1u << lanes_present) - 1u;
  // Built only for an error message (this is the emulation's hot path).
  const auto where = [&] { return std::string(op_name(op)) + " at " + file + ":" + std::to_string(line); };
  if (!(mask >> lane & 1u))
    fail_in_thread(where() + ": the calling lane " + std::to_string(lane) + " is not in its mask");
  if (mask & ~present)
    fail_in_thread(where() + ": the mask names lanes " + lanes_of(mask & ~present) + " that the block lacks");
  if (width < 1 || width > warpSize || (width & (width - 1)) != 0)
    fail_in_thread(where() + ": width " + std::to_string(width) + " is not a power of 2 up to 32");
  auto& pending = g.warps[warp];
  PendingWarpOp* p = nullptr;
  for (auto& q : pending) {
    if (q.mask == mask) {
      p = &q;
    } else if (q.mask & mask) {
      fail_in_thread(where() + ": mask overlaps the mask of " + op_name(q.op) + " at " + q.file + ":" +
                     std::to_string(q.line) + " that other lanes wait at");
    }
  }
  if (p == nullptr) {
    pending.push_back(PendingWarpOp{op, mask, 0u, width, file, line, {}, {}});
    p = &pending.back();
  } else if (p->op != op || p->width != width || p->line != line || std::strcmp(p->file, file) != 0) {
    fail_in_thread(where() + ": other lanes of the mask wait at " + op_name(p->op) + " at " + p->file + ":" +
                   std::to_string(p->line));
  }
  p->value[lane] = value;
  p->arg[lane] = arg;
  p->arrived |= 1u << lane;
  if (p->arrived != mask) {
    f->state = kAtWarp;
    f->file = file;
    f->line = line;
    yield_to_scheduler();
    return f->warp_result;
  }
  // The last lane to arrive computes every lane's result.
  const PendingWarpOp done = *p;
  pending.erase(pending.begin() + (p - pending.data()));
  uint64_t ballot = 0;
  for (int l = 0; l < 32; ++l)
    if ((mask >> l & 1u) && done.value[l] != 0) ballot |= uint64_t(1) << l;
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    uint64_t r = 0;
    const int base = l & ~(width - 1);
    int src = l;
    switch (op) {
      case kShflIdx: src = base + (done.arg[l] & (width - 1)); break;
      case kShflUp: src = l - done.arg[l] >= base ? l - done.arg[l] : l; break;
      case kShflDown: src = l + done.arg[l] < base + width ? l + done.arg[l] : l; break;
      case kShflXor: src = (l ^ done.arg[l]) < base + width ? (l ^ done.arg[l]) : l; break;
      default: break;
    }
    if (op <= kShflXor) {
      if (!(mask >> src & 1u))
        fail_in_thread(where() + ": lane " + std::to_string(l) + " reads lane " + std::to_string(src) +
                       ", outside the mask");
      r = done.value[src];
    } else if (op == kBallot) {
      r = ballot;
    } else if (op == kAny) {
      r = ballot != 0;
    } else if (op == kAll) {
      r = ballot == mask;
    }
    Fiber& t = g.fibers[warp * warpSize + l];
    t.warp_result = r;
    t.state = kRunnable;
  }
  return f->warp_result;
}

void run_grid(dim3 grid, dim3 block, size_t dynamic_shared_bytes, const char* where, void (*body)(void*), void* ctx) {
  const std::lock_guard<std::mutex> lock(launch_mutex());
  const int64_t threads = int64_t(block.x) * block.y * block.z;
  TORCH_CHECK(threads >= 1 && threads <= kMaxThreads && block.x <= 1024 && block.y <= 1024 && block.z <= 64,
              "fusedops_emu: launch at ", where, ": invalid block ", block.x, "x", block.y, "x", block.z);
  TORCH_CHECK(grid.x >= 1 && grid.x <= 0x7fffffffu && grid.y >= 1 && grid.y <= 65535 && grid.z >= 1 && grid.z <= 65535,
              "fusedops_emu: launch at ", where, ": invalid grid ", grid.x, "x", grid.y, "x", grid.z);
  TORCH_CHECK(dynamic_shared_bytes <= kMaxDynamicShared, "fusedops_emu: launch at ", where, ": ", dynamic_shared_bytes,
              " bytes of dynamic shared memory exceed the 48 KiB available without opt-in");
  Grid& g = grid_state();
  if (g.fibers.size() < static_cast<size_t>(threads)) {
    const size_t old = g.fibers.size();
    g.fibers.resize(threads);
    for (size_t i = old; i < g.fibers.size(); ++i) allocate_stack(g.fibers[i]);
  }
  g.threads = static_cast<int>(threads);
  g.warps.assign((threads + warpSize - 1) / warpSize, {});
  g.body = body;
  g.ctx = ctx;
  g.error.clear();
  g.rng.seed(config().seed * 0x9E3779B97F4A7C15ull + g_launches_in_schedule++);
  std::vector<unsigned char> dynamic(dynamic_shared_bytes + kSharedGuard + 16);
  g.dynamic = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(dynamic.data()) + 15) & ~uintptr_t(15));
  g.dynamic_bytes = dynamic_shared_bytes;
  std::memset(g.dynamic + dynamic_shared_bytes, kGuardByte, kSharedGuard);
  for (int i = 0; i < g.threads; ++i) {
    Fiber& f = g.fibers[i];
    f.linear = i;
    f.idx = uint3{static_cast<unsigned>(i % block.x), static_cast<unsigned>(i / block.x % block.y),
                  static_cast<unsigned>(i / (block.x * block.y))};
  }
  std::vector<int> order(g.threads);
  std::iota(order.begin(), order.end(), 0);
  if (config().schedule == kReversed) std::reverse(order.begin(), order.end());
  const int64_t blocks = int64_t(grid.x) * grid.y * grid.z;
  std::vector<int64_t> block_order(blocks);
  std::iota(block_order.begin(), block_order.end(), 0);
  if (config().schedule == kReversed) std::reverse(block_order.begin(), block_order.end());
  if (config().schedule == kRandom) std::shuffle(block_order.begin(), block_order.end(), g.rng);
  gridDim = grid;
  blockDim = block;
  ++g_launches;
  for (int64_t b : block_order) {
    blockIdx = uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                     static_cast<unsigned>(b / (int64_t(grid.x) * grid.y))};
    poison_shared(g);
    run_block(g, order);
    ++g_blocks;
    if (g.error.empty() && !guard_intact(g)) {
      g.error = "write past the end of the " + std::to_string(dynamic_shared_bytes) +
                " bytes of dynamic shared memory [block " + describe(blockIdx) + "]";
    }
    if (!g.error.empty()) break;
  }
  g.dynamic = nullptr;
  g.dynamic_bytes = 0;
#ifdef FUSEDOPS_EMU_ASAN
  // The frames of an abandoned launch's threads stay poisoned (they never returned). Only then the whole stack:
  // unpoisoning every thread's 1 MiB for every block made the sanitized suite crawl.
  if (!g.error.empty())
    for (int i = 0; i < g.threads; ++i) __asan_unpoison_memory_region(g.fibers[i].stack, kStackBytes);
#endif
  TORCH_CHECK(g.error.empty(), "fusedops_emu: kernel launched at ", where, ": ", g.error);
}

}  // namespace fusedops_emu

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int /*device*/) {
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = fusedops_emu::config().multiprocessors; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t cudaGetLastError() {
  return cudaSuccess;
}

const char* cudaGetErrorString(cudaError_t error) {
  return error == cudaSuccess ? "no error" : "invalid value";
}

namespace {

void configure(int64_t multiprocessors, int64_t schedule, int64_t seed) {
  TORCH_CHECK(multiprocessors >= 1 && schedule >= 0 && schedule <= 2, "fusedops_emu.configure: bad arguments");
  const std::lock_guard<std::mutex> lock(fusedops_emu::launch_mutex());
  auto& c = fusedops_emu::config();
  c.multiprocessors = static_cast<int>(multiprocessors);
  c.schedule = static_cast<int>(schedule);
  c.seed = static_cast<uint64_t>(seed);
  fusedops_emu::g_launches_in_schedule = 0;
}

// The static __shared__ arrays, as offsets from the library's load address (symbol values) and sizes.
void register_static_shared(std::vector<int64_t> offsets, std::vector<int64_t> sizes) {
  TORCH_CHECK(offsets.size() == sizes.size(), "fusedops_emu.register_static_shared: mismatched lists");
  Dl_info info;
  TORCH_CHECK(dladdr(reinterpret_cast<void*>(&configure), &info) != 0, "fusedops_emu: dladdr failed");
  const std::lock_guard<std::mutex> lock(fusedops_emu::launch_mutex());
  auto& arrays = fusedops_emu::static_shared();
  arrays.clear();
  for (size_t i = 0; i < offsets.size(); ++i)
    arrays.emplace_back(static_cast<unsigned char*>(info.dli_fbase) + offsets[i], static_cast<size_t>(sizes[i]));
}

// (kernel launches, blocks run) since the library was loaded.
std::vector<int64_t> counters() {
  return {fusedops_emu::g_launches, fusedops_emu::g_blocks};
}

}  // namespace

TORCH_LIBRARY(fusedops_emu, m) {
  // schedule: 0 forward, 1 reversed, 2 seeded-random (threads between synchronisations, and blocks).
  m.def("configure(int multiprocessors, int schedule, int seed) -> ()", &configure);
  m.def("counters() -> int[]", &counters);
  m.def("register_static_shared(int[] offsets, int[] sizes) -> ()", &register_static_shared);
}
