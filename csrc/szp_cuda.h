// The CUDA path. Declared without CUDA headers so the binding compiles with
// the host compiler alone.
#pragma once
#include <cstdint>
#include <string>

#include "szp_layout.h"

namespace ws {

// Enqueues the call on `stream` (a cudaStream_t as an integer; 0: legacy
// default stream). Pointers in `call` are device pointers. Throws
// std::runtime_error on a CUDA error.
void szp_cuda(const SZPCall& call, uintptr_t stream);

// Name and compute capability of the current device, for reports.
std::string cuda_device_name();

// How many CUDA devices this process can use; 0 without a driver or a GPU
// (never throws), so `--device auto` can decide without importing torch.
int cuda_device_count();

}  // namespace ws
