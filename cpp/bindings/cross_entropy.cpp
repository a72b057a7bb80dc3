// retro._core's cross-entropy entry points (retro/cross_entropy.h), on buffer addresses;
// python/retro/ops/cross_entropy.py checks the tensors and calls these.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "retro/cross_entropy.h"
#include "tensor_args.h"

namespace py = pybind11;
using retro_bindings::pointer;

namespace {

retro::CrossEntropyParams params(const std::string& dtype, int64_t rows, int64_t vocab,
                                 int64_t ignore_index) {
  retro::CrossEntropyParams p;
  p.dtype = retro_bindings::parse_dtype(dtype);
  p.rows = rows;
  p.vocab = vocab;
  p.ignore_index = ignore_index;
  return p;
}

}  // namespace

void bind_cross_entropy(py::module_& m) {
  m.def("cross_entropy_forward",
        [](const std::string& dtype, int64_t rows, int64_t vocab, int64_t ignore_index,
           uintptr_t logits, uintptr_t targets, uintptr_t lse, uintptr_t loss) {
          const retro::CrossEntropyParams p = params(dtype, rows, vocab, ignore_index);
          py::gil_scoped_release release;
          retro::cross_entropy_forward(p, pointer<const void>(logits),
                                       pointer<const int64_t>(targets), pointer<void>(lse),
                                       pointer<void>(loss));
        },
        py::arg("dtype"), py::arg("rows"), py::arg("vocab"), py::arg("ignore_index"),
        py::arg("logits"), py::arg("targets"), py::arg("lse"), py::arg("loss"),
        "Writes lse and loss (rows) from logits (rows, vocab) and int64 targets (rows): addresses "
        "of contiguous CPU buffers.");
  m.def("cross_entropy_backward",
        [](const std::string& dtype, int64_t rows, int64_t vocab, int64_t ignore_index,
           uintptr_t logits, uintptr_t targets, uintptr_t lse, uintptr_t grad_loss,
           uintptr_t grad) {
          const retro::CrossEntropyParams p = params(dtype, rows, vocab, ignore_index);
          py::gil_scoped_release release;
          retro::cross_entropy_backward(p, pointer<const void>(logits),
                                        pointer<const int64_t>(targets), pointer<const void>(lse),
                                        pointer<const void>(grad_loss), pointer<void>(grad));
        },
        py::arg("dtype"), py::arg("rows"), py::arg("vocab"), py::arg("ignore_index"),
        py::arg("logits"), py::arg("targets"), py::arg("lse"), py::arg("grad_loss"),
        py::arg("grad"), "Writes grad (rows, vocab) = grad_loss * (softmax - onehot(target)).");
}
