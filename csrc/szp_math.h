// The SZP operator's per-element math, shared by the CPU and CUDA paths.
//
// Everything here must give the same bits on host and device, so: float32
// only, one rounding per operation, no contraction (the build passes
// -ffp-contract=off / -fmad=false), no fast-math, and our own log/sin/cos
// instead of the platform's. The polynomial coefficients are least-squares
// fits rounded to float32; ws_convert/noise.py holds the same constants for
// the PyTorch reference, and the tests compare the two.
#pragma once
#include <math.h>

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define WS_HD __host__ __device__ __forceinline__
#else
#define WS_HD inline __attribute__((always_inline))
#endif

namespace ws {

enum class DType : int { F32 = 0, BF16 = 1, F16 = 2 };

// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3").
constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;

// log(1 + f) = f - f^2/2 + f^3 * P(f) on [sqrt(1/2) - 1, sqrt(2) - 1].
constexpr float kLogP0 = 0.3333335518836975f;
constexpr float kLogP1 = -0.2500087022781372f;
constexpr float kLogP2 = 0.19999879598617554f;
constexpr float kLogP3 = -0.16620740294456482f;
constexpr float kLogP4 = 0.142251655459404f;
constexpr float kLogP5 = -0.13206417858600616f;
constexpr float kLogP6 = 0.12638045847415924f;
constexpr float kLogP7 = -0.07374843955039978f;
constexpr float kLn2Hi = 0.693145751953125f;         // few bits: e * hi is exact
constexpr float kLn2Lo = 1.4286068203094172e-06f;  // ln 2 - hi
// sin(2 pi t) = t * S(t^2), cos(2 pi t) = 1 + t^2 * C(t^2) on |t| <= 1/8.
constexpr float kSinS0 = 6.2831854820251465f;
constexpr float kSinS1 = -41.34165954589844f;
constexpr float kSinS2 = 81.5921401977539f;
constexpr float kSinS3 = -75.38105773925781f;
constexpr float kCosC0 = -19.739208221435547f;
constexpr float kCosC1 = 64.93939208984375f;
constexpr float kCosC2 = -85.45680236816406f;
constexpr float kCosC3 = 60.24126052856445f;
constexpr float kCosC4 = -26.140756607055664f;

WS_HD uint32_t f2u(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
#endif
}

WS_HD float u2f(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, 4);
  return x;
#endif
}

WS_HD void philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                         uint32_t k0, uint32_t k1, uint32_t out[4]) {
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// A uniform in (0, 1]: never 0, so log() is finite.
WS_HD float uniform01(uint32_t x) {
  return static_cast<float>(x) * 2.3283064365386963e-10f + 1.1641532182693481e-10f;
}

// Natural log for u in [2^-33, 1] (normal floats only).
WS_HD float log_f32(float u) {
  const uint32_t bits = f2u(u);
  const uint32_t mant = bits & 0x007FFFFFu;
  const bool high = mant > 0x003504F3u;  // mantissa above sqrt(2): halve it
  const int32_t e = static_cast<int32_t>(bits >> 23) - 127 + (high ? 1 : 0);
  const float f = u2f(mant | (high ? 0x3F000000u : 0x3F800000u)) - 1.0f;
  float p = kLogP7;
  p = p * f + kLogP6;
  p = p * f + kLogP5;
  p = p * f + kLogP4;
  p = p * f + kLogP3;
  p = p * f + kLogP2;
  p = p * f + kLogP1;
  p = p * f + kLogP0;
  const float f2 = f * f;
  const float r = (f2 * f * p - 0.5f * f2) + f;
  const float ef = static_cast<float>(e);
  return ef * kLn2Hi + (r + ef * kLn2Lo);
}

// sin(2 pi u) and cos(2 pi u) for u in [0, 1]: the reduction to |t| <= 1/8
// is exact because u counts turns.
WS_HD void sincos_2pi(float u, float& s_out, float& c_out) {
  const int32_t q = static_cast<int32_t>(4.0f * u + 0.5f);
  const float t = u - static_cast<float>(q) * 0.25f;
  const float z = t * t;
  float s = kSinS3;
  s = s * z + kSinS2;
  s = s * z + kSinS1;
  s = s * z + kSinS0;
  s = t * s;
  float c = kCosC4;
  c = c * z + kCosC3;
  c = c * z + kCosC2;
  c = c * z + kCosC1;
  c = c * z + kCosC0;
  c = z * c + 1.0f;
  const bool swap = (q & 1) != 0;
  const float sv = swap ? c : s;
  const float cv = swap ? s : c;
  s_out = (q & 2) ? -sv : sv;
  c_out = ((q + 1) & 2) ? -cv : cv;
}

// Box-Muller on two Philox words: (n_cos, n_sin) = r (cos, sin)(2 pi u1),
// r = sqrt(-2 log u0).
WS_HD void box_muller(uint32_t x0, uint32_t x1, float& n_cos, float& n_sin) {
  const float r = sqrtf(-2.0f * log_f32(uniform01(x0)));
  float s, c;
  sincos_2pi(uniform01(x1), s, c);
  n_cos = r * c;
  n_sin = r * s;
}

// Four standard normals for Philox block `block` of tensor `tid` (docs/DESIGN.md section 5):
// lane k of the block takes n[k].
WS_HD void normal4(uint64_t block, uint64_t tid, uint64_t seed, float n[4]) {
  uint32_t x[4];
  philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                static_cast<uint32_t>(tid), static_cast<uint32_t>(tid >> 32),
                static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), x);
  box_muller(x[0], x[1], n[0], n[1]);
  box_muller(x[2], x[3], n[2], n[3]);
}

