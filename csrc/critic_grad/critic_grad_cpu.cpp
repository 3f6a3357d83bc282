// CPU kernels of mclcore::critic_grad and mclcore::critic_grad_backward (docs/DESIGN.md §2.2).
//
// Critic: c(v) = w_L . h_{H-1} + b_L,  h_l = s(a_l),  a_0 = W_0 v + b_0,  a_l = W_l h_{l-1} + b_l  (H hidden layers).
// Forward: grad_v c = delta_0 W_0 with delta_l = m_l * s'(a_l), m_{H-1} = w_L, m_l = delta_{l+1} W_{l+1}.
//
// Backward (upstream G = dLoss/d(grad_v c), (B, dv)) is reverse-over-reverse written out by hand: first up the
// gradient chain (d delta_l -> d m_l, and the s'' term of d a_l), then down the forward chain (d a_l -> dW_l, db_l,
// d h_{l-1}). It does the same GEMMs as autograd with create_graph=True (8.1 units of B*h*h at the paper's sizes;
// a forward-mode-tangent formulation we tried first needed 10.5 and was slower), but no graph, no recomputation:
// the forward stores h_l, s'(a_l), s''(a_l) and m_l in one workspace (4 B sum(h_l) values, 2 MiB at B = 256 with
// two 256-wide layers) that the backward reads. The workspace's memory is reused from call to call (see
// workspace_empty): from 32 MiB on (B >= 4096 with those layers) glibc serves a fresh block with fresh pages from
// the kernel on every call (its mmap threshold stops adapting at 32 MiB), and faulting them in doubled the forward's
// time at B = 4096 (29.8 vs 14.9 ms with MALLOC_MMAP_THRESHOLD_=1e9 set; 2-core AMD EPYC dev VM, 2026-11).
//
// Both kernels walk the batch in row blocks, one chunk of rows per worker (see for_row_blocks). Measured on the
// 2-core AMD EPYC dev VM (2026-11) against the version that ran each ATen op over the whole batch with ATen's threading inside
// (bench_critic_grad.py at ac79704 and 8df0aa0): B = 256 forward 0.82 -> 0.78 ms, forward+backward 2.68 -> 2.47 ms;
// B = 4096 forward 12.1 -> 11.1 ms, forward+backward 35.2 -> 31.8 ms. What is left is the matrix products:
// `perf` puts about 80% of a one-thread forward+backward at B = 256 in MKL's sgemm (272 MFLOP at ~78 GFLOP/s).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../parallel.h"
#include "../simd.h"

#include <algorithm>
#include <string>
#include <vector>

