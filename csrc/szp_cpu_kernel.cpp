// The CPU kernel body. Built twice (see CMakeLists.txt): with AVX2 and for
// the baseline x86-64 / any other target; WS_CHUNK_FN names the entry point.
// The loops are kept simple and branch-free so the compiler vectorizes them.
#include <algorithm>

#include "szp_cpu.h"

namespace ws {
namespace {

constexpr int64_t kBlocks = kChunk / 4 + 2;  // Philox blocks a chunk can touch

// noise[k] = standard normal of flat element 4 * b0 + k, k < 4 * nb.
void fill_noise(uint64_t b0, int64_t nb, uint64_t tid, uint64_t seed, float* noise) {
  alignas(64) uint32_t x[4][kBlocks];
  alignas(64) float n[4][kBlocks];
  const uint32_t t0 = static_cast<uint32_t>(tid), t1 = static_cast<uint32_t>(tid >> 32);
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int64_t j = 0; j < nb; ++j) {
    const uint64_t b = b0 + static_cast<uint64_t>(j);
    uint32_t out[4];
    philox4x32_10(static_cast<uint32_t>(b), static_cast<uint32_t>(b >> 32), t0, t1, k0, k1, out);
    x[0][j] = out[0];
    x[1][j] = out[1];
    x[2][j] = out[2];
    x[3][j] = out[3];
  }
  for (int pair = 0; pair < 4; pair += 2)
    for (int64_t j = 0; j < nb; ++j) box_muller(x[pair][j], x[pair + 1][j], n[pair][j], n[pair + 1][j]);
  for (int64_t j = 0; j < nb; ++j)
    for (int k = 0; k < 4; ++k) noise[4 * j + k] = n[k][j];
}

template <DType S, DType O>
void combine_run(typename Storage<O>::type* out, const void* src, const float* add, int64_t n,
                 float a, float s) {
  for (int64_t i = 0; i < n; ++i) out[i] = Storage<O>::from_f32(combine(a, load_f32<S>(src, i), s, add[i]));
}

template <DType O>
void init_run(typename Storage<O>::type* out, const float* add, int64_t n, float az, float s) {
  for (int64_t i = 0; i < n; ++i) out[i] = Storage<O>::from_f32(az + s * add[i]);
}

template <DType S, DType O>
void chunk(const SZPCall& c, int64_t e0, int64_t e1) {
  using T = typename Storage<O>::type;
  alignas(64) float buf[kChunk + 8];
  const int64_t b0 = e0 >> 2;
  float scale = c.noise_scale;
  if (c.noise) {
    fill_noise(static_cast<uint64_t>(b0), ((e1 + 3) >> 2) - b0, c.tid, c.seed, buf);
  } else {  // constant init: add f32(perturb * c) = 1 * constant
    std::fill(buf, buf + (e1 - 4 * b0), c.constant);
    scale = 1.0f;
  }
  const float* add = buf + (e0 - 4 * b0);
  const float az = c.shrink * 0.0f;  // the shrunk zero of padded positions
  const int64_t es = dtype_size(S);
  T* out = static_cast<T*>(c.out) + (e0 - c.begin);
  for (int64_t e = e0; e < e1;) {
    const int64_t r = e / c.cols;
    const int64_t c0 = e - r * c.cols;
    const int64_t c1 = std::min(c.cols, c0 + (e1 - e));
    const int64_t row = c.row_src[r - c.first_row];
    auto run = std::upper_bound(c.runs.begin(), c.runs.end(), c0,
                                [](int64_t v, const ColumnRun& x) { return v < x.end; });
    for (int64_t p = c0; p < c1; ++run) {
      const int64_t q = std::min(c1, run->end);
      const int64_t k = p - c0;
      if (row != kNoRow && run->src >= 0) {
        const char* sp = static_cast<const char*>(c.src) + (row + run->src + (p - run->begin)) * es;
        combine_run<S, O>(out + k, sp, add + k, q - p, c.shrink, scale);
      } else {
        init_run<O>(out + k, add + k, q - p, az, scale);
      }
      p = q;
    }
    out += c1 - c0;
    add += c1 - c0;
    e += c1 - c0;
  }
}

template <DType S>
void dispatch_out(const SZPCall& c, int64_t e0, int64_t e1) {
  switch (c.out_dtype) {
    case DType::F32: return chunk<S, DType::F32>(c, e0, e1);
    case DType::BF16: return chunk<S, DType::BF16>(c, e0, e1);
    case DType::F16: return chunk<S, DType::F16>(c, e0, e1);
  }
}

}  // namespace

void WS_CHUNK_FN(const SZPCall& c, int64_t e0, int64_t e1) {
  switch (c.src_dtype) {
    case DType::F32: return dispatch_out<DType::F32>(c, e0, e1);
    case DType::BF16: return dispatch_out<DType::BF16>(c, e0, e1);
    case DType::F16: return dispatch_out<DType::F16>(c, e0, e1);
  }
}

}  // namespace ws
