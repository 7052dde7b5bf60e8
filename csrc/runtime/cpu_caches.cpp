// fusedops::cpu::cpu_caches(): the cache sizes the CPU kernels' tuning choices follow (cpu/cache_size.h).
#include "fusedops/cpu/cache_size.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <sstream>
#include <string>

#include <unistd.h>

namespace fusedops {
namespace cpu {
namespace {

int64_t reported(int name, int64_t fallback) {
  const int64_t size = static_cast<int64_t>(sysconf(name));
  return size > 0 ? size : fallback;
}

// "512K", "2M", "4096" -> bytes.
int64_t parse_size(const std::string& text, const std::string& spec) {
  size_t used = 0;
  int64_t value = -1;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
  }
  const std::string unit = text.substr(used);
  const int shift = unit.empty() ? 0 : unit == "K" || unit == "k" ? 10 : unit == "M" || unit == "m" ? 20 : -1;
  TORCH_CHECK(value > 0 && shift >= 0, "FUSEDOPS_CPU_CACHES: cannot read the size '", text, "' in '", spec,
              "' (expected e.g. l1d=32K,l2=1M,l3=32M)");
  return value << shift;
}

CpuCaches read_caches() {
  CpuCaches caches{reported(_SC_LEVEL1_DCACHE_SIZE, int64_t(32) << 10),
                   reported(_SC_LEVEL2_CACHE_SIZE, int64_t(1) << 20),
                   reported(_SC_LEVEL3_CACHE_SIZE, int64_t(32) << 20)};
  if (const char* env = std::getenv("FUSEDOPS_CPU_CACHES")) {
    const std::string spec(env);
    std::stringstream entries(spec);
    std::string entry;
    while (std::getline(entries, entry, ',')) {
      if (entry.empty()) continue;
      const size_t eq = entry.find('=');
      const std::string key = entry.substr(0, eq);
      TORCH_CHECK(eq != std::string::npos && (key == "l1d" || key == "l2" || key == "l3"), "FUSEDOPS_CPU_CACHES: '",
                  entry, "' in '", spec, "' is not one of l1d=, l2=, l3=");
      const int64_t bytes = parse_size(entry.substr(eq + 1), spec);
      (key == "l1d" ? caches.l1d : key == "l2" ? caches.l2 : caches.l3) = bytes;
    }
  }
  // Sizes outside these bounds are misreports; the tuning formulas were measured well inside them.
  caches.l1d = std::clamp<int64_t>(caches.l1d, int64_t(16) << 10, int64_t(256) << 10);
  caches.l2 = std::clamp<int64_t>(caches.l2, int64_t(256) << 10, int64_t(8) << 20);
  caches.l3 = std::clamp<int64_t>(caches.l3, int64_t(1) << 20, int64_t(4) << 30);
  return caches;
}

}  // namespace

const CpuCaches& cpu_caches() {
  static const CpuCaches caches = read_caches();
  return caches;
}

}  // namespace cpu
}  // namespace fusedops
