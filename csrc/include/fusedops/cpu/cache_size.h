// The per-core L2 size of the machine the kernels run on, for tile budgets that follow the cache instead of one
// machine's constant (L2 per core is 512 KiB on AMD Zen 2/3, 1 MiB on Zen 4 and Skylake-SP, 2 MiB on Sapphire
// Rapids).
#pragma once

#include <algorithm>
#include <cstdint>

#include <unistd.h>

namespace fusedops {
namespace cpu {

// What glibc reads from the CPU (sysconf), clamped to [256 KiB, 4 MiB]; 1 MiB where it is not known.
inline int64_t l2_cache_bytes() {
  static const int64_t bytes = [] {
    int64_t size = 0;
#ifdef _SC_LEVEL2_CACHE_SIZE
    size = static_cast<int64_t>(sysconf(_SC_LEVEL2_CACHE_SIZE));
#endif
    if (size <= 0) size = int64_t(1) << 20;
    return std::clamp<int64_t>(size, int64_t(256) << 10, int64_t(4) << 20);
  }();
  return bytes;
}

}  // namespace cpu
}  // namespace fusedops
