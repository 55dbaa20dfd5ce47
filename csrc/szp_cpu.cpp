#include "szp_cpu.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <thread>
#include <vector>

namespace ws {

namespace {

bool has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

// Below this many elements, starting threads costs more than it saves.
constexpr int64_t kMinParallel = 4 * kChunk;

}  // namespace

const char* szp_cpu_isa() { return has_avx2() ? "avx2" : "baseline"; }

void szp_cpu(const SZPCall& call, int threads) {
  if (call.size() == 0) return;
  const auto fn = has_avx2() ? szp_chunk_avx2 : szp_chunk_base;
  const int64_t first = call.begin / kChunk;
  const int64_t count = (call.end - 1) / kChunk - first + 1;
  std::atomic<int64_t> next{0};
  auto worker = [&] {
    for (int64_t i; (i = next.fetch_add(1)) < count;) {
      const int64_t e0 = std::max(call.begin, (first + i) * kChunk);
      const int64_t e1 = std::min(call.end, (first + i + 1) * kChunk);
      fn(call, e0, e1);
    }
  };
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (call.size() < kMinParallel) threads = 1;
  threads = static_cast<int>(std::min<int64_t>(threads, count));
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
}

}  // namespace ws
