// retro._core: numpy in, numpy out. The Python layer (python/retro/) converts inputs to
// C-contiguous float32 first; these bindings check shapes and release the GIL for the work.
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <unistd.h>

#include <algorithm>
#include <memory>
#include <new>
#include <string>

#include "checksum.h"
#include "metric.h"
#include "quantized_table.h"
#include "retro/error.h"
#include "retro/flat_index.h"
#include "retro/ivf_pq_index.h"
#include "retro/simd.h"
#include "simd/kernels.h"
#if defined(RETRO_WITH_CUDA)
#include "retro/cuda.h"
#endif

namespace py = pybind11;
using retro::idx_t;

namespace {

using FloatArray = py::array_t<float, py::array::c_style>;
using IdArray = py::array_t<int64_t, py::array::c_style>;
using CodeArray = py::array_t<uint8_t, py::array::c_style>;

using retro_bindings::metric_name;
using retro_bindings::parse_metric;

// Checks that x is (n, d) and returns n.
idx_t rows(const py::array& x, int d, const char* what) {
  if (x.ndim() != 2)
    throw py::value_error(std::string(what) + " must be a 2-D array (n, d), got " +
                          std::to_string(x.ndim()) + " dimensions");
  if (x.shape(1) != d)
    throw py::value_error(std::string(what) + " has dimension " + std::to_string(x.shape(1)) +
                          " but the index has d=" + std::to_string(d));
  return static_cast<idx_t>(x.shape(0));
}

std::string shape_of(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

const idx_t* ids_pointer(const std::optional<IdArray>& ids, idx_t n) {
  if (!ids) return nullptr;
  if (ids->ndim() != 1 || ids->shape(0) != n)
    throw py::value_error("ids must be a 1-D array of " + std::to_string(n) + " int64 values");
  return ids->data();
}

// Points params at the (rows, d) float32 or float16 re-ranking vectors; the returned array owns
// them for as long as the caller keeps it.
py::array set_rerank_vectors(retro::IvfPqSearchParams& params, const py::object& rerank, int d) {
  py::array rerank_array = py::array::ensure(rerank);
  if (!rerank_array || rerank_array.ndim() != 2 || rerank_array.shape(1) != d)
    throw py::value_error("rerank vectors must be a 2-D array (n, d) with d=" + std::to_string(d));
  if (!(rerank_array.flags() & py::array::c_style))
    throw py::value_error("rerank vectors must be C-contiguous");
  const auto dtype = rerank_array.dtype();
  if (dtype.is(py::dtype::of<float>())) {
    params.rerank_fp16 = false;
  } else if (dtype.kind() == 'f' && dtype.itemsize() == 2) {
    params.rerank_fp16 = true;
  } else {
    throw py::value_error("rerank vectors must be float32 or float16, got " +
                          std::string(py::str(dtype)));
  }
  params.rerank_vectors = rerank_array.data();
  params.rerank_rows = rerank_array.shape(0);
  return rerank_array;
}

// Raises MemoryError naming the request if the (n, k) distances and ids of a search cannot fit in
// this machine's memory (a huge k), before anything is allocated.
void check_result_size(idx_t n, idx_t k) {
  constexpr uint64_t kBytesPerResult = sizeof(float) + sizeof(int64_t);
  const uint64_t memory = static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) *
                          static_cast<uint64_t>(sysconf(_SC_PAGE_SIZE));
  const uint64_t results = static_cast<uint64_t>(std::max<idx_t>(n, 1));
  if (static_cast<uint64_t>(k) <= memory / kBytesPerResult / results) return;
  const std::string message =
      "a search of " + std::to_string(n) + " queries with k=" + std::to_string(k) + " needs " +
      std::to_string(static_cast<double>(results) * static_cast<double>(k) * kBytesPerResult /
                     double(1ull << 30)) +
      " GiB for its distances and ids, more than this machine's " +
      std::to_string(memory >> 30) + " GiB";
  PyErr_SetString(PyExc_MemoryError, message.c_str());
  throw py::error_already_set();
}

// Runs work() without the GIL; a std::bad_alloc in it becomes a MemoryError naming the request.
template <class Work>
void run_without_gil(const std::string& request, Work&& work) {
  try {
    py::gil_scoped_release release;
    work();
  } catch (const std::bad_alloc&) {
    PyErr_SetString(PyExc_MemoryError, ("out of memory " + request).c_str());
    throw py::error_already_set();
  }
}

// "adding n vectors of dimension d to an index of ntotal": the request of an add.
template <class Index>
std::string add_request(const Index& index, idx_t n, const char* kind) {
  return "adding " + std::to_string(n) + " vectors of dimension " + std::to_string(index.d()) +
         " to " + kind + " of " + std::to_string(index.ntotal()) + " vectors";
}

template <class Index, class Search>
py::tuple search_into_arrays(const Index& index, const FloatArray& x, idx_t k, Search&& search) {
  if (k <= 0) throw py::value_error("k must be positive, got " + std::to_string(k));
  const idx_t n = rows(x, index.d(), "queries");
  check_result_size(n, k);
  FloatArray distances({n, k});
  IdArray labels({n, k});
  {
    py::gil_scoped_release release;
    search(x.data(), distances.mutable_data(), labels.mutable_data(), n);
  }
  return py::make_tuple(distances, labels);
}

}  // namespace

