// Member-stacked InfoNCE, shared by the CPU (infonce_cpu.cpp) and CUDA C++ (infonce_cuda.cu) kernels: M independent
// losses in one call, one per member of a stack of models (e.g. the seeds of the synthetic study). Inputs p (M, B, d),
// k (M, B, d) -- or (M, N, d) in rectangular mode (an offset given, the same for every member) --, groups optional
// (M, B) resp. (M, N); outputs gain the member axis in front: loss (M,), lse_all / lse_pos (M, B), dp (M, B, d),
// dk (M, N, d); infonce_backward takes grad_loss (M,) (one upstream gradient per member). The members run one after
// the other through the unstacked kernel on views of the stacked tensors: member m's numbers are those of an
// unstacked call on its slices (up to the last bit the matrix library may round differently on a view at another
// memory alignment).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

namespace mclcore::infonce_members {

inline bool stacked(const at::Tensor& p) { return p.dim() == 3; }

// The stacked shapes; each member's slices then go through the unstacked checks (dtype, device, tau, eps, offset).
inline void check(const at::Tensor& p, const at::Tensor& k, const std::optional<at::Tensor>& groups,
                  std::optional<int64_t> offset) {
  if (offset.has_value()) {
    TORCH_CHECK(k.dim() == 3 && k.size(0) == p.size(0) && k.size(2) == p.size(2), "mclcore.infonce: member-stacked "
                "p (M, B, d) with an offset needs k of shape (M, N, d), got ", p.sizes(), " and ", k.sizes());
  } else {
    TORCH_CHECK(k.dim() == 3 && k.sizes() == p.sizes(), "mclcore.infonce: member-stacked p (M, B, d) needs k of the "
                "same shape, got ", p.sizes(), " and ", k.sizes());
  }
  TORCH_CHECK(p.size(0) >= 1, "mclcore.infonce: member-stacked p needs at least one member, got shape ", p.sizes());
  if (groups.has_value() && groups->defined())
    TORCH_CHECK(groups->dim() == 2 && groups->size(0) == p.size(0) && groups->size(1) == k.size(1),
                "mclcore.infonce: member-stacked p (M, B, d) needs groups of shape (M, ", offset ? "N" : "B",
                ") = (", p.size(0), ", ", k.size(1), "), got ", groups->sizes());
}

inline std::optional<at::Tensor> member_groups(const std::optional<at::Tensor>& groups, int64_t m) {
  if (!groups.has_value() || !groups->defined()) return std::nullopt;
  return groups->select(0, m);
}

// The one per-member loop of the stacked entry points: call(m) for m = 0..M-1, each returning a tuple of tensors, and
// the i-th tensors of all members stacked along a new leading axis (the i-th output).
template <size_t I, typename Tuple>
at::Tensor stack_column(const std::vector<Tuple>& outs) {
  std::vector<at::Tensor> ts;
  ts.reserve(outs.size());
  for (const auto& o : outs) ts.push_back(std::get<I>(o));
  return at::stack(ts);
}

template <typename Tuple, size_t... I>
Tuple stack_outputs(const std::vector<Tuple>& outs, std::index_sequence<I...>) {
  return Tuple{stack_column<I>(outs)...};
}

template <typename Call>
auto over_members(int64_t M, const Call& call) {
  using Tuple = decltype(call(int64_t{0}));
  std::vector<Tuple> outs;
  outs.reserve(M);
  for (int64_t m = 0; m < M; ++m) outs.push_back(call(m));
  return stack_outputs(outs, std::make_index_sequence<std::tuple_size<Tuple>::value>{});
}

// infonce / infonce_with_grad: f(p_m, k_m, groups_m, tau, eps, offset) -> 3 tensors, stacked along a new leading axis.
template <typename F>
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(const F& f, const at::Tensor& p, const at::Tensor& k,
                                                       const std::optional<at::Tensor>& groups, double tau,
                                                       double eps, std::optional<int64_t> offset) {
  check(p, k, groups, offset);
  return over_members(p.size(0), [&](int64_t m) {
    return f(p.select(0, m), k.select(0, m), member_groups(groups, m), tau, eps, offset);
  });
}

// infonce_backward: grad_loss (M,), lse_all / lse_pos (M, B).
template <typename F>
std::tuple<at::Tensor, at::Tensor> backward(const F& f, const at::Tensor& grad_loss, const at::Tensor& p,
                                            const at::Tensor& k, const std::optional<at::Tensor>& groups,
                                            const at::Tensor& lse_all, const at::Tensor& lse_pos, double tau,
                                            double eps, std::optional<int64_t> offset) {
  check(p, k, groups, offset);
  const int64_t M = p.size(0);
  TORCH_CHECK(grad_loss.numel() == M, "mclcore.infonce_backward: member-stacked p needs grad_loss of shape (M,) = (",
              M, ",), got ", grad_loss.sizes());
  for (const at::Tensor* t : {&lse_all, &lse_pos})
    TORCH_CHECK(t->dim() == 2 && t->size(0) == M, "mclcore.infonce_backward: member-stacked p needs lse_all/lse_pos "
                "of shape (M, B) = (", M, ", ", p.size(1), "), got ", t->sizes());
  const at::Tensor g = grad_loss.reshape({M});
  return over_members(M, [&](int64_t m) {
    return f(g.select(0, m), p.select(0, m), k.select(0, m), member_groups(groups, m), lse_all.select(0, m),
             lse_pos.select(0, m), tau, eps, offset);
  });
}

}  // namespace mclcore::infonce_members
