// The CPU path: one chunk of a call, compiled once per instruction set.
#pragma once
#include "szp_layout.h"

namespace ws {

// Output elements are processed in chunks aligned to multiples of kChunk in
// the flat index, so the work split never depends on the thread count.
constexpr int64_t kChunk = 4096;

// Writes flat output elements [e0, e1), which lie inside one aligned chunk.
void szp_chunk_avx2(const SZPCall& call, int64_t e0, int64_t e1);
void szp_chunk_base(const SZPCall& call, int64_t e0, int64_t e1);

// Runs the whole call on `threads` threads (<= 0: all hardware threads).
void szp_cpu(const SZPCall& call, int threads);

// Which instruction set szp_cpu uses on this machine.
const char* szp_cpu_isa();

}  // namespace ws
