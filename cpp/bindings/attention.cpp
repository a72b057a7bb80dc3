// retro._core's attention entry points: raw data pointers (integers from torch's data_ptr()) and
// sizes, so that _core never links libtorch. python/retro/ops/ checks the tensors and calls these.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "retro/attention.h"
#include "retro/rotary.h"
#include "tensor_args.h"
#if defined(RETRO_WITH_CUDA)
#include "retro/cuda.h"
#endif

namespace py = pybind11;
using retro_bindings::parse_dtype;
using retro_bindings::pointer;

namespace {

retro::RetroAttention parse_op(const std::string& name) {
  if (name == "chunked_cross") return retro::RetroAttention::ChunkedCross;
  if (name == "neighbour_self") return retro::RetroAttention::NeighbourSelf;
  if (name == "neighbour_cross") return retro::RetroAttention::NeighbourCross;
  throw py::value_error("unknown attention op '" + name + "'");
}


#if defined(RETRO_WITH_CUDA)
// The same entry points on device buffers, queued on a CUDA stream (retro/cuda.h).
void bind_cuda_attention(py::module_& m) {
  m.attr("CUDA_ATTENTION_MAX_KEY_SLOTS") = retro::cuda::attention_max_key_slots();
  m.def("cuda_set_fused_backward", &retro::cuda::set_fused_backward, py::arg("enabled"),
        "Allow (default) or forbid the one-kernel backward of CCA and short self-attention.");
  m.def("cuda_attention_unsupported", &retro::cuda::attention_unsupported, py::arg("params"),
        "Why the CUDA kernels cannot run this call, or '' if they can.");
  m.def("cuda_attention_forward",
        [](const retro::RetroAttentionParams& p, uintptr_t q, uintptr_t k, uintptr_t v,
           uintptr_t out, uintptr_t lse, int device, uintptr_t stream) {
          py::gil_scoped_release release;
          retro::cuda::attention_forward(
              p, {pointer<const void>(q), pointer<const void>(k), pointer<const void>(v),
                  pointer<void>(out), pointer<void>(lse)},
              device, stream);
        },
        py::arg("params"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
        py::arg("lse"), py::arg("device"), py::arg("stream"),
        "Queues the forward on `stream` (device addresses; lse float32).");
  m.def("cuda_attention_backward",
        [](const retro::RetroAttentionParams& p, uintptr_t q, uintptr_t k, uintptr_t v,
           uintptr_t out, uintptr_t lse, uintptr_t grad_out, uintptr_t grad_q, uintptr_t grad_k,
           uintptr_t grad_v, uintptr_t delta, int device, uintptr_t stream) {
          py::gil_scoped_release release;
          retro::cuda::attention_backward(
              p, {pointer<const void>(q), pointer<const void>(k), pointer<const void>(v),
                  pointer<const void>(out), pointer<const void>(lse),
                  pointer<const void>(grad_out), pointer<void>(grad_q), pointer<void>(grad_k),
                  pointer<void>(grad_v)},
              pointer<float>(delta), device, stream);
        },
        py::arg("params"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
        py::arg("lse"), py::arg("grad_out"), py::arg("grad_q"), py::arg("grad_k"),
        py::arg("grad_v"), py::arg("delta"), py::arg("device"), py::arg("stream"),
        "Queues the backward on `stream`; delta is a (query rows, H) float32 scratch buffer.");
}
#endif

}  // namespace

void bind_attention(py::module_& m) {
  py::class_<retro::RetroAttentionParams>(m, "AttentionParams")
      .def(py::init([](const std::string& op, const std::string& dtype, int64_t batch,
                       int64_t tokens, int64_t heads, int64_t head_dim, int64_t chunks,
                       int64_t neighbours, int64_t neighbour_len, int64_t chunk_size,
                       int64_t q_offset, double scale, uintptr_t nbr_lens) {
             retro::RetroAttentionParams p;
             p.op = parse_op(op);
             p.dtype = parse_dtype(dtype);
             p.batch = batch;
             p.tokens = tokens;
             p.heads = heads;
             p.head_dim = head_dim;
             p.chunks = chunks;
             p.neighbours = neighbours;
             p.neighbour_len = neighbour_len;
             p.chunk_size = chunk_size;
             p.q_offset = q_offset;
             p.scale = scale;
             p.nbr_lens = pointer<const int32_t>(nbr_lens);
             return p;
           }),
           py::arg("op"), py::arg("dtype"), py::arg("batch"), py::arg("tokens"), py::arg("heads"),
           py::arg("head_dim"), py::arg("chunks"), py::arg("neighbours"),
           py::arg("neighbour_len"), py::arg("chunk_size"), py::arg("q_offset"), py::arg("scale"),
           py::arg("nbr_lens"),
           "Sizes of one RETRO attention call (cpp/include/retro/attention.h); nbr_lens is the "
           "address of a (B, L, K) int32 buffer, or 0 for all R.")
      .def_property_readonly("query_rows", &retro::query_rows)
      .def_property_readonly("key_rows", &retro::key_rows);

  m.def("attention_forward",
        [](const retro::RetroAttentionParams& p, uintptr_t q, uintptr_t k, uintptr_t v,
           uintptr_t out, uintptr_t lse) {
          py::gil_scoped_release release;
          retro::attention_forward(p, {pointer<const void>(q), pointer<const void>(k),
                                       pointer<const void>(v), pointer<void>(out),
                                       pointer<void>(lse)});
        },
        py::arg("params"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
        py::arg("lse"), "Writes out and lse from q, k, v (addresses of contiguous CPU buffers).");
  m.def("attention_backward",
        [](const retro::RetroAttentionParams& p, uintptr_t q, uintptr_t k, uintptr_t v,
           uintptr_t out, uintptr_t lse, uintptr_t grad_out, uintptr_t grad_q, uintptr_t grad_k,
           uintptr_t grad_v) {
          py::gil_scoped_release release;
          retro::attention_backward(
              p, {pointer<const void>(q), pointer<const void>(k), pointer<const void>(v),
                  pointer<const void>(out), pointer<const void>(lse),
                  pointer<const void>(grad_out), pointer<void>(grad_q), pointer<void>(grad_k),
                  pointer<void>(grad_v)});
        },
        py::arg("params"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
        py::arg("lse"), py::arg("grad_out"), py::arg("grad_q"), py::arg("grad_k"),
        py::arg("grad_v"), "Writes grad_q, grad_k, grad_v (addresses of contiguous buffers).");
  m.def("rotate_positions",
        [](const std::string& dtype, int64_t outer, int64_t positions, int64_t heads,
           int64_t head_dim, double base, uintptr_t position, uintptr_t x, uintptr_t out) {
          retro::RotaryParams p;
          p.dtype = parse_dtype(dtype);
          p.outer = outer;
          p.positions = positions;
          p.heads = heads;
          p.head_dim = head_dim;
          p.base = base;
          py::gil_scoped_release release;
          retro::rotate_positions(p, pointer<const int64_t>(position), pointer<const void>(x),
                                  pointer<void>(out));
        },
        py::arg("dtype"), py::arg("outer"), py::arg("positions"), py::arg("heads"),
        py::arg("head_dim"), py::arg("base"), py::arg("position"), py::arg("x"), py::arg("out"),
        "out = x (outer, positions, heads, head_dim) rotated by the int64 positions (positions,) "
        "(retro/rotary.h); addresses of contiguous CPU buffers, out may be x.");
#if defined(RETRO_WITH_CUDA)
  bind_cuda_attention(m);
#endif
}
