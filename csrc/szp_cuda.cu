// The CUDA path: one fused kernel. Each thread owns 8 consecutive output
// elements (two Philox blocks), so bf16/fp16 outputs leave in one 16-byte
// store and float32 in two, where the row range is aligned.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "szp_cuda.h"

namespace ws {
namespace {

constexpr int kPerThread = 8;
constexpr int kThreads = 256;
// group[c] describes columns [c, c + 8): the first source column when all 8
// map to consecutive source columns, kGroupEmpty when none has a source, and
// kGroupMixed otherwise (the per-element path handles it).
constexpr int32_t kGroupEmpty = -1, kGroupMixed = -2;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
}

struct Params {
  void* out;
  const void* src;
  const int64_t* row_src;  // per row from first_row, or kNoRow
  const int64_t* col_src;  // per column, or -1
  const int32_t* group;    // per column: see kGroupMixed
  // An operator's scales and noise positions (see SZPCall); read when `general`.
  const float *row_scale, *row_sign, *col_scale, *col_sign;
  const int64_t *row_noise, *col_noise;
  int64_t begin, end, base, cols, first_row, num_rows;
  float shrink, scale, constant, constant_src;
  bool noise, general, plain_noise;
  uint64_t seed, tid;
};

template <DType O>
__device__ __forceinline__ void store8(typename Storage<O>::type* out, const float v[kPerThread]);

template <>
__device__ __forceinline__ void store8<DType::F32>(uint32_t* out, const float v[kPerThread]) {
  uint4 lo, hi;
  lo.x = Storage<DType::F32>::from_f32(v[0]);
  lo.y = Storage<DType::F32>::from_f32(v[1]);
  lo.z = Storage<DType::F32>::from_f32(v[2]);
  lo.w = Storage<DType::F32>::from_f32(v[3]);
  hi.x = Storage<DType::F32>::from_f32(v[4]);
  hi.y = Storage<DType::F32>::from_f32(v[5]);
  hi.z = Storage<DType::F32>::from_f32(v[6]);
  hi.w = Storage<DType::F32>::from_f32(v[7]);
  reinterpret_cast<uint4*>(out)[0] = lo;
  reinterpret_cast<uint4*>(out)[1] = hi;
}

template <DType O>
__device__ __forceinline__ void store8_half(uint16_t* out, const float v[kPerThread]) {
  uint32_t w[4];
#pragma unroll
  for (int k = 0; k < 4; ++k)
    w[k] = static_cast<uint32_t>(Storage<O>::from_f32(v[2 * k])) |
           (static_cast<uint32_t>(Storage<O>::from_f32(v[2 * k + 1])) << 16);
  *reinterpret_cast<uint4*>(out) = make_uint4(w[0], w[1], w[2], w[3]);
}
template <>
__device__ __forceinline__ void store8<DType::BF16>(uint16_t* out, const float v[kPerThread]) {
  store8_half<DType::BF16>(out, v);
}
template <>
__device__ __forceinline__ void store8<DType::F16>(uint16_t* out, const float v[kPerThread]) {
  store8_half<DType::F16>(out, v);
}

// x[k] = shrink * src[off + k], with 16-byte loads where aligned.
template <DType S>
__device__ __forceinline__ void load8(const void* src, int64_t off, float shrink, float x[kPerThread]) {
  const int64_t es = S == DType::F32 ? 4 : 2;
  const char* ptr = static_cast<const char*>(src) + off * es;
  if ((reinterpret_cast<uintptr_t>(ptr) & 15) == 0) {
    uint4 w[2];
    w[0] = reinterpret_cast<const uint4*>(ptr)[0];
    if (S == DType::F32) w[1] = reinterpret_cast<const uint4*>(ptr)[1];
    const uint32_t* words = reinterpret_cast<const uint32_t*>(w);
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
      const float f = S == DType::F32 ? u2f(words[k])
                                      : load_f32<S>(reinterpret_cast<const uint16_t*>(words), k);
      x[k] = shrink * f;
    }
  } else {
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) x[k] = shrink * load_f32<S>(src, off + k);
  }
}

__device__ __forceinline__ int64_t row_at(const Params& p, int64_t r) {
  const int64_t i = r - p.first_row;
  return i >= 0 && i < p.num_rows ? p.row_src[i] : kNoRow;
}

