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

void szp_cpu(const std::vector<const SZPCall*>& calls, int threads) {
  const auto fn = has_avx2() ? szp_chunk_avx2 : szp_chunk_base;
  // starts[i]: index of the first chunk of calls[i] in the whole batch.
  std::vector<int64_t> starts;
  starts.reserve(calls.size() + 1);
  int64_t chunks = 0, elements = 0;
  for (const SZPCall* call : calls) {
    starts.push_back(chunks);
    if (call->size() > 0) chunks += (call->end - 1) / kChunk - call->begin / kChunk + 1;
    elements += call->size();
  }
  starts.push_back(chunks);
  std::atomic<int64_t> next{0};
  auto worker = [&] {
    for (int64_t i; (i = next.fetch_add(1)) < chunks;) {
      const size_t k = std::upper_bound(starts.begin(), starts.end(), i) - starts.begin() - 1;
      const SZPCall& call = *calls[k];
      const int64_t chunk = call.begin / kChunk + (i - starts[k]);
      fn(call, std::max(call.begin, chunk * kChunk), std::min(call.end, (chunk + 1) * kChunk));
    }
  };
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (elements < kMinParallel) threads = 1;
  threads = static_cast<int>(std::min<int64_t>(threads, chunks));
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
}

}  // namespace ws