namespace mclcore {
namespace {

enum class Act { GELU, RELU, SILU, TANH, SOFTPLUS };

Act parse_act(c10::string_view name) {
  std::string s(name);
  if (s == "gelu") return Act::GELU;
  if (s == "relu") return Act::RELU;
  if (s == "silu") return Act::SILU;
  if (s == "tanh") return Act::TANH;
  if (s == "softplus") return Act::SOFTPLUS;
  TORCH_CHECK(false, "critic_grad: activation must be one of gelu, relu, silu, tanh, softplus; got '", s, "'");
}

// ---------------------------------------------------------------------------------------------------------------
// Activations: s(a), s'(a), s''(a) into h, s1, s2.
//
// float32 GELU, ReLU and SiLU run as one fused pass over a (vector extensions of csrc/simd.h, AVX2 and baseline
// builds): measured on the 2-core AMD EPYC dev VM (2026-11) at B = 256, width 256, the chain of ATen kernels below took ~0.3 ms per
// layer (13 kernels, 6 temporaries; erf alone 0.10 ms on one core), and it made the op's forward slower than the
// autograd reference's (1.1 vs 1.0 ms). float64 (the accuracy path: tests, gradcheck), tanh and softplus keep ATen's
// kernels (exact erf; tanh and log1p have no cheap vector form that keeps float32's relative accuracy near 0).

using mclcore::simd::exp_t;

MCL_INLINE float vexp(float x) { return exp_t(x); }
#if MCL_VEC
MCL_INLINE mclcore::simd::v8f vexp(mclcore::simd::v8f x) { return mclcore::simd::Vec<mclcore::simd::v8f>::exp(x); }
MCL_INLINE mclcore::simd::v4f vexp(mclcore::simd::v4f x) { return mclcore::simd::Vec<mclcore::simd::v4f>::exp(x); }
#endif

// Each eval works lane by lane on a float or a float vector V (same arithmetic for the vector body and its tail).
struct Gelu {
  // Exact (erf) GELU, as nn.GELU(): s = x Phi, s' = Phi + x phi, s'' = phi (2 - x^2), with one exp per element:
  // e = exp(-x^2 / 2) gives phi = e / sqrt(2 pi), and Phi(-|x|) = erfc(|x| / sqrt 2) / 2 = t P(t) e / 2 with
  // t = 1 / (1 + p |x| / sqrt 2) (Abramowitz & Stegun 7.1.26, the formula of ATen's AVX2 erf). Max |Phi error|
  // 7e-8 and GELU error 2e-7 over [-12, 12] (float64 evaluation of the formula vs scipy's ndtr). Phi of negative
  // x is the product itself rather than 1 + erf, so the negative tail keeps its relative accuracy (3% at x = -12,
  // where float32 1 + erf has none).
  template <typename V>
  static MCL_INLINE void eval(V x, V& h, V& s1, V& s2) {
    const V x2 = x * x;
    const V e = vexp(x2 * -0.5f);
    const V phi = e * 0.39894228040143267794f;
    const V ax = x < 0.0f ? -x : x;
    const V t = 1.0f / (ax * (0.3275911f * 0.70710678118654752f) + 1.0f);
    const V P = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
    const V tail = P * e * 0.5f;  // Phi(-|x|)
    const V Phi = x < 0.0f ? tail : 1.0f - tail;
    h = x * Phi;
    s1 = Phi + x * phi;
    s2 = phi * (2.0f - x2);
  }
};

struct Relu {  // s' = [x > 0] (0 at 0, as autograd's threshold_backward), s'' = 0; NaN stays NaN as in clamp_min
  template <typename V>
  static MCL_INLINE void eval(V x, V& h, V& s1, V& s2) {
    const V zero = V{};
    h = x < 0.0f ? zero : x;
    s1 = x > 0.0f ? zero + 1.0f : zero;
    s2 = zero;
  }
};

struct Silu {  // sg = 1 / (1 + e^-x), 1 - sg = e^-x sg (no cancellation); s' = sg (1 + x (1 - sg)),
               // s'' = sg (1 - sg) (2 + x (1 - 2 sg))
  template <typename V>
  static MCL_INLINE void eval(V x, V& h, V& s1, V& s2) {
    const V e = vexp(-x);
    const V sg = 1.0f / (1.0f + e);
    const V om = e * sg;
    h = x * sg;
    s1 = sg * (1.0f + x * om);
    s2 = sg * om * (2.0f + x * (om - sg));
  }
};

template <typename A, typename V>
MCL_INLINE void act_body(const float* a, float* h, float* s1, float* s2, int64_t n) {
  int64_t j = 0;
#if MCL_VEC
  using K = mclcore::simd::Vec<V>;
  for (; j + K::L <= n; j += K::L) {
    V vh, v1, v2;
    A::eval(K::load(a + j), vh, v1, v2);
    K::store(h + j, vh);
    K::store(s1 + j, v1);
    K::store(s2 + j, v2);
  }
#endif
  for (; j < n; ++j) A::eval(a[j], h[j], s1[j], s2[j]);
}

#define MCL_ACT_ENTRIES(SUFFIX, ATTR, V)                                                                 \
  ATTR void gelu_##SUFFIX(const float* a, float* h, float* s1, float* s2, int64_t n) {                  \
    act_body<Gelu, V>(a, h, s1, s2, n);                                                                  \
  }                                                                                                      \
  ATTR void relu_##SUFFIX(const float* a, float* h, float* s1, float* s2, int64_t n) {                  \
    act_body<Relu, V>(a, h, s1, s2, n);                                                                  \
  }                                                                                                      \
  ATTR void silu_##SUFFIX(const float* a, float* h, float* s1, float* s2, int64_t n) {                  \
    act_body<Silu, V>(a, h, s1, s2, n);                                                                  \
  }

