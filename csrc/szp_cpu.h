// The CPU path: one chunk of a call, compiled once per instruction set.
#pragma once
#include <vector>

#include "szp_layout.h"

namespace ws {

// Output elements are processed in chunks aligned to multiples of kChunk in
// the flat index, so the work split never depends on the thread count.
constexpr int64_t kChunk = 4096;

// Writes flat output elements [e0, e1), which lie inside one aligned chunk.
void szp_chunk_avx2(const SZPCall& call, int64_t e0, int64_t e1);
void szp_chunk_base(const SZPCall& call, int64_t e0, int64_t e1);

// Runs whole calls on `threads` threads (<= 0: all hardware threads). The
// aligned chunks of all the calls are shared out together, so a batch of many
// small calls (a checkpoint of many small tensors) keeps every thread busy and
// starts its threads once, not once per call. Each output element is a pure
// function of its call, so neither the batching nor the thread count changes
// a byte.
void szp_cpu(const std::vector<const SZPCall*>& calls, int threads);

// Which instruction set szp_cpu uses on this machine.
const char* szp_cpu_isa();

}  // namespace ws
