#include "szp_layout.h"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

namespace ws {

int64_t dtype_size(DType d) { return d == DType::F32 ? 4 : 2; }

namespace {

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

int64_t product(const std::vector<int64_t>& v, size_t from, size_t to) {
  int64_t p = 1;
  for (size_t k = from; k < to; ++k) p *= v[k];
  return p;
}

void check_shape(const std::vector<int64_t>& shape, const char* what) {
  if (shape.empty()) fail(std::string(what) + " shape must have at least one axis");
  for (int64_t d : shape)
    if (d < 0) fail(std::string(what) + " shape has a negative size");
}

std::string seg_text(const char* what, int64_t dst, int64_t src, int64_t len) {
  return std::string(what) + " (dst=" + std::to_string(dst) + ", " +
         (what[0] == 'n' ? "at=" : "src=") + std::to_string(src) + ", len=" + std::to_string(len) + ")";
}

AxisTable axis_table(const std::vector<Segment>& segs, const std::vector<NoiseSegment>& noise,
                     int64_t out_dim, int64_t src_dim, size_t axis) {
  const std::string where = "axis " + std::to_string(axis) + ": ";
  AxisTable t{std::vector<int64_t>(static_cast<size_t>(out_dim), -1),
              std::vector<float>(static_cast<size_t>(out_dim), 1.f), std::vector<int64_t>(static_cast<size_t>(out_dim)),
              std::vector<float>(static_cast<size_t>(out_dim), 1.f)};
  for (int64_t j = 0; j < out_dim; ++j) t.noise[j] = j;
  for (const Segment& s : segs) {
    if (s.len < 0 || s.dst < 0 || s.src < 0 || s.dst + s.len > out_dim || s.src + s.len > src_dim)
      fail(where + seg_text("segment", s.dst, s.src, s.len) + " does not fit output size " +
           std::to_string(out_dim) + " and source size " + std::to_string(src_dim));
    for (int64_t j = 0; j < s.len; ++j) {
      if (t.src[s.dst + j] >= 0)
        fail(where + "segments overlap at output position " + std::to_string(s.dst + j));
      t.src[s.dst + j] = s.src + j;
      t.scale[s.dst + j] = s.scale;
    }
  }
  std::vector<bool> drawn(static_cast<size_t>(out_dim), false);
  for (const NoiseSegment& s : noise) {
    if (s.len < 0 || s.dst < 0 || s.at < 0 || s.dst + s.len > out_dim || s.at + s.len > out_dim ||
        s.sign < -1 || s.sign > 1)
      fail(where + seg_text("noise segment", s.dst, s.at, s.len) + " does not fit output size " +
           std::to_string(out_dim) + " or has a sign other than -1, 0, 1");
    for (int64_t j = 0; j < s.len; ++j) {
      if (drawn[s.dst + j])
        fail(where + "noise segments overlap at output position " + std::to_string(s.dst + j));
      drawn[s.dst + j] = true;
      t.noise[s.dst + j] = s.at + j;
      t.sign[s.dst + j] = static_cast<float>(s.sign);
    }
  }
  return t;
}

bool plain(const AxisTable& t) {
  for (size_t j = 0; j < t.noise.size(); ++j)
    if (t.noise[j] != static_cast<int64_t>(j) || t.sign[j] != 1.f) return false;
  return true;
}

std::vector<ColumnRun> column_runs(const AxisTable& t) {
  std::vector<ColumnRun> runs;
  const int64_t n = static_cast<int64_t>(t.src.size());
  for (int64_t c = 0; c < n;) {
    int64_t e = c + 1;
    const bool mapped = t.src[c] >= 0;
    while (e < n && (mapped ? t.src[e] == t.src[c] + (e - c) : t.src[e] < 0) && t.scale[e] == t.scale[c] &&
           t.noise[e] == t.noise[c] + (e - c) && t.sign[e] == t.sign[c])
      ++e;
    runs.push_back({c, e, mapped ? t.src[c] : -1, t.scale[c], t.noise[c], t.sign[c]});
    c = e;
  }
  return runs;
}

}  // namespace

SZPTemplate make_template(SZPArgs args, bool has_src) {
  SZPTemplate t;
  t.args = std::move(args);
  t.has_src = has_src;
  const SZPArgs& a = t.args;
  check_shape(a.out_shape, "output");
  const size_t ndim = a.out_shape.size();
  if (has_src) {
    check_shape(a.src_shape, "source");
    if (a.src_shape.size() != ndim)
      fail("source has " + std::to_string(a.src_shape.size()) + " axes, output has " +
           std::to_string(ndim));
  }
  if (a.maps.size() != ndim)
    fail("expected one segment list per output axis (" + std::to_string(ndim) + "), got " +
         std::to_string(a.maps.size()));
  if (!a.noise_maps.empty() && a.noise_maps.size() != ndim)
    fail("expected one noise segment list per output axis (" + std::to_string(ndim) + "), got " +
         std::to_string(a.noise_maps.size()));
  if (!has_src)
    for (const auto& m : a.maps)
      if (!m.empty()) fail("segments given but no source tensor");
  const std::vector<int64_t>& src_shape = has_src ? a.src_shape : a.out_shape;
  static const std::vector<NoiseSegment> kOwnNoise;
  t.tables.resize(ndim);
  for (size_t k = 0; k < ndim; ++k) {
    t.tables[k] = axis_table(a.maps[k], a.noise_maps.empty() ? kOwnNoise : a.noise_maps[k], a.out_shape[k],
                             src_shape[k], k);
    t.plain_noise = t.plain_noise && plain(t.tables[k]);
  }
  t.runs = column_runs(t.tables[ndim - 1]);
  return t;
}

SZPCall make_call(SZPArgs a) {
  const ChunkArgs chunk{a.out_ptr, a.out_nbytes, a.row_start, a.row_stop,
                        a.src_ptr, a.src_nbytes, a.src_row_start, a.tid};
  const bool has_src = a.src_ptr != 0;
  return make_call(make_template(std::move(a), has_src), chunk);
}

SZPCall make_call(const SZPTemplate& t, const ChunkArgs& ch) {
  const SZPArgs& a = t.args;
  const std::vector<AxisTable>& tables = t.tables;
  const size_t ndim = a.out_shape.size();
  const bool has_src = t.has_src;
  if (has_src != (ch.src_ptr != 0))
    fail(has_src ? "source buffer is null" : "a source buffer given to a call planned without one");
  const std::vector<int64_t>& src_shape = has_src ? a.src_shape : a.out_shape;
  const int64_t rows0 = a.out_shape[0];
  if (ch.row_start < 0 || ch.row_stop < ch.row_start || ch.row_stop > rows0)
    fail("row range [" + std::to_string(ch.row_start) + ", " + std::to_string(ch.row_stop) +
         ") is outside the output's " + std::to_string(rows0) + " rows");
  const int64_t inner = product(a.out_shape, 1, ndim);
  SZPCall c;
  c.out = reinterpret_cast<void*>(ch.out_ptr);
  c.src = reinterpret_cast<const void*>(ch.src_ptr);
  c.out_dtype = a.out_dtype;
  c.src_dtype = a.src_dtype;
  c.begin = ch.row_start * inner;
  c.end = ch.row_stop * inner;
  c.cols = a.out_shape[ndim - 1];
  c.shrink = a.shrink;
  c.noise_scale = a.noise_scale;
  c.constant = a.constant;
  c.constant_src = a.constant_src;
  c.noise = a.noise;
  c.seed = a.seed;
  c.tid = ch.tid;
  const int64_t want = c.size() * dtype_size(a.out_dtype);
  if (ch.out_nbytes != want)
    fail("output buffer has " + std::to_string(ch.out_nbytes) + " bytes, the row range needs " +
         std::to_string(want));
  if (c.size() > 0 && ch.out_ptr == 0) fail("output buffer is null");
  c.plain_noise = t.plain_noise;
  c.runs = t.runs;
  if (c.size() == 0) return c;

  // Source buffer: rows [src_row_start, src_row_start + held) of axis 0.
  int64_t base = 0, held = 0;
  if (has_src) {
    const int64_t src_inner = product(src_shape, 1, ndim);
    const int64_t row_bytes = src_inner * dtype_size(a.src_dtype);
    if (row_bytes == 0 || ch.src_nbytes % row_bytes != 0)
      fail("source buffer of " + std::to_string(ch.src_nbytes) +
           " bytes is not a whole number of source rows");
    const int64_t held_rows = ch.src_nbytes / row_bytes;
    if (ch.src_row_start < 0 || ch.src_row_start + held_rows > src_shape[0])
      fail("source buffer rows [" + std::to_string(ch.src_row_start) + ", " +
           std::to_string(ch.src_row_start + held_rows) + ") are outside the source's " +
           std::to_string(src_shape[0]) + " rows");
    base = ch.src_row_start * src_inner;
    held = held_rows * src_inner;
  }

  // Source offset, scale and noise of each output row touched by [begin, end).
  std::vector<int64_t> src_strides(ndim, 1), out_strides(ndim, 1);
  for (size_t k = ndim - 1; k-- > 0;) {
    src_strides[k] = src_strides[k + 1] * src_shape[k + 1];
    out_strides[k] = out_strides[k + 1] * a.out_shape[k + 1];
  }
  c.first_row = c.begin / c.cols;
  const int64_t last_row = (c.end - 1) / c.cols;
  const size_t n_rows = static_cast<size_t>(last_row - c.first_row + 1);
  c.row_src.resize(n_rows);
  c.row_scale.resize(n_rows);
  c.row_noise.resize(n_rows);
  c.row_sign.resize(n_rows);
  std::vector<int64_t> idx(ndim > 1 ? ndim - 1 : 0);
  for (int64_t r = c.first_row; r <= last_row; ++r) {
    int64_t rem = r, off = -base, noise = 0;
    for (size_t k = idx.size(); k-- > 0;) {
      idx[k] = rem % a.out_shape[k];
      rem /= a.out_shape[k];
    }
    float scale = 1.f, sign = 1.f;
    for (size_t k = 0; k < idx.size(); ++k) {  // in axis order: the scales' product is rounded that way
      const int64_t s = tables[k].src[idx[k]];
      off = s < 0 || off == kNoRow ? kNoRow : off + s * src_strides[k];
      scale = scale * tables[k].scale[idx[k]];
      noise += tables[k].noise[idx[k]] * out_strides[k];
      sign = sign * tables[k].sign[idx[k]];
    }
    const size_t i = static_cast<size_t>(r - c.first_row);
    c.row_src[i] = has_src ? off : kNoRow;
    c.row_scale[i] = scale;
    c.row_noise[i] = noise;
    c.row_sign[i] = sign;
  }

  // Every source element read must lie inside the buffer.
  if (has_src) {
    const bool one_row = c.row_src.size() == 1;
    const int64_t c_lo = one_row ? c.begin - c.first_row * c.cols : 0;
    const int64_t c_hi = one_row ? c.end - c.first_row * c.cols : c.cols;
    int64_t lo = std::numeric_limits<int64_t>::max(), hi = std::numeric_limits<int64_t>::min();
    for (const ColumnRun& run : c.runs) {
      const int64_t b = std::max(run.begin, c_lo), e = std::min(run.end, c_hi);
      if (run.src < 0 || b >= e) continue;
      lo = std::min(lo, run.src + (b - run.begin));
      hi = std::max(hi, run.src + (e - run.begin));
    }
    if (lo <= hi)
      for (int64_t off : c.row_src)
        if (off != kNoRow && (off + lo < 0 || off + hi > held))
          fail("the segments read source rows outside the source buffer (it holds rows from " +
               std::to_string(ch.src_row_start) + ")");
  }
  return c;
}

}  // namespace ws