#if MCL_VEC
#if MCL_X86_DISPATCH
MCL_ACT_ENTRIES(avx2, MCL_ATTR_AVX2, mclcore::simd::v8f)
#endif
MCL_ACT_ENTRIES(base, MCL_ATTR_BASE, mclcore::simd::v4f)
#else
MCL_ACT_ENTRIES(base, , float)
#endif

// The ATen path: float64, tanh, softplus.
void eval_act_aten(Act act, const at::Tensor& a, at::Tensor& h, at::Tensor& s1, at::Tensor& s2) {
  switch (act) {
    case Act::GELU: {  // exact (erf) GELU, as nn.GELU(): s' = Phi + x phi, s'' = phi (2 - x^2)
      at::Tensor x2 = a * a;
      at::Tensor phi = at::exp(x2 * -0.5).mul_(0.39894228040143267794);
      at::Tensor Phi = at::erf(a * 0.70710678118654752440).add_(1.0).mul_(0.5);
      at::mul_out(h, a, Phi);
      at::addcmul_out(s1, Phi, a, phi);
      at::mul_out(s2, phi, x2.neg_().add_(2.0));
      break;
    }
    case Act::RELU:
      at::clamp_min_out(h, a, 0.0);
      s1.copy_(a > 0);
      s2.zero_();
      break;
    case Act::SILU: {  // s' = sg (1 + x (1 - sg)), s'' = sg (1 - sg) (2 + x (1 - 2 sg))
      at::Tensor sg = at::sigmoid(a);
      at::Tensor one_m = 1.0 - sg;
      at::mul_out(h, a, sg);
      at::mul_out(s1, sg, (a * one_m).add_(1.0));
      at::mul_out(s2, sg * one_m, (a * (1.0 - 2.0 * sg)).add_(2.0));
      break;
    }
    case Act::TANH:
      at::tanh_out(h, a);
      at::mul_out(s1, h, h).neg_().add_(1.0);
      at::mul_out(s2, h, s1).mul_(-2.0);
      break;
    case Act::SOFTPLUS: {  // as nn.Softplus (beta 1, threshold 20): linear above 20, so s'' = 0 there
      at::Tensor sg = at::sigmoid(a);
      at::Tensor linear = a > 20.0;
      at::softplus_out(h, a, 1.0, 20.0);
      at::mul_out(s2, sg, 1.0 - sg).masked_fill_(linear, 0.0);
      s1.copy_(sg).masked_fill_(linear, 1.0);
      break;
    }
  }
}

// Fused float32 pass, split over threads in chunks of >= 16k elements (~10 us of work each with AVX2).
bool eval_act_fused(Act act, const at::Tensor& a, at::Tensor& h, at::Tensor& s1, at::Tensor& s2) {
  if (a.scalar_type() != at::kFloat || (act != Act::GELU && act != Act::RELU && act != Act::SILU)) return false;
  TORCH_INTERNAL_ASSERT(a.is_contiguous() && h.is_contiguous() && s1.is_contiguous() && s2.is_contiguous());
  const float* ap = a.const_data_ptr<float>();
  float* hp = h.mutable_data_ptr<float>();
  float* p1 = s1.mutable_data_ptr<float>();
  float* p2 = s2.mutable_data_ptr<float>();
  at::parallel_for(0, a.numel(), 16384, [&](int64_t b, int64_t e) {
    const int64_t n = e - b;
    switch (act) {
      case Act::GELU: MCL_DISPATCH(gelu, ap + b, hp + b, p1 + b, p2 + b, n); break;
      case Act::RELU: MCL_DISPATCH(relu, ap + b, hp + b, p1 + b, p2 + b, n); break;
      default: MCL_DISPATCH(silu, ap + b, hp + b, p1 + b, p2 + b, n); break;
    }
  });
  return true;
}

