// retro._core's IVF-PQ GPU entry points (retro/ivf_pq_cuda.h): device addresses as integers (from
// torch's data_ptr()) and a stream handle, so that _core never links libtorch. Compiled into CUDA
// builds only; python/retro/index_cuda.py owns the buffers and calls these.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "metric.h"
#include "retro/ivf_pq_cuda.h"

namespace py = pybind11;
using retro::idx_t;

namespace {

template <typename T>
T* pointer(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

retro::cuda::IvfPqCudaSearchParams search_params(int nprobe, idx_t k, bool fp16_lut) {
  retro::cuda::IvfPqCudaSearchParams p;
  p.nprobe = nprobe;
  p.k = k;
  p.fp16_lut = fp16_lut;
  return p;
}

}  // namespace

void bind_ivf_pq_cuda(py::module_& m) {
  using retro::cuda::IvfPqDeviceIndex;
  py::class_<IvfPqDeviceIndex>(m, "IvfPqDeviceIndex")
      .def(py::init([](int d, int pq_m, idx_t nlist, const std::string& metric,
                       uintptr_t coarse_centroids, uintptr_t coarse_norms, uintptr_t pq_centroids_t,
                       uintptr_t codes, uintptr_t offsets, uintptr_t sizes, uintptr_t ids,
                       uintptr_t terms, idx_t max_list_size) {
             IvfPqDeviceIndex ix;
             ix.d = d;
             ix.pq_m = pq_m;
             ix.nlist = nlist;
             ix.metric = retro_bindings::parse_metric(metric);
             ix.coarse_centroids = pointer<const float>(coarse_centroids);
             ix.coarse_norms = pointer<const float>(coarse_norms);
             ix.pq_centroids_t = pointer<const float>(pq_centroids_t);
             ix.codes = pointer<const uint8_t>(codes);
             ix.offsets = pointer<const idx_t>(offsets);
             ix.sizes = pointer<const idx_t>(sizes);
             ix.ids = pointer<const idx_t>(ids);
             ix.terms = pointer<const float>(terms);
             ix.max_list_size = max_list_size;
             return ix;
           }),
           py::arg("d"), py::arg("pq_m"), py::arg("nlist"), py::arg("metric"),
           py::arg("coarse_centroids"), py::arg("coarse_norms"), py::arg("pq_centroids_t"),
           py::arg("codes"), py::arg("offsets"), py::arg("sizes"), py::arg("ids"),
           py::arg("terms"), py::arg("max_list_size"),
           "Device addresses of an uploaded index (retro/ivf_pq_cuda.h: IvfPqDeviceIndex); 0 for "
           "none.");
  m.attr("CUDA_IVFPQ_MAX_K") = retro::cuda::ivfpq_max_k();
  m.attr("CUDA_IVFPQ_MAX_NPROBE") = retro::cuda::ivfpq_max_nprobe();
  m.def("cuda_ivfpq_search_unsupported",
        [](const IvfPqDeviceIndex& ix, int nprobe, idx_t k, bool fp16_lut, int device) {
          return retro::cuda::ivfpq_search_unsupported(ix, search_params(nprobe, k, fp16_lut), device);
        },
        py::arg("index"), py::arg("nprobe"), py::arg("k"), py::arg("fp16_lut"), py::arg("device"),
        "Why the GPU cannot run this search, or '' if it can.");
  m.def("cuda_ivfpq_search_workspace",
        [](const IvfPqDeviceIndex& ix, idx_t n, int nprobe, idx_t k, bool fp16_lut, int device) {
          return retro::cuda::ivfpq_search_workspace(ix, n, search_params(nprobe, k, fp16_lut), device);
        },
        py::arg("index"), py::arg("n"), py::arg("nprobe"), py::arg("k"), py::arg("fp16_lut"),
        py::arg("device"), "Bytes of workspace a search of n queries needs.");
  m.def("cuda_ivfpq_search",
        [](const IvfPqDeviceIndex& ix, idx_t n, uintptr_t x, int nprobe, idx_t k, bool fp16_lut,
           uintptr_t distances, uintptr_t labels, uintptr_t workspace, size_t workspace_bytes,
           int device, uintptr_t stream) {
          py::gil_scoped_release release;
          retro::cuda::ivfpq_search(ix, n, pointer<const float>(x), search_params(nprobe, k, fp16_lut),
                                    pointer<float>(distances), pointer<idx_t>(labels),
                                    pointer<void>(workspace), workspace_bytes, device, stream);
        },
        py::arg("index"), py::arg("n"), py::arg("x"), py::arg("nprobe"), py::arg("k"),
        py::arg("fp16_lut"), py::arg("distances"), py::arg("labels"), py::arg("workspace"),
        py::arg("workspace_bytes"), py::arg("device"), py::arg("stream"),
        "Queues a search of x (n, d) float32 into distances (n, k) float32, labels (n, k) int64.");
  m.def("cuda_ivfpq_encode_workspace", &retro::cuda::ivfpq_encode_workspace, py::arg("index"),
        py::arg("n"), py::arg("device"), "Bytes of workspace encoding n vectors needs.");
  m.def("cuda_ivfpq_encode",
        [](const IvfPqDeviceIndex& ix, idx_t n, uintptr_t x, uintptr_t list_of, uintptr_t codes,
           uintptr_t workspace, size_t workspace_bytes, int device, uintptr_t stream) {
          py::gil_scoped_release release;
          retro::cuda::ivfpq_encode(ix, n, pointer<const float>(x), pointer<idx_t>(list_of),
                                    pointer<uint8_t>(codes), pointer<void>(workspace),
                                    workspace_bytes, device, stream);
        },
        py::arg("index"), py::arg("n"), py::arg("x"), py::arg("list_of"), py::arg("codes"),
        py::arg("workspace"), py::arg("workspace_bytes"), py::arg("device"), py::arg("stream"),
        "Queues the encoding of x (n, d) float32 into list_of (n,) int64 and codes (n, pq_m) uint8.");
  m.def("cuda_nearest_centroids_workspace", &retro::cuda::nearest_centroids_workspace,
        py::arg("n"), py::arg("k"), "Bytes of workspace assigning n vectors to k centroids needs.");
  m.def("cuda_nearest_centroids",
        [](const std::string& metric, idx_t n, int d, uintptr_t x, idx_t k, uintptr_t centroids,
           uintptr_t norms, uintptr_t labels, uintptr_t distances, uintptr_t workspace,
           size_t workspace_bytes, int device, uintptr_t stream) {
          const retro::Metric parsed = retro_bindings::parse_metric(metric);
          py::gil_scoped_release release;
          retro::cuda::nearest_centroids(parsed, n, d, pointer<const float>(x), k,
                                         pointer<const float>(centroids), pointer<const float>(norms),
                                         pointer<idx_t>(labels), pointer<float>(distances),
                                         pointer<void>(workspace), workspace_bytes, device, stream);
        },
        py::arg("metric"), py::arg("n"), py::arg("d"), py::arg("x"), py::arg("k"),
        py::arg("centroids"), py::arg("norms"), py::arg("labels"), py::arg("distances"),
        py::arg("workspace"), py::arg("workspace_bytes"), py::arg("device"), py::arg("stream"),
        "Queues the k-means assignment of x (n, d) to centroids (k, d): labels (n,) int64, "
        "distances (n,) float32.");
}
