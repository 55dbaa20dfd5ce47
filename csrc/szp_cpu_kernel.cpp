// The CPU kernel body. Built twice (see CMakeLists.txt): with AVX2 and for
// the baseline x86-64 / any other target; WS_CHUNK_FN names the entry point.
// The loops are kept simple and branch-free so the compiler vectorizes them.
#include <algorithm>

#include "szp_cpu.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace ws {
namespace {

constexpr int64_t kBlocks = kChunk / 4 + 2;  // Philox blocks a chunk can touch

#if defined(__AVX2__)
// 32x32 -> 64 products of 8 lanes; the compiler's own vectorization of the
// scalar version spends most of its time shuffling.
inline void mulhilo8(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// Philox4x32-10 of blocks b0 .. b0 + 7 (counter words 0, 1 from the block).
inline void philox8(uint64_t b0, uint32_t t0, uint32_t t1, uint32_t k0, uint32_t k1, uint32_t* x0,
                    uint32_t* x1, uint32_t* x2, uint32_t* x3) {
  alignas(32) uint32_t lo[8], hi[8];
  for (int l = 0; l < 8; ++l) {
    lo[l] = static_cast<uint32_t>(b0 + l);
    hi[l] = static_cast<uint32_t>((b0 + l) >> 32);
  }
  __m256i c0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo));
  __m256i c1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi));
  __m256i c2 = _mm256_set1_epi32(static_cast<int>(t0));
  __m256i c3 = _mm256_set1_epi32(static_cast<int>(t1));
  const __m256i m0 = _mm256_set1_epi64x(kPhiloxM0), m1 = _mm256_set1_epi64x(kPhiloxM1);
  for (int round = 0; round < 10; ++round) {
    __m256i hi0, lo0, hi1, lo1;
    mulhilo8(c0, m0, hi0, lo0);
    mulhilo8(c2, m1, hi1, lo1);
    const __m256i key0 = _mm256_set1_epi32(static_cast<int>(k0));
    const __m256i key1 = _mm256_set1_epi32(static_cast<int>(k1));
    c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), key0);
    c1 = lo1;
    c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), key1);
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(x0), c0);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(x1), c1);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(x2), c2);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(x3), c3);
}
#endif

// noise[k] = standard normal of flat element 4 * b0 + k, k < 4 * nb.
void fill_noise(uint64_t b0, int64_t nb, uint64_t tid, uint64_t seed, float* noise) {
  alignas(64) uint32_t x[4][kBlocks + 8];
  alignas(64) float n[4][kBlocks];
  const uint32_t t0 = static_cast<uint32_t>(tid), t1 = static_cast<uint32_t>(tid >> 32);
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  int64_t j = 0;
#if defined(__AVX2__)
  for (; j < nb; j += 8) philox8(b0 + j, t0, t1, k0, k1, x[0] + j, x[1] + j, x[2] + j, x[3] + j);
#endif
  for (; j < nb; ++j) {
    const uint64_t b = b0 + static_cast<uint64_t>(j);
    uint32_t out[4];
    philox4x32_10(static_cast<uint32_t>(b), static_cast<uint32_t>(b >> 32), t0, t1, k0, k1, out);
    for (int k = 0; k < 4; ++k) x[k][j] = out[k];
  }
  for (int pair = 0; pair < 4; pair += 2)
    for (j = 0; j < nb; ++j) box_muller(x[pair][j], x[pair + 1][j], n[pair][j], n[pair + 1][j]);
  for (j = 0; j < nb; ++j)
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
  alignas(64) float src_buf[kChunk + 8];  // constant init: what lands on source elements
  alignas(64) float drawn[kChunk + 8];    // one run's noise, where it is drawn elsewhere
  const int64_t b0 = e0 >> 2;
  float scale = c.noise_scale;
  const float* add = buf + (e0 - 4 * b0);
  const float* add_src = add;
  if (!c.noise) {  // constant init: add f32(perturb * c) = 1 * constant
    std::fill(buf, buf + (e1 - 4 * b0), c.constant);
    std::fill(src_buf, src_buf + (e1 - 4 * b0), c.constant_src);
    add_src = src_buf + (e0 - 4 * b0);
    scale = 1.0f;
  } else if (c.plain_noise) {  // else each run draws its own, below
    fill_noise(static_cast<uint64_t>(b0), ((e1 + 3) >> 2) - b0, c.tid, c.seed, buf);
  }
  const float az = c.shrink * 0.0f;  // the shrunk zero of padded positions
  const int64_t es = dtype_size(S);
  T* out = static_cast<T*>(c.out) + (e0 - c.begin);
  for (int64_t e = e0; e < e1;) {
    const int64_t r = e / c.cols;
    const int64_t c0 = e - r * c.cols;
    const int64_t c1 = std::min(c.cols, c0 + (e1 - e));
    const size_t ri = static_cast<size_t>(r - c.first_row);
    const int64_t row = c.row_src[ri];
    const float a_row = c.shrink * c.row_scale[ri];
    auto run = std::upper_bound(c.runs.begin(), c.runs.end(), c0,
                                [](int64_t v, const ColumnRun& x) { return v < x.end; });
    for (int64_t p = c0; p < c1; ++run) {
      const int64_t q = std::min(c1, run->end);
      const int64_t k = p - c0;
      const float* n = add + k;
      const float* n_src = add_src + k;
      if (c.noise && !c.plain_noise) {
        const int64_t at = c.row_noise[ri] + run->noise + (p - run->begin);
        const int64_t nb0 = at >> 2;
        fill_noise(static_cast<uint64_t>(nb0), ((at + (q - p) + 3) >> 2) - nb0, c.tid, c.seed, drawn);
        float* d = drawn + (at - 4 * nb0);
        const float sign = c.row_sign[ri] * run->sign;
        for (int64_t i = 0; i < q - p; ++i) d[i] = sign * d[i];
        n = n_src = d;
      }
      if (row != kNoRow && run->src >= 0) {
        const char* sp = static_cast<const char*>(c.src) + (row + run->src + (p - run->begin)) * es;
        combine_run<S, O>(out + k, sp, n_src, q - p, a_row * run->scale, scale);
      } else {
        init_run<O>(out + k, n, q - p, az, scale);
      }
      p = q;
    }
    out += c1 - c0;
    add += c1 - c0;
    add_src += c1 - c0;
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
