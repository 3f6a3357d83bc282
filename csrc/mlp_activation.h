// The activations of the MLP-generator ops (mech_derivs, comp_contrast): one enum and one parser, so both ops accept
// the same names with the same error. Each op keeps its own derivative code (mech_derivs needs up to s''', and
// comp_contrast s'').
#pragma once

#include <torch/library.h>

#include <string>

namespace mclcore {
namespace mlp {

enum class Act { Tanh, Sigmoid, Softplus, Gelu, Silu, SmoothLeaky, Relu, LeakyRelu, Identity };

// `op` names the op in the error ("mech_derivs", "comp_contrast").
inline Act parse_act(const std::string& s, const char* op) {
  if (s == "tanh") return Act::Tanh;
  if (s == "sigmoid") return Act::Sigmoid;
  if (s == "softplus") return Act::Softplus;
  if (s == "gelu") return Act::Gelu;
  if (s == "silu") return Act::Silu;
  if (s == "smooth_leaky") return Act::SmoothLeaky;
  if (s == "relu") return Act::Relu;
  if (s == "leaky_relu") return Act::LeakyRelu;
  if (s == "identity") return Act::Identity;
  TORCH_CHECK(false, op, ": activations: expected tanh, sigmoid, softplus, gelu, silu, smooth_leaky, relu, ",
              "leaky_relu or identity; got '", s, "'");
}

}  // namespace mlp
}  // namespace mclcore
