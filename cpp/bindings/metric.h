// Metric names shared by the bindings: "l2" / "ip" (and faiss's spellings) to retro::Metric.
#pragma once
#include <string>

#include "retro/error.h"
#include "retro/types.h"

namespace retro_bindings {

inline retro::Metric parse_metric(const std::string& name) {
  if (name == "l2" || name == "L2") return retro::Metric::L2;
  if (name == "ip" || name == "inner_product" || name == "IP") return retro::Metric::InnerProduct;
  throw retro::Error(retro::ErrorKind::InvalidArgument,
                     "unknown metric '" + name + "' (expected 'l2' or 'ip')");
}

inline std::string metric_name(retro::Metric m) { return m == retro::Metric::L2 ? "l2" : "ip"; }

}  // namespace retro_bindings