// a: (B, n) contiguous; h, s1, s2: contiguous (B, n) views of the workspace.
void eval_act(Act act, const at::Tensor& a, at::Tensor& h, at::Tensor& s1, at::Tensor& s2) {
  if (!eval_act_fused(act, a, h, s1, s2)) eval_act_aten(act, a, h, s1, s2);
}

void check_inputs(const at::Tensor& v, at::TensorList weights, at::TensorList biases) {
  TORCH_CHECK(v.dim() == 2, "critic_grad: v must be (B, dv), got ", v.sizes());
  TORCH_CHECK(v.scalar_type() == at::kFloat || v.scalar_type() == at::kDouble,
              "critic_grad: v must be float32 or float64, got ", v.scalar_type());
  const int64_t L = static_cast<int64_t>(weights.size());
  TORCH_CHECK(L >= 2, "critic_grad: need at least 2 linear layers (one hidden), got ", L);
  TORCH_CHECK(static_cast<int64_t>(biases.size()) == L, "critic_grad: weights and biases must have equal length");
  int64_t in = v.size(1);
  for (int64_t l = 0; l < L; ++l) {
    const auto& W = weights[l];
    TORCH_CHECK(W.dim() == 2 && W.size(1) == in, "critic_grad: weights[", l, "] must be (out, ", in, "), got ",
                W.sizes());
    TORCH_CHECK(W.scalar_type() == v.scalar_type() && biases[l].scalar_type() == v.scalar_type(),
                "critic_grad: weights[", l, "]/biases[", l, "] dtype must match v");
    TORCH_CHECK(W.device() == v.device() && biases[l].device() == v.device(),
                "critic_grad: all tensors must be on v's device");
    TORCH_CHECK(biases[l].dim() == 1 && biases[l].size(0) == W.size(0), "critic_grad: biases[", l,
                "] must be (", W.size(0), "), got ", biases[l].sizes());
    in = W.size(0);
  }
  TORCH_CHECK(in == 1, "critic_grad: the last layer must have one output (a scalar critic), got ", in);
}

// Views of the workspace: for hidden layer l (width n_l), four contiguous (B, n_l) blocks h, s1, s2, m.
struct Workspace {
  std::vector<at::Tensor> h, s1, s2, m;
};

// The workspace's memory block, kept per thread and handed out again once nothing uses it: glibc gives a block of
// 32 MiB or more fresh pages from the kernel on every allocation, and faulting them in cost as much as the forward's
// arithmetic at B = 4096 (above). The block is reused only when no tensor holds it any more (the cache's reference
// is the only one: the previous workspace was freed by its backward, or was never saved) and it has the size needed;
// otherwise a new block is allocated and cached in its place. Each call gets a fresh tensor over the block, so no
// autograd state carries over between calls. Cost: one idle workspace per thread that ran the op, 2 MiB at
// B = 256 with two 256-wide layers (32 MiB at B = 4096), until the thread ends.
at::Tensor workspace_empty(int64_t numel, const at::TensorOptions& options) {
  thread_local c10::Storage spare;
  const size_t nbytes = static_cast<size_t>(numel) * options.dtype().itemsize();
  if (!spare || spare.use_count() != 1 || spare.nbytes() != nbytes) {
    spare = c10::Storage();  // a cached block of the wrong size is freed before the new one is allocated
    spare = at::empty({numel}, options).storage();
  }
  c10::Storage held = spare;  // the tensor's deleter holds the block: use_count() > 1 while any view of it lives
  return at::from_blob(held.mutable_data(), {numel}, [held](void*) {}, options);
}

