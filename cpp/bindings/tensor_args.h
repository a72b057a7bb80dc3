// What the torch-facing entry points of retro._core take from Python: a dtype by torch's name and
// buffers by address (torch's data_ptr()), so that _core never links libtorch.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "retro/attention.h"  // DType

namespace retro_bindings {

inline retro::DType parse_dtype(const std::string& name) {
  if (name == "float32") return retro::DType::Float32;
  if (name == "float64") return retro::DType::Float64;
  if (name == "bfloat16") return retro::DType::BFloat16;
  if (name == "float16") return retro::DType::Float16;
  throw pybind11::value_error("expected float32, float64, bfloat16 or float16, got " + name);
}

template <typename T>
T* pointer(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

}  // namespace retro_bindings
