// ws_convert._C: the CPU path, plus the noise primitives for tests.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <vector>

#include "bind_args.h"
#include "szp_cpu.h"

namespace py = pybind11;

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
  // A call validated now and run later, in a batch: the file-to-file engine
  // prepares each chunk's call as it reads the chunk's source rows (so a bad
  // call fails there) and runs a whole slot of them on another thread.
  py::class_<ws::SZPCall>(m, "Call", "A validated SZP call (see `prepare` and `run`).");
  m.def(
      "prepare", [](const py::dict& kw) { return ws::make_call(ws::args_from(kw)); }, py::arg("args"),
      "Validate one call's `args` (as `szp` takes them) into a Call; its buffers must stay valid until it runs.");
  m.def(
      "run",
      [](const py::list& calls, int threads) {
        std::vector<const ws::SZPCall*> batch;
        batch.reserve(calls.size());
        for (const auto& c : calls) batch.push_back(&c.cast<const ws::SZPCall&>());
        py::gil_scoped_release release;
        ws::szp_cpu(batch, threads);
      },
      py::arg("calls"), py::arg("threads") = 0,
      "Run prepared Calls, their chunks shared out over `threads` threads (0: all); "
      "the same bytes as running each alone.");
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