int64_t workspace_numel(int64_t B, at::TensorList weights) {
  int64_t total = 0;
  for (size_t l = 0; l + 1 < weights.size(); ++l) total += weights[l].size(0);
  return 4 * B * total;
}

Workspace views(const at::Tensor& saved, int64_t B, at::TensorList weights) {
  TORCH_CHECK(saved.dim() == 1 && saved.numel() == workspace_numel(B, weights) && saved.is_contiguous(),
              "critic_grad_backward: saved must be the workspace returned by critic_grad");
  Workspace w;
  int64_t off = 0;
  auto take = [&](int64_t n) {
    at::Tensor t = saved.narrow(0, off, B * n).view({B, n});
    off += B * n;
    return t;
  };
  for (size_t l = 0; l + 1 < weights.size(); ++l) {
    const int64_t n = weights[l].size(0);
    w.h.push_back(take(n));
    w.s1.push_back(take(n));
    w.s2.push_back(take(n));
    w.m.push_back(take(n));
  }
  return w;
}

// Row blocks. Every row of the batch is independent until the parameter gradients sum over rows, so both kernels
// split the batch into one chunk of consecutive rows per worker and walk each chunk in blocks of <= kBlockRows rows,
// every step of the chain on a block before the next block: the block's activations, derivatives and temporaries
// (128 x 256 floats = 128 KiB each at the paper's widths) stay in the core's L2 between the steps, the matrix
// products run single-threaded inside the worker (MKL sees the OpenMP region), and a call opens one parallel region
// instead of one per ATen op. The parameter gradients are summed per chunk (chunk 0 into the outputs, the others
// into their own buffers, added at the end: workers - 1 extra copies of the parameters' size). A batch under
// 2 kMinChunkRows rows runs as one chunk on the calling thread, with ATen's own threading inside each op.
constexpr int64_t kBlockRows = 128;
constexpr int64_t kMinChunkRows = 64;

int64_t n_chunks(int64_t B) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), B / kMinChunkRows));
}

// f(chunk, r0, r, first): rows [r0, r0 + r) of chunk `chunk`; first: the chunk's first block.
template <typename F>
void for_row_blocks(int64_t B, int64_t nchunks, const F& f) {
  auto run = [&](int64_t c) {
    const int64_t c0 = c * B / nchunks, c1 = (c + 1) * B / nchunks;
    for (int64_t r0 = c0; r0 < c1; r0 += kBlockRows) f(c, r0, std::min(kBlockRows, c1 - r0), r0 == c0);
  };
  if (nchunks == 1) {
    run(0);
    return;
  }
  parallel_for_below_autograd(0, nchunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) run(c);
  });
}

// out = a b, into a view (at::mm_out takes no temporaries).
void mm_into(at::Tensor out, const at::Tensor& a, const at::Tensor& b) { at::mm_out(out, a, b); }

// out = column sums of x (B rows summed) on the first block, out += them afterwards; out: (n,) or (1, n).
void sum_acc(at::Tensor out, const at::Tensor& x, bool first) {
  at::Tensor s = x.sum(0, /*keepdim=*/out.dim() == 2);
  if (first) {
    out.copy_(s);
  } else {
    out.add_(s);
  }
}

