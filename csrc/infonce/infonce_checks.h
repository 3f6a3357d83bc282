// Argument checks shared by the CPU (infonce_cpu.cpp) and CUDA (infonce_cuda.cu) kernels of mclcore::infonce,
// infonce_backward and infonce_with_grad: one set of rules and messages whatever the device.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <optional>

namespace mclcore::infonce_checks {

// float16 / bfloat16 / float32 inputs are computed in float32, float64 in float64.
inline at::ScalarType compute_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Square mode (offset not given): p, k (B, d) with B >= 2. Rectangular mode (offset given): p (B, d) local query
// rows, k (N, d) keys with N >= 2 and 0 <= offset <= N - B, the positive of row i being key offset + i. Both: d >= 1,
// same dtype (a floating type) and device, that device the kernel's (`kernel_device`); tau, eps positive finite;
// groups optional int64 on p's device, one id per key row ((B,) square, (N,) rectangular). Returns the offset
// (0 in square mode).
inline int64_t check_inputs(const at::Tensor& p, const at::Tensor& k, const std::optional<at::Tensor>& groups,
                            double tau, double eps, std::optional<int64_t> offset, c10::DeviceType kernel_device) {
  TORCH_CHECK(p.dim() == 2, "mclcore.infonce: p must be 2-D (B, d), got shape ", p.sizes());
  TORCH_CHECK(k.dim() == 2, "mclcore.infonce: k must be 2-D (B, d), or (N, d) with an offset, got shape ", k.sizes());
  const int64_t B = p.size(0), N = k.size(0);
  if (!offset.has_value()) {
    TORCH_CHECK(p.sizes() == k.sizes(), "mclcore.infonce: p and k must have the same shape, got ", p.sizes(),
                " and ", k.sizes(), " (keys with more rows than p need an offset: rectangular mode)");
    TORCH_CHECK(B >= 2, "mclcore.infonce: needs a batch of at least 2 rows (B >= 2), got B = ", B);
  } else {
    TORCH_CHECK(k.size(1) == p.size(1), "mclcore.infonce: p (B, d) and k (N, d) must have the same number of "
                "features d, got ", p.sizes(), " and ", k.sizes());
    TORCH_CHECK(B >= 1, "mclcore.infonce: needs at least 1 query row (B >= 1), got B = ", B);
    TORCH_CHECK(N >= 2, "mclcore.infonce: needs at least 2 keys (N >= 2), got N = ", N);
    TORCH_CHECK(N >= B, "mclcore.infonce: k must have at least as many rows as p (N >= B), got B = ", B, ", N = ", N);
    TORCH_CHECK(*offset >= 0 && *offset <= N - B, "mclcore.infonce: offset must satisfy 0 <= offset <= N - B = ",
                N - B, " (the positive of row i is key offset + i), got offset = ", *offset, " with B = ", B,
                ", N = ", N);
  }
  TORCH_CHECK(p.size(1) >= 1, "mclcore.infonce: needs d >= 1 features, got d = ", p.size(1));
  const auto t = p.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
              "mclcore.infonce: p must be float16, bfloat16, float32 or float64, got ", t);
  TORCH_CHECK(k.scalar_type() == t, "mclcore.infonce: p and k must have the same dtype, got ", t, " and ",
              k.scalar_type());
  TORCH_CHECK(p.device() == k.device(), "mclcore.infonce: p and k must be on the same device, got ", p.device(),
              " and ", k.device());
  TORCH_CHECK(p.device().type() == kernel_device, "mclcore.infonce: ", c10::DeviceTypeName(kernel_device),
              " kernel called with tensors on ", p.device());
  TORCH_CHECK(std::isfinite(tau) && tau > 0, "mclcore.infonce: tau must be a positive finite number, got ", tau);
  TORCH_CHECK(std::isfinite(eps) && eps > 0, "mclcore.infonce: eps must be a positive finite number, got ", eps);
  if (groups.has_value() && groups->defined()) {
    const at::Tensor& g = *groups;
    if (offset.has_value()) {
      TORCH_CHECK(g.dim() == 1 && g.size(0) == N, "mclcore.infonce: groups must have shape (N,) = (", N,
                  ",) in rectangular mode (one id per key row), got ", g.sizes());
    } else {
      TORCH_CHECK(g.dim() == 1 && g.size(0) == B, "mclcore.infonce: groups must have shape (B,) = (", B, ",), got ",
                  g.sizes());
    }
    TORCH_CHECK(g.scalar_type() == at::kLong, "mclcore.infonce: groups must be int64, got ", g.scalar_type());
    TORCH_CHECK(g.device() == p.device(), "mclcore.infonce: groups must be on ", p.device(), ", got ", g.device());
  }
  return offset.value_or(0);
}

// infonce_backward's row statistics: lse_all, lse_pos (B,) in the compute dtype on p's device.
inline void check_row_stats(const at::Tensor& p, const at::Tensor& grad_loss, const at::Tensor& lse_all,
                            const at::Tensor& lse_pos) {
  const int64_t B = p.size(0);
  const auto ct = compute_dtype(p.scalar_type());
  TORCH_CHECK(grad_loss.numel() == 1, "mclcore.infonce_backward: grad_loss must hold one value, got shape ",
              grad_loss.sizes());
  for (const at::Tensor* t : {&lse_all, &lse_pos}) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == B, "mclcore.infonce_backward: lse_all/lse_pos must have shape (", B,
                ",), got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == ct, "mclcore.infonce_backward: lse_all/lse_pos must be ", ct, ", got ",
                t->scalar_type());
    TORCH_CHECK(t->device() == p.device(), "mclcore.infonce_backward: lse_all/lse_pos must be on ", p.device());
  }
}

}  // namespace mclcore::infonce_checks
