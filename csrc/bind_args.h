// Turns the keyword arguments Python passes into SZPArgs; shared by the CPU
// and CUDA modules so both accept exactly the same call.
#pragma once
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <iterator>
#include <stdexcept>
#include <string>

#include "szp_layout.h"

namespace ws {

namespace py = pybind11;

inline DType dtype_from(const py::handle& h) {
  const std::string s = py::cast<std::string>(h);
  if (s == "float32") return DType::F32;
  if (s == "bfloat16") return DType::BF16;
  if (s == "float16") return DType::F16;
  throw std::invalid_argument("unsupported dtype '" + s +
                              "' (expected float32, bfloat16 or float16)");
}

inline const char* const kArgNames[] = {
    "out_ptr", "out_nbytes", "out_dtype", "out_shape", "row_start", "row_stop",
    "src_ptr", "src_nbytes", "src_dtype", "src_shape", "src_row_start", "maps", "noise_maps",
    "shrink", "noise_scale", "constant", "constant_src", "noise", "seed", "tid"};

// Throws for the first key of `kw` that names no argument.
inline void check_known(const py::dict& kw) {
  for (const auto& item : kw) {
    const std::string key = py::cast<std::string>(item.first);
    bool ok = false;
    for (const char* k : kArgNames) ok = ok || key == k;
    if (!ok) throw std::invalid_argument("unknown argument '" + key + "'");
  }
}

inline SZPArgs args_from(const py::dict& kw) {
  // One borrowed lookup per argument (the engine makes a call per chunk, and
  // a checkpoint may hold tens of thousands of small tensors); when every
  // argument is there, a dict of that size can hold no other key.
  if (static_cast<size_t>(py::len(kw)) != std::size(kArgNames)) check_known(kw);
  auto get = [&](const char* k) -> py::handle {
    PyObject* v = PyDict_GetItemString(kw.ptr(), k);
    if (v != nullptr) return v;
    check_known(kw);
    throw std::invalid_argument(std::string("missing argument '") + k + "'");
  };
  SZPArgs a;
  a.out_ptr = get("out_ptr").cast<uintptr_t>();
  a.out_nbytes = get("out_nbytes").cast<int64_t>();
  a.out_dtype = dtype_from(get("out_dtype"));
  a.out_shape = get("out_shape").cast<std::vector<int64_t>>();
  a.row_start = get("row_start").cast<int64_t>();
  a.row_stop = get("row_stop").cast<int64_t>();
  a.src_ptr = get("src_ptr").cast<uintptr_t>();
  a.src_nbytes = get("src_nbytes").cast<int64_t>();
  a.src_dtype = dtype_from(get("src_dtype"));
  a.src_shape = get("src_shape").cast<std::vector<int64_t>>();
  a.src_row_start = get("src_row_start").cast<int64_t>();
  for (const auto& axis : get("maps")) {
    std::vector<Segment> segs;
    for (const auto& seg : axis) {
      const auto t = seg.cast<py::sequence>();
      if (t.size() != 3 && t.size() != 4) throw std::invalid_argument("a segment is (dst, src, length[, scale])");
      segs.push_back({t[0].cast<int64_t>(), t[1].cast<int64_t>(), t[2].cast<int64_t>(),
                      t.size() == 4 ? t[3].cast<float>() : 1.f});
    }
    a.maps.push_back(std::move(segs));
  }
  for (const auto& axis : get("noise_maps")) {
    std::vector<NoiseSegment> segs;
    for (const auto& seg : axis) {
      const auto t = seg.cast<std::vector<int64_t>>();
      if (t.size() != 4) throw std::invalid_argument("a noise segment is (dst, at, length, sign)");
      segs.push_back({t[0], t[1], t[2], t[3]});
    }
    a.noise_maps.push_back(std::move(segs));
  }
  a.shrink = get("shrink").cast<float>();
  a.noise_scale = get("noise_scale").cast<float>();
  a.constant = get("constant").cast<float>();
  a.constant_src = get("constant_src").cast<float>();
  a.noise = get("noise").cast<bool>();
  a.seed = get("seed").cast<uint64_t>();
  a.tid = get("tid").cast<uint64_t>();
  return a;
}

}  // namespace ws
