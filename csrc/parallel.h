// Pieces the CPU kernels share for work split over threads (csrc/infonce, csrc/critic_grad).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>

#include <cstdint>

namespace mclcore {

// at::parallel_for whose workers run their ATen calls below autograd, as the kernel's calling thread does: dispatch
// keys are thread-local and OpenMP workers do not inherit the caller's state, so without the guard every product in
// a worker would go through autograd (and refuse an out= product with weights that require grad).
template <typename F>
void parallel_for_below_autograd(int64_t begin, int64_t end, int64_t grain, const F& f) {
  at::parallel_for(begin, end, grain, [&](int64_t b, int64_t e) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    f(b, e);
  });
}

// out = a b on the first contribution, out += a b afterwards (so the accumulators need no zero fill). out is taken
// by value so that a view (narrow, t) can be passed.
inline void mm_acc(at::Tensor out, const at::Tensor& a, const at::Tensor& b, bool first) {
  if (first) {
    at::mm_out(out, a, b);
  } else {
    out.addmm_(a, b);
  }
}

}  // namespace mclcore