// The values of an operator's elements g0 .. g0 + 7 (scales and noise drawn
// elsewhere), one element at a time: a per-element Philox block where the
// noise is not the element's own.
template <DType S>
__device__ void general8(const Params& p, int64_t g0, float v[kPerThread]) {
  float own[kPerThread];
  if (p.noise && p.plain_noise) {
    normal4(static_cast<uint64_t>(g0 >> 2), p.tid, p.seed, own);
    normal4(static_cast<uint64_t>(g0 >> 2) + 1, p.tid, p.seed, own + 4);
  }
  const float az = p.shrink * 0.0f;
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int64_t g = g0 + k;
    v[k] = 0.f;
    if (g < p.begin || g >= p.end) continue;
    const int64_t r = g / p.cols, c = g - r * p.cols, i = r - p.first_row;
    const int64_t row = p.row_src[i], col = p.col_src[c];
    const bool mapped = row != kNoRow && col >= 0;
    float x = az, n;
    if (mapped) x = (p.shrink * p.row_scale[i]) * p.col_scale[c] * load_f32<S>(p.src, row + col);
    if (!p.noise) {
      n = mapped ? p.constant_src : p.constant;
    } else if (p.plain_noise) {
      n = own[k];
    } else {
      const int64_t at = p.row_noise[i] + p.col_noise[c];
      float drawn[4];
      normal4(static_cast<uint64_t>(at >> 2), p.tid, p.seed, drawn);
      n = (p.row_sign[i] * p.col_sign[c]) * drawn[at & 3];
    }
    v[k] = x + p.scale * n;
  }
}

template <DType S, DType O>
__global__ void __launch_bounds__(kThreads) szp_kernel(const Params p) {
  using T = typename Storage<O>::type;
  const int64_t g0 = p.base + kPerThread * (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x);
  if (g0 >= p.end) return;
  if (p.general) {
    float v[kPerThread];
    general8<S>(p, g0, v);
    T* out = static_cast<T*>(p.out) + (g0 - p.begin);
#pragma unroll
    for (int k = 0; k < kPerThread; ++k)
      if (g0 + k >= p.begin && g0 + k < p.end) out[k] = Storage<O>::from_f32(v[k]);
    return;
  }

  float add[kPerThread];
  if (p.noise) {
    normal4(static_cast<uint64_t>(g0 >> 2), p.tid, p.seed, add);
    normal4(static_cast<uint64_t>(g0 >> 2) + 1, p.tid, p.seed, add + 4);
  } else {
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) add[k] = p.constant;
  }

  const float az = p.shrink * 0.0f;
  const bool whole = g0 >= p.begin && g0 + kPerThread <= p.end;
  // 64-bit division is a long software routine; most tensors fit in 32 bits.
  int64_t r = ((g0 | p.cols) >> 32) == 0
                  ? static_cast<int64_t>(static_cast<uint32_t>(g0) / static_cast<uint32_t>(p.cols))
                  : g0 / p.cols;
  int64_t c = g0 - r * p.cols;
  int64_t row = row_at(p, r);
  float v[kPerThread];
  const int32_t group = whole && c + kPerThread <= p.cols ? p.group[c] : kGroupMixed;
  if (group != kGroupMixed) {  // the common case: one row, one run of columns
    float x[kPerThread];
    const bool mapped = row != kNoRow && group >= 0;
    if (mapped) load8<S>(p.src, row + group, p.shrink, x);
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
      if (!mapped) x[k] = az;
      v[k] = x[k] + p.scale * (mapped && !p.noise ? p.constant_src : add[k]);
    }
  } else {
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
      float x = az, n = add[k];
      if (g0 + k >= p.begin && g0 + k < p.end) {
        const int64_t col = p.col_src[c];
        if (row != kNoRow && col >= 0) {
          x = p.shrink * load_f32<S>(p.src, row + col);
          if (!p.noise) n = p.constant_src;
        }
      }
      v[k] = x + p.scale * n;
      if (++c == p.cols) {  // next row
        c = 0;
        row = row_at(p, ++r);
      }
    }
  }

  T* out = static_cast<T*>(p.out) + (g0 - p.begin);
  if (whole && (reinterpret_cast<uintptr_t>(out) & 15) == 0) {
    store8<O>(out, v);
  } else {
#pragma unroll
    for (int k = 0; k < kPerThread; ++k)
      if (g0 + k >= p.begin && g0 + k < p.end) out[k] = Storage<O>::from_f32(v[k]);
  }
}

template <DType S>
void launch_out(const Params& p, DType out, dim3 grid, cudaStream_t s) {
  switch (out) {
    case DType::F32: szp_kernel<S, DType::F32><<<grid, kThreads, 0, s>>>(p); break;
    case DType::BF16: szp_kernel<S, DType::BF16><<<grid, kThreads, 0, s>>>(p); break;
    case DType::F16: szp_kernel<S, DType::F16><<<grid, kThreads, 0, s>>>(p); break;
  }
}

}  // namespace