// One critic (checked inputs): grad_v c into gv (B, dv), the workspace into saved (both contiguous, written whole).
void critic_grad_into(const at::Tensor& v_in, at::TensorList weights, at::TensorList biases, Act act,
                      const at::Tensor& saved, at::Tensor gv) {
  const at::Tensor v = v_in.contiguous();
  const int64_t B = v.size(0);
  const int64_t H = static_cast<int64_t>(weights.size()) - 1;
  const Workspace w = views(saved, B, weights);

  for_row_blocks(B, n_chunks(B), [&](int64_t, int64_t r0, int64_t r, bool) {
    auto rows = [&](const at::Tensor& t) { return t.narrow(0, r0, r); };
    at::Tensor x = rows(v);
    for (int64_t l = 0; l < H; ++l) {
      at::Tensor h = rows(w.h[l]), s1 = rows(w.s1[l]), s2 = rows(w.s2[l]);
      eval_act(act, at::addmm(biases[l], x, weights[l].t()), h, s1, s2);  // a_l: (r, n_l)
      x = h;
    }
    // Up the gradient chain: m_{H-1} = w_L, delta_l = m_l s'(a_l), m_{l-1} = delta_l W_l, grad_v c = delta_0 W_0.
    rows(w.m[H - 1]).copy_(weights[H].expand({r, weights[H].size(1)}));
    at::Tensor delta = rows(w.m[H - 1]) * rows(w.s1[H - 1]);
    for (int64_t l = H - 1; l >= 1; --l) {
      mm_into(rows(w.m[l - 1]), delta, weights[l]);  // (r, n_{l-1})
      delta = rows(w.m[l - 1]) * rows(w.s1[l - 1]);
    }
    mm_into(rows(gv), delta, weights[0]);
  });
}

// One critic (checked inputs): dL/dv into gv (B, dv), dL/dW_l into gW_out[l], dL/db_l into gb_out[l] (contiguous,
// written whole: chunk 0 sums straight into them). The member-stacked entry point passes member m's views of its
// stacked outputs, so no per-member result is allocated and copied into the stack (7 copies per member before:
// ~1.4 ms of copy_ self time in torch.profiler, of a 60 ms stacked MCL forward+backward at M = 10, B = 256, 1
// thread; 2-core AMD EPYC dev VM, 2026-12-06).
void critic_grad_backward_into(const at::Tensor& grad_out_in, const at::Tensor& v_in, at::TensorList weights,
                               at::TensorList biases, const at::Tensor& saved, at::Tensor gv,
                               const std::vector<at::Tensor>& gW_out, const std::vector<at::Tensor>& gb_out) {
  const at::Tensor v = v_in.contiguous();
  const at::Tensor G = grad_out_in.to(v.scalar_type()).contiguous();
  const int64_t B = v.size(0);
  const int64_t H = static_cast<int64_t>(weights.size()) - 1;
  const Workspace w = views(saved, B, weights);
  if (B == 0) {
    for (int64_t l = 0; l <= H; ++l) {
      gW_out[l].zero_();
      gb_out[l].zero_();
    }
    return;
  }

  // Per-chunk sums of the parameter gradients; chunk 0 sums straight into the outputs. gb[H] stays 0: grad_v c does
  // not depend on b_L.
  const int64_t nchunks = n_chunks(B);
  std::vector<std::vector<at::Tensor>> gW(nchunks), gb(nchunks);
  gW[0] = gW_out;
  gb[0] = gb_out;
  gb[0][H].zero_();
  for (int64_t c = 1; c < nchunks; ++c) {
    for (int64_t l = 0; l <= H; ++l) {
      gW[c].push_back(at::empty(weights[l].sizes(), v.options()));
      gb[c].push_back(l < H ? at::empty(biases[l].sizes(), v.options()) : at::zeros(biases[l].sizes(), v.options()));
    }
  }
  for_row_blocks(B, nchunks, [&](int64_t c, int64_t r0, int64_t r, bool first) {
    auto rows = [&](const at::Tensor& t) { return t.narrow(0, r0, r); };
    const at::Tensor Gr = rows(G);  // (r, dv)
    std::vector<at::Tensor> da(H);
    // Up the gradient chain: grad_v c = delta_0 W_0, delta_l = m_l s'(a_l), m_l = delta_{l+1} W_{l+1}.
    at::Tensor delta = rows(w.m[0]) * rows(w.s1[0]);
    mm_acc(gW[c][0], delta.t(), Gr, first);       // (n_0, dv)
    at::Tensor ddelta = at::mm(Gr, weights[0].t());  // (r, n_0)
    for (int64_t l = 0; l < H; ++l) {
      at::Tensor dm = ddelta * rows(w.s1[l]);
      da[l] = ddelta.mul_(rows(w.m[l])).mul_(rows(w.s2[l]));  // the s'' term of d a_l
      if (l + 1 < H) {
        delta = rows(w.m[l + 1]) * rows(w.s1[l + 1]);
        mm_acc(gW[c][l + 1], delta.t(), dm, first);  // (n_{l+1}, n_l)
        ddelta = at::mm(dm, weights[l + 1].t());     // (r, n_{l+1})
      } else {
        sum_acc(gW[c][H], dm, first);  // d w_L: (1, n_{H-1})
      }
    }
    // Down the forward chain: a_l = W_l h_{l-1} + b_l, h_l = s(a_l). Every gW[c][l] with l < H has its first term.
    for (int64_t l = H - 1; l >= 0; --l) {
      const at::Tensor x = l == 0 ? rows(v) : rows(w.h[l - 1]);
      sum_acc(gb[c][l], da[l], first);
      gW[c][l].addmm_(da[l].t(), x);
      if (l == 0) {
        mm_into(rows(gv), da[0], weights[0]);  // (r, dv)
      } else {
        da[l - 1].addcmul_(at::mm(da[l], weights[l]), rows(w.s1[l - 1]));  // d h_{l-1} s'(a_{l-1})
      }
    }
  });
  for (int64_t c = 1; c < nchunks; ++c) {
    for (int64_t l = 0; l <= H; ++l) {
      gW[0][l].add_(gW[c][l]);
      gb[0][l].add_(gb[c][l]);
    }
  }
}