// Source element to float32 (exact for every input).
template <DType D> WS_HD float load_f32(const void* p, int64_t i);
template <> WS_HD float load_f32<DType::F32>(const void* p, int64_t i) {
  return static_cast<const float*>(p)[i];
}
template <> WS_HD float load_f32<DType::BF16>(const void* p, int64_t i) {
  return u2f(static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16);
}
template <> WS_HD float load_f32<DType::F16>(const void* p, int64_t i) {
  const uint32_t h = static_cast<const uint16_t*>(p)[i];
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t em = h & 0x7FFFu;
  const float sub = static_cast<float>(em) * 5.9604644775390625e-08f;  // em * 2^-24
  const uint32_t normal = (em >= 0x7C00u) ? ((em << 13) | 0x7F800000u) : ((em << 13) + 0x38000000u);
  return u2f(sign | (em < 0x0400u ? f2u(sub) : normal));
}

// Output storage: round-to-nearest-even, NaN made one canonical quiet NaN
// (hardware conversions disagree on NaN payloads).
template <DType D> struct Storage;
template <> struct Storage<DType::F32> {
  using type = uint32_t;
  WS_HD static uint32_t from_f32(float v) { return v != v ? 0x7FC00000u : f2u(v); }
};
template <> struct Storage<DType::BF16> {
  using type = uint16_t;
  WS_HD static uint16_t from_f32(float v) {
    const uint32_t b = f2u(v);
    const uint32_t r = (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16;
    return static_cast<uint16_t>(v != v ? 0x7FC0u : r);
  }
};
template <> struct Storage<DType::F16> {
  using type = uint16_t;
  WS_HD static uint16_t from_f32(float v) {
    const uint32_t b = f2u(v);
    const uint32_t sign = (b >> 16) & 0x8000u;
    const uint32_t a = b & 0x7FFFFFFFu;
    // |v| < 2^-14: adding 0.5 rounds |v| to a multiple of 2^-24, i.e. to the
    // fp16 subnormal grid, ties to even.
    const uint32_t sub = f2u(u2f(a) + 0.5f) - 0x3F000000u;
    const uint32_t normal = (a - 0x38000000u + 0x0FFFu + ((a >> 13) & 1u)) >> 13;
    uint32_t h = a < 0x38800000u ? sub : normal;
    h = a >= 0x477FF000u ? 0x7C00u : h;  // rounds past 65504: infinity
    return static_cast<uint16_t>(v != v ? 0x7E00u : (sign | h));
  }
};

// One output value: v = f32(f32(a * src) + f32(s * n)) (docs/DESIGN.md section 5).
WS_HD float combine(float a, float src, float s, float n) { return a * src + s * n; }

}  // namespace ws