void szp_cuda(const SZPCall& call, uintptr_t stream_handle) {
  if (call.size() == 0) return;
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);

  // Lookup tables, row offsets then per-column source columns, in one copy.
  std::vector<int64_t> tables(call.row_src);
  const size_t col_at = tables.size();
  tables.resize(col_at + static_cast<size_t>(call.cols), -1);
  for (const ColumnRun& run : call.runs)
    if (run.src >= 0)
      for (int64_t c = run.begin; c < run.end; ++c) tables[col_at + c] = run.src + (c - run.begin);
  // Column groups, packed as int32 after the int64 tables.
  const size_t group_at = tables.size();
  const int64_t cols = call.cols;
  tables.resize(group_at + static_cast<size_t>((cols + 1) / 2), 0);
  int32_t* group = reinterpret_cast<int32_t*>(tables.data() + group_at);
  const int64_t* col = tables.data() + col_at;
  for (int64_t c = 0; c < cols; ++c) {
    bool empty = true, run = col[c] >= 0;
    for (int64_t k = 0; k < kPerThread && c + k < cols; ++k) {
      empty = empty && col[c + k] < 0;
      run = run && col[c + k] == col[c] + k;
    }
    group[c] = c + kPerThread > cols || col[c] > INT32_MAX ? kGroupMixed
               : empty               ? kGroupEmpty
               : run                 ? static_cast<int32_t>(col[c])
                                     : kGroupMixed;
  }
  // An operator's scales and noise positions, per row and per column, after them.
  bool general = !call.plain_noise;
  for (float f : call.row_scale) general = general || f != 1.f;
  for (const ColumnRun& run : call.runs) general = general || run.scale != 1.f;
  size_t row_scale_at = 0, row_sign_at = 0, row_noise_at = 0, col_scale_at = 0, col_sign_at = 0,
         col_noise_at = 0;
  if (general) {
    const size_t n_cols = static_cast<size_t>(cols);
    std::vector<float> col_scale(n_cols), col_sign(n_cols);
    std::vector<int64_t> col_noise(n_cols);
    for (const ColumnRun& run : call.runs)
      for (int64_t c = run.begin; c < run.end; ++c) {
        col_scale[c] = run.scale;
        col_sign[c] = run.sign;
        col_noise[c] = run.noise + (c - run.begin);
      }
    auto put = [&tables](const void* data, size_t n_bytes) {
      const size_t at = tables.size();
      tables.resize(at + (n_bytes + sizeof(int64_t) - 1) / sizeof(int64_t), 0);
      std::memcpy(tables.data() + at, data, n_bytes);
      return at;
    };
    row_scale_at = put(call.row_scale.data(), call.row_scale.size() * sizeof(float));
    row_sign_at = put(call.row_sign.data(), call.row_sign.size() * sizeof(float));
    row_noise_at = put(call.row_noise.data(), call.row_noise.size() * sizeof(int64_t));
    col_scale_at = put(col_scale.data(), n_cols * sizeof(float));
    col_sign_at = put(col_sign.data(), n_cols * sizeof(float));
    col_noise_at = put(col_noise.data(), n_cols * sizeof(int64_t));
  }
  int64_t* dev_tables = nullptr;
  const size_t bytes = tables.size() * sizeof(int64_t);
  check(cudaMallocAsync(reinterpret_cast<void**>(&dev_tables), bytes, stream), "cudaMallocAsync");
  check(cudaMemcpyAsync(dev_tables, tables.data(), bytes, cudaMemcpyHostToDevice, stream),
        "cudaMemcpyAsync");

  Params p;
  p.out = call.out;
  p.src = call.src;
  p.row_src = dev_tables;
  p.col_src = dev_tables + col_at;
  p.group = reinterpret_cast<const int32_t*>(dev_tables + group_at);
  p.general = general;
  p.plain_noise = call.plain_noise;
  p.row_scale = reinterpret_cast<const float*>(dev_tables + row_scale_at);
  p.row_sign = reinterpret_cast<const float*>(dev_tables + row_sign_at);
  p.row_noise = dev_tables + row_noise_at;
  p.col_scale = reinterpret_cast<const float*>(dev_tables + col_scale_at);
  p.col_sign = reinterpret_cast<const float*>(dev_tables + col_sign_at);
  p.col_noise = dev_tables + col_noise_at;
  p.begin = call.begin;
  p.end = call.end;
  p.base = call.begin & ~static_cast<int64_t>(kPerThread - 1);
  p.cols = call.cols;
  p.first_row = call.first_row;
  p.num_rows = static_cast<int64_t>(call.row_src.size());
  p.shrink = call.shrink;
  p.noise = call.noise;
  p.scale = call.noise ? call.noise_scale : 1.0f;
  p.constant = call.constant;
  p.constant_src = call.constant_src;
  p.seed = call.seed;
  p.tid = call.tid;

  const int64_t threads = (call.end - p.base + kPerThread - 1) / kPerThread;
  const dim3 grid(static_cast<unsigned>((threads + kThreads - 1) / kThreads));
  switch (call.src_dtype) {
    case DType::F32: launch_out<DType::F32>(p, call.out_dtype, grid, stream); break;
    case DType::BF16: launch_out<DType::BF16>(p, call.out_dtype, grid, stream); break;
    case DType::F16: launch_out<DType::F16>(p, call.out_dtype, grid, stream); break;
  }
  check(cudaGetLastError(), "szp_kernel launch");
  check(cudaFreeAsync(dev_tables, stream), "cudaFreeAsync");
}

std::string cuda_device_name() {
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  cudaDeviceProp prop;
  check(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties");
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ")";
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the error so later calls start clean
    return 0;
  }
  return n;
}

}  // namespace ws