void bind_attention(py::module_& m);  // bindings/attention.cpp
void bind_cross_entropy(py::module_& m);  // bindings/cross_entropy.cpp
#if defined(RETRO_WITH_CUDA)
void bind_ivf_pq_cuda(py::module_& m);  // bindings/ivf_pq_cuda.cpp
#endif

PYBIND11_MODULE(_core, m) {
  m.doc() = "retro's compiled core: IVF-PQ and exact vector search, RETRO's attention kernels, cross-entropy";
  bind_attention(m);
  bind_cross_entropy(m);
  m.attr("__version__") = RETRO_VERSION;

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const retro::Error& e) {
      if (e.kind() == retro::ErrorKind::InvalidArgument)
        PyErr_SetString(PyExc_ValueError, e.what());
      else
        PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });

#if defined(RETRO_WITH_CUDA)
  m.def("has_cuda", [] { return true; }, "True if this build contains the CUDA kernels.");
  m.def("cuda_device_count", &retro::cuda::device_count,
        "Number of usable CUDA devices (0 without a GPU or driver).");
  m.def("cuda_device_name", &retro::cuda::device_name, py::arg("device") = 0);
  m.def("cutlass_version", &retro::cuda::cutlass_version);
  bind_ivf_pq_cuda(m);
#else
  m.def("has_cuda", [] { return false; }, "True if this build contains the CUDA kernels.");
  m.def("cuda_device_count", [] { return 0; },
        "Number of usable CUDA devices (0 without a GPU or driver).");
