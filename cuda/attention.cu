// RETRO's three attentions on the GPU (retro/cuda.h; shapes and semantics:
// cpp/include/retro/attention.h; the CPU path with the same groups: cpp/src/attention/). This file
// checks a call and dispatches it to its (dtype, head_dim) instantiation (attention/launch.h);
// grid sizes and launches are in attention/run.cuh, the kernels in attention/kernels.cuh.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>
#include <type_traits>

#include "attention/groups.cuh"
#include "attention/launch.h"
#include "retro/cuda.h"
#include "retro/error.h"

namespace retro::cuda {
namespace {

// Calls f(T*, std::integral_constant<int, Dh>) for the call's element type and head width.
template <typename F>
void dispatch(const RetroAttentionParams& p, F&& f) {
  auto with_width = [&](auto* type) {
    if (p.head_dim == 64) f(type, std::integral_constant<int, 64>{});
    else f(type, std::integral_constant<int, 128>{});
  };
  if (p.dtype == DType::BFloat16) with_width(static_cast<__nv_bfloat16*>(nullptr));
  else with_width(static_cast<__half*>(nullptr));
}

bool fused_backward_enabled = true;

void check(const RetroAttentionParams& p, int device) {
  check_attention_params(p, false);  // nbr_lens is device memory: the kernels clamp it
  const std::string why = attention_unsupported(p);
  RETRO_CHECK_ARG(why.empty(), "CUDA attention: %s", why.c_str());
  const cudaError_t status = cudaSetDevice(device);
  RETRO_CHECK(status == cudaSuccess, "CUDA attention: cannot use device %d: %s", device,
              cudaGetErrorString(status));
}

}  // namespace

int attention_max_key_slots() { return kMaxKeySlots; }

void set_fused_backward(bool enabled) { fused_backward_enabled = enabled; }

std::string attention_unsupported(const RetroAttentionParams& p) {
  if (p.dtype != DType::BFloat16 && p.dtype != DType::Float16)
    return "the CUDA kernels take bfloat16 and float16";
  if (p.head_dim != 64 && p.head_dim != 128) return "the CUDA kernels take head_dim 64 or 128";
  if (max_key_slots(p) > kMaxKeySlots)
    return "at most " + std::to_string(kMaxKeySlots) + " key slots per group (K R for CCA, R, m)";
  return "";
}

void attention_forward(const RetroAttentionParams& p, const AttentionForward& f, int device,
                       uintptr_t stream) {
  check(p, device);
  dispatch(p, [&](auto* type, auto width) {
    run_forward<std::remove_pointer_t<decltype(type)>, decltype(width)::value>(
        p, f, reinterpret_cast<cudaStream_t>(stream));
  });
}

void attention_backward(const RetroAttentionParams& p, const AttentionBackward& b, float* delta,
                        int device, uintptr_t stream) {
  check(p, device);
  dispatch(p, [&](auto* type, auto width) {
    run_backward<std::remove_pointer_t<decltype(type)>, decltype(width)::value>(
        p, b, delta, fused_backward_enabled, reinterpret_cast<cudaStream_t>(stream));
  });
}

}  // namespace retro::cuda
