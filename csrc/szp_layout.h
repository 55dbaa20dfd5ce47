// Host-side description of one SZP call: the validated arguments and the
// lookup tables both kernels use to find each output element's source.
#pragma once
#include <cstdint>
#include <vector>

#include "szp_math.h"

namespace ws {

// Source positions [src, src + len) of one axis land at [dst, dst + len),
// times `scale` (the scales of all axes and the shrink multiply).
struct Segment {
  int64_t dst, src, len;
  float scale = 1.f;
};

// Output positions [dst, dst + len) of one axis take the noise drawn for
// positions [at, at + len) of that axis, times `sign` (1, -1 or 0).
struct NoiseSegment {
  int64_t dst, at, len;
  int64_t sign = 1;
};

// Raw arguments, as Python hands them over: addresses and sizes, no tensors.
struct SZPArgs {
  uintptr_t out_ptr = 0;
  int64_t out_nbytes = 0;
  DType out_dtype = DType::F32;
  std::vector<int64_t> out_shape;
  int64_t row_start = 0, row_stop = 0;  // output rows (axis 0) to write
  uintptr_t src_ptr = 0;                // 0: no source, pure init
  int64_t src_nbytes = 0;
  DType src_dtype = DType::F32;
  std::vector<int64_t> src_shape;  // the whole source tensor's shape
  int64_t src_row_start = 0;       // first source row the buffer holds
  std::vector<std::vector<Segment>> maps;  // one segment list per axis
  std::vector<std::vector<NoiseSegment>> noise_maps;  // one per axis; empty: each position its own noise
  float shrink = 0.f, noise_scale = 0.f, constant = 0.f;
  float constant_src = 0.f;  // constant init: added instead where a source element lands
  bool noise = true;  // false: constant init, add `constant` instead of noise
  uint64_t seed = 0, tid = 0;
};

// A run of output columns [begin, end) whose source columns start at `src`
// (-1: no source), all scaled by `scale`, whose noise is drawn from columns
// starting at `noise`, times `sign`.
struct ColumnRun {
  int64_t begin, end, src;
  float scale;
  int64_t noise;
  float sign;
};

constexpr int64_t kNoRow = INT64_MIN;

// A validated call. The output is viewed as rows x cols (cols: the last axis);
// flat output element e = r * cols + c reads source element
// row_src[r - first_row] + col_src(c) when both exist, multiplied by
// f32(shrink * row_scale[r - first_row]) * col_scale(c), and its noise is
// the stream's value at row_noise[r - first_row] + col_noise(c), times
// row_sign[r - first_row] * col_sign(c). `plain_noise`: every element's own.
struct SZPCall {
  void* out = nullptr;
  const void* src = nullptr;
  DType out_dtype = DType::F32, src_dtype = DType::F32;
  int64_t begin = 0, end = 0;  // flat output range held by `out`
  int64_t cols = 1;
  int64_t first_row = 0;
  std::vector<int64_t> row_src;  // source offset of each row, or kNoRow
  std::vector<float> row_scale;  // product of the leading axes' scales
  std::vector<int64_t> row_noise;  // flat noise position of each row's column 0
  std::vector<float> row_sign;
  std::vector<ColumnRun> runs;   // sorted, covering [0, cols)
  bool plain_noise = true;
  float shrink = 0.f, noise_scale = 0.f, constant = 0.f, constant_src = 0.f;
  bool noise = true;
  uint64_t seed = 0, tid = 0;

  int64_t size() const { return end - begin; }
};

// Per axis and output index: source index (or -1) and scale, noise position and sign.
struct AxisTable {
  std::vector<int64_t> src;
  std::vector<float> scale;
  std::vector<int64_t> noise;
  std::vector<float> sign;
};

// What the calls for the chunks of a tensor (and of every tensor with the
// same shapes, maps, dtypes and knobs) share: validated and tabulated once,
// so that a checkpoint of tens of thousands of small tensors pays for its
// maps once per kind of tensor, not once per tensor. `args`' per-chunk
// fields (buffers, rows, tid) are unused; `has_src`: its chunks read a source.
struct SZPTemplate {
  SZPArgs args;
  bool has_src = false;
  std::vector<AxisTable> tables;
  std::vector<ColumnRun> runs;
  bool plain_noise = true;
};

// The fields of a call that differ from chunk to chunk.
struct ChunkArgs {
  uintptr_t out_ptr = 0;
  int64_t out_nbytes = 0;
  int64_t row_start = 0, row_stop = 0;
  uintptr_t src_ptr = 0;  // must be set exactly when the template has a source
  int64_t src_nbytes = 0;
  int64_t src_row_start = 0;
  uint64_t tid = 0;
};

// Validate (throwing std::invalid_argument with a readable message) and
// build the tables: a template, one chunk's call from it, or both at once.
SZPTemplate make_template(SZPArgs args, bool has_src);
SZPCall make_call(const SZPTemplate& t, const ChunkArgs& chunk);
SZPCall make_call(SZPArgs args);

int64_t dtype_size(DType d);

}  // namespace ws
