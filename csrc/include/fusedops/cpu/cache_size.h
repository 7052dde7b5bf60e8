// The cache sizes of the machine the kernels run on, for tuning choices that follow the cache instead of one
// machine's constant (L2 per core is 512 KiB on AMD Zen 2/3, 1 MiB on Zen 4 and Skylake-SP, 2 MiB on Sapphire
// Rapids and later).
#pragma once

#include <cstdint>

namespace fusedops {
namespace cpu {

struct CpuCaches {
  int64_t l1d;  // per core
  int64_t l2;   // per core
  int64_t l3;   // as reported: on cloud machines the socket's, not this tenant's share of it
};

// Read once: what glibc reads from the CPU (sysconf), with defaults of 32 KiB / 1 MiB / 32 MiB where it reports
// nothing. The environment variable FUSEDOPS_CPU_CACHES (e.g. "l1d=32K,l2=1M,l3=32M") overrides any of them, so
// that the choices another machine's caches would give can be run and timed on this one.
const CpuCaches& cpu_caches();

inline int64_t l1d_cache_bytes() {
  return cpu_caches().l1d;
}

inline int64_t l2_cache_bytes() {
  return cpu_caches().l2;
}

}  // namespace cpu
}  // namespace fusedops