// Empty outputs of the backward: dL/dv of v's shape, dL/dW_l and dL/db_l of the parameters' (contiguous).
std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> backward_outputs(
    const at::Tensor& v, at::TensorList weights, at::TensorList biases) {
  std::vector<at::Tensor> gW, gb;
  for (size_t l = 0; l < weights.size(); ++l) {
    gW.push_back(at::empty(weights[l].sizes(), v.options()));
    gb.push_back(at::empty(biases[l].sizes(), v.options()));
  }
  return {at::empty(v.sizes(), v.options()), gW, gb};
}

// ---------------------------------------------------------------------------------------------------------------
// Entry points. Unstacked: v (B, dv), weights[l] (out_l, in_l), biases[l] (out_l,). Member-stacked (a leading member
// axis on every tensor: M independent critics, e.g. one per seed of a stack of models): v (M, B, dv), weights[l]
// (M, out_l, in_l), biases[l] (M, out_l); grad_v c is (M, B, dv) and the workspace M unstacked workspaces end to
// end, member m's at [m n, (m + 1) n). The members run one after the other through the unstacked kernel (each with
// its own row-block parallelism), on views of the stacked tensors: the arithmetic of M separate calls (MKL may round
// the last bit differently on a view at another memory alignment: 1e-16 seen in float64).

bool stacked(const at::Tensor& v) { return v.dim() == 3; }

// Member m's views of the stacked weights or biases.
std::vector<at::Tensor> member_list(at::TensorList ts, int64_t m) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(t.select(0, m));
  return out;
}

