// bench_attention_cuda: RETRO's attention kernels on the GPU (cuda/attention.cu) without Python, in
// the CUTLASS example protocol. First it verifies them against the CPU kernels (float32 math on the
// same bf16/fp16-rounded inputs) on a small odd shape with short and missing neighbours and a
// q_offset, outputs and gradients poisoned with NaN so that an unwritten element fails, and prints
// Passed or Failed. Then it times the forward and forward+backward passes with CUDA events at the
// benchmark shape and prints each against its bandwidth floor: every input read once and every
// output written once, at the device-to-device copy rate measured in the same run (the rule of
// bench/ops.py --device cuda, which times the same kernels against PyTorch's SDPA backends).
//
//   bench_attention_cuda                           # CCA, d 1024 = 16 heads of 64, B 32, T 2048,
//                                                  # K 2, R 128, bf16: the shape of issue 6
//   bench_attention_cuda --op=self --d=768 --dtype=fp16 --json=out.json
//   bench_attention_cuda --iterations=0            # verify only
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "command_line.h"
#include "retro/attention.h"
#include "retro/cuda.h"

namespace {

using retro::AttentionBackward;
using retro::AttentionForward;
using retro::DType;
using retro::idx_t;
using retro::RetroAttention;
using retro::RetroAttentionParams;

const char* const kUsage =
    "usage: bench_attention_cuda [--key=value ...]\n"
    "  --op=cca            cca | self | cross (the decoder's CCA, the encoder's two attentions)\n"
    "  --dtype=bf16        bf16 | fp16\n"
    "  --d=1024            model width = heads x head_dim\n"
    "  --head_dim=64       64 | 128\n"
    "  --batch=32          B\n"
    "  --tokens=2048       T, decoder tokens per sequence (T / chunk_size chunks)\n"
    "  --chunk_size=64     m\n"
    "  --neighbours=2      K\n"
    "  --nbr_len=128       R\n"
    "  --iterations=20     timed repeats (median); 0 = only verify\n"
    "  --seed=0            data seed\n"
    "  --device=0          CUDA device\n"
    "  --json=PATH         also write the results as JSON\n"
    "  --help\n";

// Largest error allowed against the float32 CPU kernels, relative to the reference's largest
// magnitude (a wrong or unwritten element is off by O(1) or NaN).
double tolerance(DType dtype) { return dtype == DType::BFloat16 ? 0.05 : 0.01; }

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

struct Options {
  RetroAttentionParams shape;  // the benchmark shape (nbr_lens unset)
  int iterations, device;
  uint64_t seed;
  std::string json_path;
};

RetroAttention parse_op(const std::string& text) {
  if (text == "cca") return RetroAttention::ChunkedCross;
  if (text == "self") return RetroAttention::NeighbourSelf;
  if (text == "cross") return RetroAttention::NeighbourCross;
  throw std::invalid_argument("--op must be cca, self or cross, got '" + text + "'");
}

const char* op_name(RetroAttention op) {
  return op == RetroAttention::ChunkedCross    ? "cca"
         : op == RetroAttention::NeighbourSelf ? "self"
                                               : "cross";
}

DType parse_dtype(const std::string& text) {
  if (text == "bf16") return DType::BFloat16;
  if (text == "fp16") return DType::Float16;
  throw std::invalid_argument("--dtype must be bf16 or fp16, got '" + text + "'");
}

Options parse_options(retro_bench::CommandLine args) {
  Options opts;
  RetroAttentionParams& p = opts.shape;
  p.op = parse_op(args.take_text("op", "cca"));
  p.dtype = parse_dtype(args.take_text("dtype", "bf16"));
  const idx_t d = args.take("d", 1024);
  p.head_dim = args.take("head_dim", 64);
  p.batch = args.take("batch", 32);
  p.tokens = args.take("tokens", 2048);
  p.chunk_size = args.take("chunk_size", 64);
  p.neighbours = args.take("neighbours", 2);
  p.neighbour_len = args.take("nbr_len", 128);
  opts.iterations = static_cast<int>(args.take("iterations", 20));
  opts.seed = static_cast<uint64_t>(args.take("seed", 0));
  opts.device = static_cast<int>(args.take("device", 0));
  opts.json_path = args.take_text("json", "");
  args.check_all_taken();
  if (p.head_dim <= 0 || d % p.head_dim != 0)
    throw std::invalid_argument("--d must be a positive multiple of --head_dim");
  if (p.batch < 1 || p.tokens < 1 || p.chunk_size < 1 || p.neighbours < 1 || p.neighbour_len < 1 ||
      opts.iterations < 0)
    throw std::invalid_argument("sizes must be positive and --iterations >= 0");
  p.heads = d / p.head_dim;
  p.chunks = p.tokens / p.chunk_size;
  p.scale = 1.0 / std::sqrt(static_cast<double>(p.head_dim));
  return opts;
}

// ---- host tensors -----------------------------------------------------------------------------

uint16_t to_half_bits(float x, DType dtype) {
  if (dtype == DType::BFloat16) return __bfloat16_as_ushort(__float2bfloat16_rn(x));
  return __half_as_ushort(__float2half_rn(x));
}

float from_half_bits(uint16_t bits, DType dtype) {
  if (dtype == DType::BFloat16) return __bfloat162float(__ushort_as_bfloat16(bits));
  return __half2float(__ushort_as_half(bits));
}

// Seeded N(0, 1) values rounded to dtype: the bits to upload and the same values as float32.
struct HostTensor {
  std::vector<uint16_t> bits;
  std::vector<float> values;
};

HostTensor random_tensor(size_t n, DType dtype, std::mt19937_64& rng) {
  std::normal_distribution<float> normal;
  HostTensor t{std::vector<uint16_t>(n), std::vector<float>(n)};
  for (size_t i = 0; i < n; ++i) {
    t.bits[i] = to_half_bits(normal(rng), dtype);
    t.values[i] = from_half_bits(t.bits[i], dtype);
  }
  return t;
}

// bench/ops.py's mix: most neighbours full (chunk + continuation), the rest only the chunk.
std::vector<int32_t> realistic_lengths(const RetroAttentionParams& p, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> uniform;
  std::vector<int32_t> lens(p.batch * p.chunks * p.neighbours);
  for (int32_t& len : lens)
    len = static_cast<int32_t>(uniform(rng) < 0.8 ? p.neighbour_len
                                                  : std::min(p.chunk_size, p.neighbour_len));
  return lens;
}

// Lengths for the verification: every case from missing (0) to full (R).
std::vector<int32_t> odd_lengths(const RetroAttentionParams& p, std::mt19937_64& rng) {
  std::uniform_int_distribution<int32_t> length(0, static_cast<int32_t>(p.neighbour_len));
  std::vector<int32_t> lens(p.batch * p.chunks * p.neighbours);
  for (int32_t& len : lens) len = length(rng);
  lens.front() = 0;
  lens.back() = static_cast<int32_t>(p.neighbour_len);
  return lens;
}

// ---- device tensors ---------------------------------------------------------------------------

class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    check_cuda(cudaMalloc(&data_, std::max<size_t>(bytes, 1)), "cudaMalloc");
  }
  ~DeviceBuffer() { cudaFree(data_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  void upload(const std::vector<T>& host) {
    check_cuda(cudaMemcpy(data_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
               "upload");
  }
  template <typename T>
  std::vector<T> download() const {
    std::vector<T> host(bytes_ / sizeof(T));
    check_cuda(cudaMemcpy(host.data(), data_, bytes_, cudaMemcpyDeviceToHost), "download");
    return host;
  }
  // all bits set: NaN in every float type, so an element the kernels leave unwritten fails
  void poison() { check_cuda(cudaMemset(data_, 0xff, bytes_), "poison"); }

 private:
  void* data_ = nullptr;
  size_t bytes_;
};

// Element counts of one problem's tensors.
struct Sizes {
  size_t q, kv, lse;
  explicit Sizes(const RetroAttentionParams& p)
      : q(retro::query_rows(p) * p.heads * p.head_dim),
        kv(retro::key_rows(p) * p.heads * p.head_dim),
        lse(retro::query_rows(p) * p.heads) {}
};

// Every tensor of a forward and backward pass on the device, 16-bit except lse and delta.
struct DeviceProblem {
  Sizes sizes;
  DeviceBuffer q, k, v, out, lse, grad_out, grad_q, grad_k, grad_v, delta, lens;

  DeviceProblem(const RetroAttentionParams& p, size_t n_lens)
      : sizes(p),
        q(2 * sizes.q),
        k(2 * sizes.kv),
        v(2 * sizes.kv),
        out(2 * sizes.q),
        lse(4 * sizes.lse),
        grad_out(2 * sizes.q),
        grad_q(2 * sizes.q),
        grad_k(2 * sizes.kv),
        grad_v(2 * sizes.kv),
        delta(4 * sizes.lse),
        lens(4 * n_lens) {}

  void forward(const RetroAttentionParams& p, int device, cudaStream_t stream) {
    retro::cuda::attention_forward(p, {q.data(), k.data(), v.data(), out.data(), lse.data()},
                                   device, reinterpret_cast<uintptr_t>(stream));
  }
  void backward(const RetroAttentionParams& p, int device, cudaStream_t stream) {
    const AttentionBackward b{q.data(),      k.data(),      v.data(),
                              out.data(),    lse.data(),    grad_out.data(),
                              grad_q.data(), grad_k.data(), grad_v.data()};
    retro::cuda::attention_backward(p, b, static_cast<float*>(delta.data()), device,
                                    reinterpret_cast<uintptr_t>(stream));
  }
};

// ---- verification -----------------------------------------------------------------------------

// Largest |gpu - reference| / max |reference|; infinite where the GPU left NaN or inf.
double relative_error(const std::vector<uint16_t>& gpu, const std::vector<float>& reference,
                      DType dtype) {
  double worst = 0.0, scale = 1e-30;
  for (size_t i = 0; i < reference.size(); ++i) {
    const double got = from_half_bits(gpu[i], dtype);
    if (!std::isfinite(got)) return std::numeric_limits<double>::infinity();
    worst = std::max(worst, std::abs(got - reference[i]));
    scale = std::max(scale, static_cast<double>(std::abs(reference[i])));
  }
  return worst / scale;
}

// The kernels on a small odd shape against the CPU kernels; prints each tensor's error.
bool verify(const Options& opts, cudaStream_t stream) {
  RetroAttentionParams p = opts.shape;
  p.batch = 2;
  p.tokens = 3 * p.chunk_size + 5;  // T not a multiple of m: a tail past the last chunk
  p.chunks = 3;
  p.heads = 3;
  p.neighbours = std::min<idx_t>(p.neighbours, 2);
  p.q_offset = p.op == RetroAttention::ChunkedCross ? 7 : 0;
  std::mt19937_64 rng(opts.seed + 1);
  const Sizes n(p);
  HostTensor q = random_tensor(n.q, p.dtype, rng), k = random_tensor(n.kv, p.dtype, rng),
             v = random_tensor(n.kv, p.dtype, rng), grad_out = random_tensor(n.q, p.dtype, rng);
  const std::vector<int32_t> lens = odd_lengths(p, rng);

  RetroAttentionParams cpu = p;
  cpu.dtype = DType::Float32;
  cpu.nbr_lens = lens.data();
  std::vector<float> out(n.q), lse(n.lse), grad_q(n.q), grad_k(n.kv), grad_v(n.kv);
  retro::attention_forward(
      cpu, {q.values.data(), k.values.data(), v.values.data(), out.data(), lse.data()});
  retro::attention_backward(
      cpu, {q.values.data(), k.values.data(), v.values.data(), out.data(), lse.data(),
            grad_out.values.data(), grad_q.data(), grad_k.data(), grad_v.data()});

  DeviceProblem gpu(p, lens.size());
  gpu.q.upload(q.bits);
  gpu.k.upload(k.bits);
  gpu.v.upload(v.bits);
  gpu.grad_out.upload(grad_out.bits);
  gpu.lens.upload(lens);
  for (DeviceBuffer* b : {&gpu.out, &gpu.lse, &gpu.grad_q, &gpu.grad_k, &gpu.grad_v}) b->poison();
  p.nbr_lens = static_cast<const int32_t*>(gpu.lens.data());
  gpu.forward(p, opts.device, stream);
  gpu.backward(p, opts.device, stream);
  check_cuda(cudaStreamSynchronize(stream), "verification run");

  const struct {
    const char* name;
    const DeviceBuffer& gpu;
    const std::vector<float>& reference;
  } checks[] = {{"out", gpu.out, out},
                {"grad_q", gpu.grad_q, grad_q},
                {"grad_k", gpu.grad_k, grad_k},
                {"grad_v", gpu.grad_v, grad_v}};
  bool passed = true;
  std::printf("verify %s: B 2, T %lld, q_offset %lld, H 3 x %lld, K %lld, R %lld, lengths 0..R\n",
              op_name(p.op), static_cast<long long>(p.tokens), static_cast<long long>(p.q_offset),
              static_cast<long long>(p.head_dim), static_cast<long long>(p.neighbours),
              static_cast<long long>(p.neighbour_len));
  for (const auto& c : checks) {
    const double error = relative_error(c.gpu.download<uint16_t>(), c.reference, p.dtype);
    std::printf("  %-7s max error / max |reference| = %.2e (allowed %.0e)\n", c.name, error,
                tolerance(p.dtype));
    passed = passed && error <= tolerance(p.dtype);
  }
  return passed;
}

// ---- timing -----------------------------------------------------------------------------------

// Median milliseconds of `iterations` runs of fn on stream, after one warm-up run.
template <typename Fn>
double median_ms(Fn&& fn, int iterations, cudaStream_t stream) {
  cudaEvent_t start, stop;
  check_cuda(cudaEventCreate(&start), "cudaEventCreate");
  check_cuda(cudaEventCreate(&stop), "cudaEventCreate");
  fn();
  std::vector<float> ms(iterations);
  for (float& sample : ms) {
    check_cuda(cudaEventRecord(start, stream), "cudaEventRecord");
    fn();
    check_cuda(cudaEventRecord(stop, stream), "cudaEventRecord");
    check_cuda(cudaEventSynchronize(stop), "timed run");
    check_cuda(cudaEventElapsedTime(&sample, start, stop), "cudaEventElapsedTime");
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
  return ms[ms.size() / 2];
}

// Device-to-device copy rate of a 1 GiB buffer, bytes per second counting bytes read and written.
double copy_rate(int iterations, cudaStream_t stream) {
  DeviceBuffer src(size_t{1} << 30), dst(size_t{1} << 30);
  const double ms = median_ms(
      [&] {
        check_cuda(
            cudaMemcpyAsync(dst.data(), src.data(), src.bytes(), cudaMemcpyDeviceToDevice, stream),
            "copy");
      },
      std::max(iterations, 5), stream);
  return 2.0 * src.bytes() / (ms / 1000.0);
}

// Fills a device buffer of 16-bit values by repeating a seeded random block (the values do not
// change the kernels' work; generating billions on the host would).
void fill(DeviceBuffer& buffer, const HostTensor& block) {
  const size_t block_bytes = block.bits.size() * sizeof(uint16_t);
  for (size_t offset = 0; offset < buffer.bytes(); offset += block_bytes)
    check_cuda(cudaMemcpy(static_cast<char*>(buffer.data()) + offset, block.bits.data(),
                          std::min(block_bytes, buffer.bytes() - offset), cudaMemcpyHostToDevice),
               "fill");
}

struct Timing {
  double forward_ms, forward_backward_ms, forward_floor_ms, forward_backward_floor_ms, copy_tb_s;
};

Timing time_kernels(const Options& opts, cudaStream_t stream) {
  RetroAttentionParams p = opts.shape;
  std::mt19937_64 rng(opts.seed);
  const std::vector<int32_t> lens = realistic_lengths(p, rng);
  DeviceProblem gpu(p, lens.size());
  const HostTensor block = random_tensor(size_t{1} << 20, p.dtype, rng);
  for (DeviceBuffer* b : {&gpu.q, &gpu.k, &gpu.v, &gpu.grad_out}) fill(*b, block);
  gpu.lens.upload(lens);
  p.nbr_lens = static_cast<const int32_t*>(gpu.lens.data());

  Timing t{};
  t.forward_ms = median_ms([&] { gpu.forward(p, opts.device, stream); }, opts.iterations, stream);
  t.forward_backward_ms = median_ms(
      [&] {
        gpu.forward(p, opts.device, stream);
        gpu.backward(p, opts.device, stream);
      },
      opts.iterations, stream);
  const double rate = copy_rate(opts.iterations, stream);
  // the forward reads q, k, v and writes out; the backward also reads out and grad_out and
  // writes a gradient per input (bench/ops.py's floor_bytes)
  const double inputs = gpu.q.bytes() + gpu.k.bytes() + gpu.v.bytes(), out = gpu.out.bytes();
  t.forward_floor_ms = 1000.0 * (inputs + out) / rate;
  t.forward_backward_floor_ms = 1000.0 * 3.0 * (inputs + out) / rate;
  t.copy_tb_s = rate / 1e12;
  return t;
}

void write_json(const std::string& path, const Options& opts, const std::string& device_name,
                bool passed, const Timing* t) {
  const RetroAttentionParams& p = opts.shape;
  std::ofstream json(path);
  json << "{\"binary\": \"bench_attention_cuda\", \"device\": \"" << device_name << "\", \"op\": \""
       << op_name(p.op) << "\", \"dtype\": \"" << (p.dtype == DType::BFloat16 ? "bf16" : "fp16")
       << "\", \"batch\": " << p.batch << ", \"tokens\": " << p.tokens << ", \"heads\": " << p.heads
       << ", \"head_dim\": " << p.head_dim << ", \"neighbours\": " << p.neighbours
       << ", \"nbr_len\": " << p.neighbour_len << ", \"chunk_size\": " << p.chunk_size
       << ", \"verified\": " << (passed ? "true" : "false");
  if (t != nullptr)
    json << ", \"iterations\": " << opts.iterations << ", \"copy_tb_s\": " << t->copy_tb_s
         << ", \"forward_ms\": " << t->forward_ms
         << ", \"forward_floor_ms\": " << t->forward_floor_ms
         << ", \"forward_backward_ms\": " << t->forward_backward_ms
         << ", \"forward_backward_floor_ms\": " << t->forward_backward_floor_ms;
  json << "}\n";
  if (!json) throw std::runtime_error("cannot write " + path);
}

}  // namespace

int main(int argc, char** argv) {
  Options opts;
  const int exit_code =
      retro_bench::parse_command_line(argc, argv, "bench_attention_cuda", kUsage, parse_options, opts);
  if (exit_code >= 0) return exit_code;
  if (retro::cuda::device_count() <= opts.device) {
    std::fprintf(stderr, "bench_attention_cuda: no usable CUDA device %d\n", opts.device);
    return 2;
  }
  try {
    const std::string why = retro::cuda::attention_unsupported(opts.shape);
    if (!why.empty()) throw std::invalid_argument(why);
    check_cuda(cudaSetDevice(opts.device), "cudaSetDevice");
    cudaStream_t stream;  // not the default stream: the kernels must honour the one they are given
    check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    const std::string device_name = retro::cuda::device_name(opts.device);
    std::printf("%s\n", device_name.c_str());
    const bool passed = verify(opts, stream);
    std::printf("%s\n", passed ? "Passed" : "Failed");
    Timing timing{};
    const bool timed = passed && opts.iterations > 0;
    if (timed) {
      timing = time_kernels(opts, stream);
      const RetroAttentionParams& p = opts.shape;
      std::printf("%s %s, B %lld, T %lld, H %lld x %lld, K %lld, R %lld (copy %.2f TB/s)\n",
                  op_name(p.op), p.dtype == DType::BFloat16 ? "bf16" : "fp16",
                  static_cast<long long>(p.batch), static_cast<long long>(p.tokens),
                  static_cast<long long>(p.heads), static_cast<long long>(p.head_dim),
                  static_cast<long long>(p.neighbours), static_cast<long long>(p.neighbour_len),
                  timing.copy_tb_s);
      std::printf("  forward           %8.3f ms  floor %.3f ms  %3.0f%% of the floor\n",
                  timing.forward_ms, timing.forward_floor_ms,
                  100.0 * timing.forward_floor_ms / timing.forward_ms);
      std::printf("  forward+backward  %8.3f ms  floor %.3f ms  %3.0f%% of the floor\n",
                  timing.forward_backward_ms, timing.forward_backward_floor_ms,
                  100.0 * timing.forward_backward_floor_ms / timing.forward_backward_ms);
    }
    if (!opts.json_path.empty())
      write_json(opts.json_path, opts, device_name, passed, timed ? &timing : nullptr);
    cudaStreamDestroy(stream);
    return passed ? 0 : 1;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "bench_attention_cuda: %s\n", error.what());
    return 1;
  }
}
