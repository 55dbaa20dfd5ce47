// ws_convert._C_cuda: the CUDA path, a module of its own so that a CPU-only
// install never loads a CUDA runtime.
#include <pybind11/pybind11.h>

#include "bind_args.h"
#include "szp_cuda.h"

namespace py = pybind11;

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "SZP warm-start operator, CUDA path";
  m.def(
      "szp",
      [](const py::dict& kw, uintptr_t stream) {
        const ws::SZPCall call = ws::make_call(ws::args_from(kw));
        py::gil_scoped_release release;
        ws::szp_cuda(call, stream);
      },
      py::arg("args"), py::arg("stream") = 0,
      "Enqueue one SZP call on a CUDA stream; `args` holds device addresses, shapes and knobs.");
  m.def("device_name", &ws::cuda_device_name);
  m.def("device_count", &ws::cuda_device_count, "CUDA devices usable here (0 without driver or GPU).");
}