// Stacked inputs: leading axes agree, then member 0's views pass the unstacked checks (all members share shapes).
void check_stacked(const at::Tensor& v, at::TensorList weights, at::TensorList biases) {
  const int64_t M = v.size(0);
  TORCH_CHECK(static_cast<int64_t>(biases.size()) == static_cast<int64_t>(weights.size()),
              "critic_grad: weights and biases must have equal length");
  for (size_t l = 0; l < weights.size(); ++l) {
    TORCH_CHECK(weights[l].dim() == 3 && weights[l].size(0) == M, "critic_grad: member-stacked v (M, B, dv) with M = ",
                M, " needs weights[", l, "] of shape (M, out, in), got ", weights[l].sizes());
    TORCH_CHECK(biases[l].dim() == 2 && biases[l].size(0) == M, "critic_grad: member-stacked v (M, B, dv) with M = ",
                M, " needs biases[", l, "] of shape (M, out), got ", biases[l].sizes());
  }
  TORCH_CHECK(M >= 1, "critic_grad: member-stacked v needs at least one member, got shape ", v.sizes());
  check_inputs(v.select(0, 0), member_list(weights, 0), member_list(biases, 0));
}

std::tuple<at::Tensor, at::Tensor> critic_grad_cpu(const at::Tensor& v, at::TensorList weights,
                                                   at::TensorList biases, c10::string_view activation) {
  const Act act = parse_act(activation);
  if (!stacked(v)) {
    check_inputs(v, weights, biases);
    const int64_t B = v.size(0);
    at::Tensor saved = workspace_empty(workspace_numel(B, weights), v.options());
    at::Tensor gv = at::empty({B, v.size(1)}, v.options());  // grad_v c: (B, dv)
    critic_grad_into(v, weights, biases, act, saved, gv);
    return {gv, saved};
  }
  TORCH_CHECK(v.dim() == 3, "critic_grad: v must be (B, dv) or member-stacked (M, B, dv), got ", v.sizes());
  check_stacked(v, weights, biases);
  const int64_t M = v.size(0), B = v.size(1);
  const std::vector<at::Tensor> w0 = member_list(weights, 0);
  const int64_t n = workspace_numel(B, w0);
  at::Tensor saved = workspace_empty(M * n, v.options());
  at::Tensor gv = at::empty({M, B, v.size(2)}, v.options());
  for (int64_t m = 0; m < M; ++m)
    critic_grad_into(v.select(0, m), member_list(weights, m), member_list(biases, m), act, saved.narrow(0, m * n, n),
                     gv.select(0, m));
  return {gv, saved};
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> critic_grad_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& v, at::TensorList weights, at::TensorList biases,
    const at::Tensor& saved, c10::string_view activation) {
  parse_act(activation);
  TORCH_CHECK(grad_out.sizes() == v.sizes(), "critic_grad_backward: grad_out must be ", v.sizes(), ", got ",
              grad_out.sizes());
  if (!stacked(v)) {
    check_inputs(v, weights, biases);
    auto out = backward_outputs(v, weights, biases);
    critic_grad_backward_into(grad_out, v, weights, biases, saved, std::get<0>(out), std::get<1>(out),
                              std::get<2>(out));
    return out;
  }
  TORCH_CHECK(v.dim() == 3, "critic_grad_backward: v must be (B, dv) or member-stacked (M, B, dv), got ", v.sizes());
  check_stacked(v, weights, biases);
  const int64_t M = v.size(0), B = v.size(1);
  const int64_t n = workspace_numel(B, member_list(weights, 0));
  TORCH_CHECK(saved.dim() == 1 && saved.numel() == M * n && saved.is_contiguous(),
              "critic_grad_backward: saved must be the workspace returned by critic_grad");
  auto out = backward_outputs(v, weights, biases);  // (M, ...) each; member m writes its views in place
  for (int64_t m = 0; m < M; ++m)
    critic_grad_backward_into(grad_out.select(0, m), v.select(0, m), member_list(weights, m), member_list(biases, m),
                              saved.narrow(0, m * n, n), std::get<0>(out).select(0, m),
                              member_list(std::get<1>(out), m), member_list(std::get<2>(out), m));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mclcore, CPU, m) {
  m.impl("critic_grad", &critic_grad_cpu);
  m.impl("critic_grad_backward", &critic_grad_backward_cpu);
}

}  // namespace mclcore