#endif

  m.def("simd_level", [] { return retro::simd_level_name(retro::active_simd_level()); },
        "SIMD kernels in use: 'scalar', 'avx2' or 'avx512'.");
  m.def("best_simd_level", [] { return retro::simd_level_name(retro::best_simd_level()); });
  m.def("set_simd_level",
        [](const std::string& name) { retro::set_simd_level(retro::parse_simd_level(name)); },
        py::arg("level"), "Force 'scalar', 'avx2' or 'avx512' (as RETRO_SIMD does).");
  m.def("bf16_kernel", [] { return retro::bf16_kernel_name(retro::active_bf16_kernel()); },
        "Kernel of the bfloat16 attention products: 'none', 'avx512bf16' or 'amx'.");
  m.def("best_bf16_kernel", [] { return retro::bf16_kernel_name(retro::best_bf16_kernel()); });
  m.def("set_bf16_kernel",
        [](const std::string& name) { retro::set_bf16_kernel(retro::parse_bf16_kernel(name)); },
        py::arg("kernel"), "Force 'none', 'avx512bf16' or 'amx' (as RETRO_BF16 does).");
  m.def("get_num_threads", [] { return omp_get_max_threads(); });
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw py::value_error("the number of threads must be >= 1");
    omp_set_num_threads(n);
  }, py::arg("n"));
  m.def("xxh64", [](py::bytes data) {
    std::string s = data;
    return retro::xxh64(s.data(), s.size());
  }, "XXH64 (seed 0) of bytes: the checksum of index file sections.");

  // Kernel entry points for tests: run one SIMD level's kernel on given inputs.
  m.def("_pq_scan8", [](const std::string& level, py::array_t<uint8_t, py::array::c_style> codes,
                        FloatArray lut, float bias, const std::optional<FloatArray>& terms) {
    if (lut.ndim() != 2 || lut.shape(1) != 256)
      throw py::value_error("lut must be (pq_m, 256) float32");
    const int pq_m = static_cast<int>(lut.shape(0));
    const size_t block = static_cast<size_t>(pq_m) * retro::simd::kScanBlock;
    if (codes.ndim() != 1 || codes.shape(0) % block != 0)
      throw py::value_error("codes must be 1-D with a multiple of pq_m * 64 bytes");
    const size_t nblocks = codes.shape(0) / block;
    if (terms && (terms->ndim() != 1 ||
                  terms->shape(0) != static_cast<py::ssize_t>(nblocks * retro::simd::kScanBlock)))
      throw py::value_error("terms must be 1-D with 64 values per code block");
    FloatArray out(static_cast<py::ssize_t>(nblocks * retro::simd::kScanBlock));
    retro::simd::kernels_for(retro::parse_simd_level(level))
        .pq_scan8(nblocks, pq_m, codes.data(), lut.data(), bias, terms ? terms->data() : nullptr,
                  out.mutable_data());
    return out;
  }, py::arg("level"), py::arg("codes"), py::arg("lut"), py::arg("bias"),
     py::arg("terms") = py::none());
  m.attr("_scan_block") = retro::simd::kScanBlock;
  // The filter as the search runs it: the table quantized by QuantizedTable, its limit for
  // `threshold`; returns the surviving indices among the first n vectors.
  m.def("_pq_filter8", [](const std::string& level, py::array_t<uint8_t, py::array::c_style> codes,
                          FloatArray lut, idx_t n, float bias,
                          const std::optional<FloatArray>& terms, float threshold) {
    const retro::simd::Kernels& kern = retro::simd::kernels_for(retro::parse_simd_level(level));
    if (kern.pq_filter8 == nullptr)
      throw py::value_error("SIMD level '" + level + "' has no filtering scan");
    if (lut.ndim() != 2 || lut.shape(1) != 256)
      throw py::value_error("lut must be (pq_m, 256) float32");
    const int pq_m = static_cast<int>(lut.shape(0));
    const idx_t padded = (n + retro::simd::kScanBlock - 1) / retro::simd::kScanBlock *
                         retro::simd::kScanBlock;
    if (n < 0 || codes.ndim() != 1 || codes.shape(0) != padded * pq_m)
      throw py::value_error("codes must hold the blocks of n vectors");
    if (terms && (terms->ndim() != 1 || terms->shape(0) < n))
      throw py::value_error("terms must hold n values");
    retro::QuantizedTable table(pq_m);
    table.build(lut.data());
    std::vector<uint32_t> survivors(static_cast<size_t>(padded));
    const size_t count = kern.pq_filter8(n, pq_m, codes.data(), table.codes(), bias,
                                         terms ? terms->data() : nullptr, table.offset(),
                                         table.step(), table.limit(threshold, bias),
                                         table.term_slack(), survivors.data());
    IdArray out(static_cast<py::ssize_t>(count));
    for (size_t i = 0; i < count; ++i) out.mutable_data()[i] = survivors[i];
    return out;
  }, py::arg("level"), py::arg("codes"), py::arg("lut"), py::arg("n"), py::arg("bias"),
     py::arg("terms"), py::arg("threshold"));
  // The 4-bit scan on a given quantized table: (sums, survivors) of the first n vectors.
  m.def("_pq_scan4", [](const std::string& level, py::array_t<uint8_t, py::array::c_style> codes,
                        py::array_t<uint8_t, py::array::c_style> qlut, idx_t n, int limit) {
    if (qlut.ndim() != 2 || qlut.shape(1) != 16 || qlut.shape(0) % 2 != 0 || qlut.shape(0) == 0)
      throw py::value_error("qlut must be (pq_m rounded up to even, 16) uint8");
    if (limit < 0 || limit > 65535) throw py::value_error("limit must be in [0, 65535]");
    const int pairs = static_cast<int>(qlut.shape(0)) / 2;
    const idx_t block = retro::simd::kFastScanBlock;
    const idx_t padded = (n + block - 1) / block * block;
    if (n < 0 || codes.ndim() != 1 || codes.shape(0) != padded / block * pairs * 32)
      throw py::value_error("codes must hold the 4-bit blocks of n vectors");
    py::array_t<uint16_t> sums(static_cast<py::ssize_t>(padded));
    std::vector<uint32_t> survivors(static_cast<size_t>(padded));
    const size_t count = retro::simd::kernels_for(retro::parse_simd_level(level))
        .pq_scan4(n, 2 * pairs, codes.data(), qlut.data(), static_cast<uint16_t>(limit),
                  sums.mutable_data(), survivors.data());
    IdArray out(static_cast<py::ssize_t>(count));
    for (size_t i = 0; i < count; ++i) out.mutable_data()[i] = survivors[i];
    return py::make_tuple(sums, out);
  }, py::arg("level"), py::arg("codes"), py::arg("qlut"), py::arg("n"), py::arg("limit"));
  m.attr("_fast_scan_block") = retro::simd::kFastScanBlock;
  m.def("_gemm", [](const std::string& level, FloatArray a, FloatArray b) {
    if (a.ndim() != 2 || b.ndim() != 2 || a.shape(1) != b.shape(1))
      throw py::value_error("a (m, k) and b (n, k) must share k");
    const idx_t mm = a.shape(0), n = b.shape(0);
    const int k = static_cast<int>(a.shape(1));
    std::vector<float> packed(retro::simd::packed_size(n, k));
    retro::simd::pack_panels(n, k, b.data(), k, packed.data());
    FloatArray c({mm, n});
    retro::simd::kernels_for(retro::parse_simd_level(level))
        .gemm_packed(mm, n, k, a.data(), k, packed.data(), c.mutable_data(), n);
    return c;
  });

  py::class_<retro::FlatIndex>(m, "FlatIndex")
      .def(py::init([](int d, const std::string& metric) {
             return std::make_unique<retro::FlatIndex>(d, parse_metric(metric));
           }),
           py::arg("d"), py::arg("metric") = "l2")
      .def_property_readonly("d", &retro::FlatIndex::d)
      .def_property_readonly("ntotal", &retro::FlatIndex::ntotal)
      .def_property_readonly("metric", [](const retro::FlatIndex& i) { return metric_name(i.metric()); })
      .def("add", [](retro::FlatIndex& index, const FloatArray& x, const std::optional<IdArray>& ids) {
        const idx_t n = rows(x, index.d(), "added vectors");
        const idx_t* id_ptr = ids_pointer(ids, n);
        run_without_gil(add_request(index, n, "a FlatIndex"),
                        [&] { index.add(n, x.data(), id_ptr); });
      }, py::arg("x"), py::arg("ids") = py::none())
      .def("search", [](const retro::FlatIndex& index, const FloatArray& x, idx_t k) {
        return search_into_arrays(index, x, k, [&](const float* xp, float* D, idx_t* I, idx_t n) {
          index.search(n, xp, k, D, I);
        });
      }, py::arg("x"), py::arg("k"))
      .def("reset", &retro::FlatIndex::reset);

  py::class_<retro::IvfPqIndex>(m, "IvfPqIndex")
      .def(py::init([](int d, idx_t nlist, int pq_m, int pq_bits, const std::string& metric,
                       uint64_t seed, bool by_residual, int opq_m, int opq_d) {
             return std::make_unique<retro::IvfPqIndex>(d, nlist, pq_m, pq_bits,
                                                        parse_metric(metric), seed, by_residual,
                                                        opq_m, opq_d);
           }),
           py::arg("d"), py::arg("nlist"), py::arg("pq_m"), py::arg("pq_bits") = 8,
           py::arg("metric") = "l2", py::arg("seed") = 0, py::arg("by_residual") = true,
           py::arg("opq_m") = 0, py::arg("opq_d") = 0)
      .def_property_readonly("d", &retro::IvfPqIndex::d)
      .def_property_readonly("ivf_d", &retro::IvfPqIndex::ivf_d)
      .def_property_readonly("opq_m", &retro::IvfPqIndex::opq_m)
      .def("rotation", [](const retro::IvfPqIndex& index) -> py::object {
        if (!index.rotation_is_set()) return py::none();
        FloatArray r({static_cast<idx_t>(index.ivf_d()), static_cast<idx_t>(index.d())});
        std::copy(index.rotation(), index.rotation() + r.size(), r.mutable_data());
        return std::move(r);
      })
      .def("set_rotation", [](retro::IvfPqIndex& index, const FloatArray& rotation) {
        if (rotation.ndim() != 2 || rotation.shape(0) != index.ivf_d() ||
            rotation.shape(1) != index.d())
          throw py::value_error("the OPQ rotation must have shape (opq_d=" +
                                std::to_string(index.ivf_d()) + ", d=" +
                                std::to_string(index.d()) + "), got " + shape_of(rotation));
        py::gil_scoped_release release;
        index.set_rotation(rotation.data());
      }, py::arg("rotation"))
      .def("rotate", [](const retro::IvfPqIndex& index, const FloatArray& x) {
        const idx_t n = rows(x, index.d(), "vectors");
        FloatArray out({n, static_cast<idx_t>(index.ivf_d())});
        float* out_data = out.mutable_data();
        py::gil_scoped_release release;
        index.rotate(n, x.data(), out_data);
        return out;
      }, py::arg("x"))
      .def_property_readonly("nlist", &retro::IvfPqIndex::nlist)
      .def_property_readonly("pq_m", &retro::IvfPqIndex::pq_m)
      .def_property_readonly("pq_bits", &retro::IvfPqIndex::pq_bits)
      .def_property_readonly("metric", [](const retro::IvfPqIndex& i) { return metric_name(i.metric()); })
      .def_property_readonly("seed", &retro::IvfPqIndex::seed)
      .def_property_readonly("by_residual", &retro::IvfPqIndex::by_residual)
      .def_property_readonly("ntotal", &retro::IvfPqIndex::ntotal)
      .def_property_readonly("is_trained", &retro::IvfPqIndex::is_trained)
      .def_property_readonly("is_mmapped", &retro::IvfPqIndex::is_mmapped)
      .def_property_readonly("coarse_objective", &retro::IvfPqIndex::coarse_objective)
      .def_property("niter", [](const retro::IvfPqIndex& i) { return i.train_params.niter; },
                    [](retro::IvfPqIndex& i, int v) {
                      if (v < 1) throw py::value_error("niter must be >= 1");
                      i.train_params.niter = v;
                    })
      .def_property("max_points_per_centroid",
                    [](const retro::IvfPqIndex& i) { return i.train_params.max_points_per_centroid; },
                    [](retro::IvfPqIndex& i, int v) { i.train_params.max_points_per_centroid = v; })
      .def("list_sizes", [](const retro::IvfPqIndex& index) {
        IdArray sizes(index.nlist());
        auto lock = index.read_lock();
        for (idx_t l = 0; l < index.nlist(); ++l) sizes.mutable_data()[l] = index.list_size(l);
        return sizes;
      })
      .def("coarse_centroids", [](const retro::IvfPqIndex& index) {
        FloatArray c({index.is_trained() ? index.nlist() : 0, static_cast<idx_t>(index.ivf_d())});
        if (index.is_trained())
          std::copy(index.coarse_centroids(), index.coarse_centroids() + c.size(), c.mutable_data());
        return c;
      })
      .def("pq_centroids", [](const retro::IvfPqIndex& index) {
        FloatArray c({static_cast<idx_t>(index.is_trained() ? index.pq_m() : 0),
                      static_cast<idx_t>(index.ksub()), static_cast<idx_t>(index.dsub())});
        if (index.is_trained())
          std::copy(index.pq_centroids(), index.pq_centroids() + c.size(), c.mutable_data());
        return c;
      })
      .def("list_codes", [](const retro::IvfPqIndex& index, idx_t list) {
        auto lock = index.read_lock();
        CodeArray codes({index.list_size(list), static_cast<idx_t>(index.pq_m())});
        index.list_codes(list, codes.mutable_data());
        return codes;
      }, py::arg("list"))
      .def("list_ids", [](const retro::IvfPqIndex& index, idx_t list) {
        auto lock = index.read_lock();
        IdArray ids(index.list_size(list));
        std::copy(index.list_ids(list), index.list_ids(list) + ids.size(), ids.mutable_data());
        return ids;
      }, py::arg("list"))
      .def("set_trained", [](retro::IvfPqIndex& index, const FloatArray& coarse,
                             const FloatArray& pq) {
        const std::string want_coarse = "(nlist=" + std::to_string(index.nlist()) +
                                        ", d=" + std::to_string(index.ivf_d()) + ")";
        if (coarse.ndim() != 2 || coarse.shape(0) != index.nlist() ||
            coarse.shape(1) != index.ivf_d())
          throw py::value_error("coarse centroids must have shape " + want_coarse + ", got " +
                                shape_of(coarse));
        if (pq.ndim() != 3 || pq.shape(0) != index.pq_m() || pq.shape(1) != index.ksub() ||
            pq.shape(2) != index.dsub())
          throw py::value_error("PQ centroids must have shape (pq_m=" +
                                std::to_string(index.pq_m()) + ", ksub=" +
                                std::to_string(index.ksub()) + ", dsub=" +
                                std::to_string(index.dsub()) + "), got " + shape_of(pq));
        py::gil_scoped_release release;
        index.set_trained(coarse.data(), pq.data());
      }, py::arg("coarse_centroids"), py::arg("pq_centroids"))
      .def("add_encoded", [](retro::IvfPqIndex& index, idx_t list, const CodeArray& codes,
                             const IdArray& ids) {
        if (codes.ndim() != 2 || codes.shape(1) != index.pq_m())
          throw py::value_error("codes must be a 2-D uint8 array (n, pq_m=" +
                                std::to_string(index.pq_m()) + "), got shape " + shape_of(codes));
        const idx_t n = codes.shape(0);
        const idx_t* id_ptr = ids_pointer(ids, n);
        py::gil_scoped_release release;
        index.add_encoded(list, n, codes.data(), id_ptr);
      }, py::arg("list"), py::arg("codes"), py::arg("ids"))
      .def("add_preassigned", [](retro::IvfPqIndex& index, const IdArray& list_of,
                                 const CodeArray& codes, const std::optional<IdArray>& ids) {
        const idx_t n = list_of.ndim() == 1 ? list_of.shape(0) : -1;
        if (n < 0) throw py::value_error("list_of must be a 1-D int64 array");
        if (codes.ndim() != 2 || codes.shape(0) != n || codes.shape(1) != index.pq_m())
          throw py::value_error("codes must have shape (n=" + std::to_string(n) + ", pq_m=" +
                                std::to_string(index.pq_m()) + "), got " + shape_of(codes));
        const idx_t* id_ptr = ids_pointer(ids, n);
        py::gil_scoped_release release;
        index.add_preassigned(n, list_of.data(), codes.data(), id_ptr);
      }, py::arg("list_of"), py::arg("codes"), py::arg("ids") = py::none())
      .def("concatenated_lists", [](const retro::IvfPqIndex& index) {
        auto lists = std::make_shared<retro::IvfPqConcatenatedLists>();
        {
          py::gil_scoped_release release;
          *lists = index.concatenated_lists();
        }
        // numpy views of the vectors, kept alive by a capsule that owns them (no copy)
        auto view = [&](auto& v) {
          using T = typename std::decay_t<decltype(v)>::value_type;
          auto* owner = new std::shared_ptr<retro::IvfPqConcatenatedLists>(lists);
          py::capsule keep(owner, [](void* p) {
            delete static_cast<std::shared_ptr<retro::IvfPqConcatenatedLists>*>(p);
          });
          return py::array_t<T>(static_cast<py::ssize_t>(v.size()), v.data(), keep);
        };
        py::dict out;
        out["offsets"] = view(lists->offsets);
        out["sizes"] = view(lists->sizes);
        out["codes"] = view(lists->codes);
        out["ids"] = view(lists->ids);
        out["terms"] = view(lists->terms);
        return out;
      })
      .def("train", [](retro::IvfPqIndex& index, const FloatArray& x) {
        const idx_t n = rows(x, index.d(), "training data");
        run_without_gil("training an IvfPqIndex of dimension " + std::to_string(index.d()) +
                            " on " + std::to_string(n) + " vectors",
                        [&] { index.train(n, x.data()); });
      }, py::arg("x"))
      .def("add", [](retro::IvfPqIndex& index, const FloatArray& x, const std::optional<IdArray>& ids) {
        const idx_t n = rows(x, index.d(), "added vectors");
        const idx_t* id_ptr = ids_pointer(ids, n);
        run_without_gil(add_request(index, n, "an IvfPqIndex"),
                        [&] { index.add(n, x.data(), id_ptr); });
      }, py::arg("x"), py::arg("ids") = py::none())
      .def("search", [](const retro::IvfPqIndex& index, const FloatArray& x, idx_t k, int nprobe,
                        const py::object& rerank, int k_factor) {
        retro::IvfPqSearchParams params;
        params.nprobe = nprobe;
        params.k_factor = k_factor;
        py::array rerank_array;  // keeps the vectors alive while the search reads them
        if (!rerank.is_none()) rerank_array = set_rerank_vectors(params, rerank, index.d());
        return search_into_arrays(index, x, k, [&](const float* xp, float* D, idx_t* I, idx_t n) {
          index.search(n, xp, k, D, I, params);
        });
      }, py::arg("x"), py::arg("k"), py::arg("nprobe") = 8, py::arg("rerank") = py::none(),
         py::arg("k_factor") = 4)
      .def("rerank_candidates", [](const retro::IvfPqIndex& index, const FloatArray& x,
                                   const IdArray& candidates, idx_t k, const py::object& rerank) {
        retro::IvfPqSearchParams params;
        py::array rerank_array = set_rerank_vectors(params, rerank, index.d());
        if (candidates.ndim() != 2 || candidates.shape(0) != x.shape(0))
          throw py::value_error("candidates must have shape (n, k_candidates) with n=" +
                                std::to_string(x.shape(0)) + ", got " + shape_of(candidates));
        const idx_t k_candidates = candidates.shape(1);
        return search_into_arrays(index, x, k, [&](const float* xp, float* D, idx_t* I, idx_t n) {
          index.rerank_candidates(n, xp, k, k_candidates, candidates.data(), params, D, I);
        });
      }, py::arg("x"), py::arg("candidates"), py::arg("k"), py::arg("rerank"))
      .def("reset", &retro::IvfPqIndex::reset)
      .def("save", [](const retro::IvfPqIndex& index, const std::string& path) {
        py::gil_scoped_release release;
        index.save(path);
      }, py::arg("path"))
      .def_static("load", [](const std::string& path, bool mmap, bool verify) {
        py::gil_scoped_release release;
        return retro::IvfPqIndex::load(path, mmap, verify);
      }, py::arg("path"), py::arg("mmap"), py::arg("verify"));
}
