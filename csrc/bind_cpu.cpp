// ws_convert._C: the CPU path, plus the noise primitives for tests.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <vector>

#include "bind_args.h"
#include "source_reads.h"
#include "szp_cpu.h"

namespace py = pybind11;

namespace {
struct CallBatch {
  std::vector<ws::SZPCall> calls;
  std::vector<ws::SourceRead> reads;  // the source rows the calls read, from the files
};
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "SZP warm-start operator, CPU path";
  m.def(
      "szp",
      [](const py::dict& kw, int threads) {
        const ws::SZPCall call = ws::make_call(ws::args_from(kw));
        py::gil_scoped_release release;
        ws::szp_cpu({&call}, threads);
      },
      py::arg("args"), py::arg("threads") = 0,
      "Run one SZP call on the CPU; `args` holds buffer addresses, shapes and knobs.");
  // Calls validated now and run later, together: the file-to-file engine
  // adds each chunk's call (from its tensor's Template) and where its source
  // rows lie in the files, so a bad call fails there, and runs a whole slot's
  // batch on another thread: the reads, then the kernel. The calls stay in
  // C++: a checkpoint of tens of thousands of small tensors makes no Python
  // object per call, and its reads cost no interpreter time.
  py::class_<ws::SZPTemplate>(
      m, "Template",
      "What the calls of many chunks share (shapes, maps, dtypes, knobs), validated and tabulated once.")
      .def(py::init([](const py::dict& kw, bool has_source) {
             return ws::make_template(ws::args_from(kw), has_source);
           }),
           py::arg("args"), py::arg("has_source"),
           "`args` as `szp` takes them, their buffers, rows and tid unused; `has_source`: its chunks read one.");
  py::class_<CallBatch>(m, "Batch", "Validated calls, run together by `run`; their buffers must outlive it.")
      .def(py::init<>())
      .def(
          "add",
          [](CallBatch& b, const ws::SZPTemplate& t, uintptr_t out_ptr, int64_t out_nbytes, int64_t row_start,
             int64_t row_stop, uintptr_t src_ptr, int64_t src_nbytes, int64_t src_row_start, uint64_t tid, int fd,
             int64_t pos) {
            b.calls.push_back(
                ws::make_call(t, {out_ptr, out_nbytes, row_start, row_stop, src_ptr, src_nbytes, src_row_start, tid}));
            if (fd >= 0 && src_nbytes > 0) {
              if (pos < 0) throw std::invalid_argument("a source read at a negative file offset");
              b.reads.push_back({fd, pos, src_nbytes, src_ptr});
            }
          },
          py::arg("template"), py::arg("out_ptr"), py::arg("out_nbytes"), py::arg("row_start"), py::arg("row_stop"),
          py::arg("src_ptr"), py::arg("src_nbytes"), py::arg("src_row_start"), py::arg("tid"), py::arg("fd") = -1,
          py::arg("pos") = 0,
          "One chunk's call, checked as `szp` checks the template's args with these fields. With `fd` (an open "
          "file), `run` first reads its `src_nbytes` source bytes at file offset `pos` into `src_ptr`; without, "
          "they must be there already.")
      .def("__len__", [](const CallBatch& b) { return b.calls.size(); });
  m.def(
      "run",
      [](const CallBatch& b, int threads) -> py::object {
        ws::ReadFailure failed;
        {
          std::vector<const ws::SZPCall*> calls;
          calls.reserve(b.calls.size());
          for (const auto& c : b.calls) calls.push_back(&c);
          py::gil_scoped_release release;
          failed = ws::read_sources(b.reads);
          if (failed.index < 0) ws::szp_cpu(calls, threads);
        }
        if (failed.index < 0) return py::none();
        return py::make_tuple(failed.index, failed.error);
      },
      py::arg("batch"), py::arg("threads") = 0,
      "Run a Batch: read the sources its calls read from files, then run its calls, their chunks shared out "
      "over `threads` threads (0: all); the same bytes as running each alone. None, or (i, errno) when the i-th "
      "read failed (errno 0: its file ended first) and nothing was computed.");
  m.def("isa", &ws::szp_cpu_isa, "Instruction set the CPU kernel uses here.");
  m.def(
      "philox4x32_10",
      [](std::array<uint32_t, 4> ctr, std::array<uint32_t, 2> key) {
        std::array<uint32_t, 4> out;
        ws::philox4x32_10(ctr[0], ctr[1], ctr[2], ctr[3], key[0], key[1], out.data());
        return out;
      },
      py::arg("counter"), py::arg("key"));
  m.def("constants", [] {
    py::dict d;
    d["log_p"] = std::vector<float>{ws::kLogP0, ws::kLogP1, ws::kLogP2, ws::kLogP3,
                                    ws::kLogP4, ws::kLogP5, ws::kLogP6, ws::kLogP7};
    d["sin_s"] = std::vector<float>{ws::kSinS0, ws::kSinS1, ws::kSinS2, ws::kSinS3};
    d["cos_c"] = std::vector<float>{ws::kCosC0, ws::kCosC1, ws::kCosC2, ws::kCosC3, ws::kCosC4};
    d["ln2"] = std::vector<float>{ws::kLn2Hi, ws::kLn2Lo};
    return d;
  });
}
