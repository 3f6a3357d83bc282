// CPU kernels of mclcore::comp_contrast and mclcore::comp_contrast_backward: the compositional contrast of an MLP
// generator and its exact gradient (docs/DESIGN.md §2.5).
//
// For x = g(z) with Jacobian J = dx/dz (dx x dz), per sample
//   C(z) = sum_n sum_{i<j} |J_ni| |J_nj| = 1/2 sum_n [(sum_i |J_ni|)^2 - sum_i J_ni^2],   Q(z) = sum_{n,i} J_ni^2.
// The kernels evaluate C as sum_n sum_j |J_nj| (sum_{i<j} |J_ni|) (a sum of non-negative terms: no cancellation),
// and dC/dJ_nj = sign(J_nj) sum_{i != j} |J_ni| as a prefix plus a suffix sum (again no cancellation);
// dQ/dJ = 2 J. The wrapper uses Q for the scale-free normalisation C / Q.
//
// Forward mode through the layers, one stack of rows per sample: row 0 the value, rows 1..dz the tangents d./dz_i,
//   P_l = X_{l-1} W_l^T (+ b_l on the value row; + in_bias for l = 0),  X_{-1} = [z; I_dz],
//   X_l = [s(a_l); s'(a_l) * A_l]   (a_l, A_l: value and tangent rows of P_l),
// so every layer after the first is ONE GEMM over all (1 + dz) rows of a block of samples; the first layer's
// tangent rows are the columns of W_0. J^T = the tangent rows of the last stack (X, or P without a final
// activation).
//
// Backward (upstream gC, gQ per sample): reverse mode through that same computation, written out by hand:
//   dJ = gC sign(J) (S - |J|) + 2 gQ J, the adjoint of the last layer's tangent rows;
//   activation:  dA = s' dT,   da = s' dh + s'' sum_i A_i dT_i   (the s'' term: the tangent depends on a)
//   linear:      dW_l += dP_l^T X_{l-1} (one GEMM over all rows), db_l += sum of the value rows of dP_l,
//                dX_{l-1} = dP_l W_l (one GEMM), and at l = 0: dz = da_0 W_0, d in_bias = da_0,
//                dW_0 += da_0^T z + sum_b dA_0[b]^T (the tangent rows of X_{-1} are the identity).
// Three GEMMs per layer after the first (forward, weight gradient, input adjoint): the arithmetic of autograd
// through a forward-mode Jacobian, without the graph. Nothing is recomputed: the forward stores, per layer, the
// pre-activation stack P_l and, for layers with an activation, the post-activation stack X_l and s'(a_l), s''(a_l)
// in one workspace (B ((1 + dz) sum_l h_l + sum_{activated} ((1 + dz) h_l + 2 h_l)) values: 3.4 MiB at B = 256,
// dz = 10 and three 64-wide float32 layers), which the backward reads.
//
// Parallelism: the batch is split into one chunk of samples per worker (at most one per thread, at least
// kMinChunkRows stack rows each), and each chunk is walked in blocks of about kBlockRows stack rows, every layer on
// a block before the next block (the block's stacks stay in L2; the GEMMs run single-threaded inside the worker,
// since MKL does not nest in an active OpenMP region). Parameter gradients are summed per chunk and added at the end,
// so their float rounding depends on the thread count, as MKL's products already do.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../parallel.h"
#include "../mlp_activation.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace mclcore {
namespace {

using mlp::Act;

Act parse_act(const std::string& s) { return mlp::parse_act(s, "comp_contrast"); }

// Piecewise-linear activations have s'' = 0: the backward skips the s'' term for them.
bool curved(Act a) { return !(a == Act::Relu || a == Act::LeakyRelu || a == Act::Identity); }

// sigma(a) and 1 - sigma(a) without cancellation, in the working type U (float for float32 inputs: these run once
// per unit and sample, and float math keeps them well under the GEMMs' time).
template <typename U>
inline void sigmoid_pair(U a, U& sg, U& om) {
  const U e = std::exp(-std::fabs(a));
  const U inv = U(1) / (U(1) + e);
  sg = a >= 0 ? inv : e * inv;
  om = a >= 0 ? e * inv : inv;
}

// s(a), s'(a), s''(a). p: softplus beta, or the (smooth) leaky slope.
template <typename U>
inline void act_eval(Act act, U p, U a, U& s0, U& s1, U& s2) {
  switch (act) {
    case Act::Tanh: {
      const U t = std::tanh(a), d = U(1) - t * t;
      s0 = t, s1 = d, s2 = U(-2) * t * d;
      return;
    }
    case Act::Sigmoid: {
      U sg, om;
      sigmoid_pair(a, sg, om);
      const U d1 = sg * om;
      s0 = sg, s1 = d1, s2 = d1 * (om - sg);
      return;
    }
    case Act::Softplus: {  // (1/beta) log(1 + exp(beta a)), no threshold
      const U ba = p * a;
      U sg, om;
      sigmoid_pair(ba, sg, om);
      s0 = (std::max(ba, U(0)) + std::log1p(std::exp(-std::fabs(ba)))) / p;
      s1 = sg, s2 = p * sg * om;
      return;
    }
    case Act::SmoothLeaky: {  // p a + (1 - p) softplus(a)
      U sg, om;
      sigmoid_pair(a, sg, om);
      const U q = U(1) - p;
      s0 = p * a + q * (std::max(a, U(0)) + std::log1p(std::exp(-std::fabs(a))));
      s1 = p + q * sg, s2 = q * sg * om;
      return;
    }
    case Act::Gelu: {  // a Phi(a), exact erf form (nn.GELU())
      const U Phi = U(0.5) * std::erfc(-a * U(0.70710678118654752440));
      const U phi = U(0.39894228040143267794) * std::exp(U(-0.5) * a * a);
      s0 = a * Phi, s1 = Phi + a * phi, s2 = (U(2) - a * a) * phi;
      return;
    }
    case Act::Silu: {  // a sigma(a)
      U sg, om;
      sigmoid_pair(a, sg, om);
      const U d1 = sg * om;
      s0 = a * sg, s1 = sg + a * d1, s2 = U(2) * d1 + a * d1 * (om - sg);
      return;
    }
    case Act::Relu:  // derivative 0 at a = 0, as torch's relu backward
      s0 = a > 0 ? a : U(0), s1 = a > 0 ? U(1) : U(0), s2 = U(0);
      return;
    case Act::LeakyRelu:  // slope p at a <= 0, as torch's leaky_relu backward
      s0 = a > 0 ? a : p * a, s1 = a > 0 ? U(1) : p, s2 = U(0);
      return;
    case Act::Identity:
      s0 = a, s1 = U(1), s2 = U(0);
      return;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Arguments

struct Net {
  std::vector<at::Tensor> W, b;  // contiguous, detached
  std::vector<int64_t> width;    // h_l
  std::vector<Act> act;          // act[l], l < n_act
  std::vector<double> param;
  int64_t B = 0, dz = 0, dx = 0, L = 0, n_act = 0;
  at::Tensor z, in_bias;         // contiguous; in_bias undefined when absent
};

Net check_inputs(const char* op, const at::Tensor& z, at::TensorList weights, at::TensorList biases,
                 const std::optional<at::Tensor>& in_bias, at::ArrayRef<std::string> activations,
                 at::ArrayRef<double> act_params) {
  TORCH_CHECK(z.device().is_cpu(), op, ": z: expected a CPU tensor");
  TORCH_CHECK(z.dim() == 2, op, ": z: expected shape (B, dz), got ", z.sizes());
  TORCH_CHECK(z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble, op,
              ": z: expected float32 or float64, got ", z.scalar_type());
  Net n;
  n.B = z.size(0);
  n.dz = z.size(1);
  TORCH_CHECK(n.dz >= 1, op, ": z: expected dz >= 1, got shape ", z.sizes());
  n.L = static_cast<int64_t>(weights.size());
  TORCH_CHECK(n.L >= 1, op, ": weights: expected at least one layer");
  TORCH_CHECK(static_cast<int64_t>(biases.size()) == n.L, op, ": biases: expected ", n.L,
              " tensors (one per layer), got ", biases.size());
  n.n_act = static_cast<int64_t>(activations.size());
  TORCH_CHECK(n.n_act == n.L - 1 || n.n_act == n.L, op, ": activations: expected ", n.L - 1, " (hidden layers) or ",
              n.L, " (also on the output) entries, got ", n.n_act);
  TORCH_CHECK(static_cast<int64_t>(act_params.size()) == n.n_act, op, ": act_params: expected ", n.n_act,
              " entries (one per activation), got ", act_params.size());
  int64_t fan_in = n.dz;
  for (int64_t l = 0; l < n.L; ++l) {
    const at::Tensor& w = weights[l];
    const at::Tensor& b = biases[l];
    TORCH_CHECK(w.device() == z.device() && b.device() == z.device(), op, ": weights[", l, "], biases[", l,
                "]: expected CPU tensors (the device of z)");
    TORCH_CHECK(w.scalar_type() == z.scalar_type() && b.scalar_type() == z.scalar_type(), op, ": weights[", l,
                "], biases[", l, "]: expected dtype ", z.scalar_type(), " (that of z)");
    TORCH_CHECK(w.dim() == 2 && w.size(1) == fan_in, op, ": weights[", l, "]: expected shape (h, ", fan_in, "), got ",
                w.sizes());
    TORCH_CHECK(w.size(0) >= 1, op, ": weights[", l, "]: empty layer");
    TORCH_CHECK(b.dim() == 1 && b.size(0) == w.size(0), op, ": biases[", l, "]: expected shape (", w.size(0),
                "), got ", b.sizes());
    n.W.push_back(w.detach().contiguous());
    n.b.push_back(b.detach().contiguous());
    n.width.push_back(w.size(0));
    fan_in = w.size(0);
  }
  n.dx = fan_in;
  for (int64_t l = 0; l < n.n_act; ++l) {
    n.act.push_back(parse_act(std::string(activations[l])));
    n.param.push_back(act_params[l]);
    TORCH_CHECK(n.act.back() != Act::Softplus || act_params[l] > 0, op, ": act_params[", l,
                "]: softplus beta must be > 0, got ", act_params[l]);
  }
  if (in_bias.has_value() && in_bias->defined()) {
    const at::Tensor& t = *in_bias;
    TORCH_CHECK(t.device() == z.device(), op, ": in_bias: expected a CPU tensor (the device of z)");
    TORCH_CHECK(t.scalar_type() == z.scalar_type(), op, ": in_bias: expected dtype ", z.scalar_type(),
                " (that of z), got ", t.scalar_type());
    TORCH_CHECK(t.dim() == 2 && t.size(0) == n.B && t.size(1) == n.width[0], op, ": in_bias: expected shape (", n.B,
                ", ", n.width[0], "), got ", t.sizes());
    n.in_bias = t.detach().contiguous();
  }
  n.z = z.detach().contiguous();
  return n;
}

// ---------------------------------------------------------------------------------------------------------------
// Workspace: for layer l, P_l ((1 + dz) B x h_l); for l < n_act also X_l (same shape), s1_l and s2_l (B x h_l).
// Stack rows are sample-major: sample b owns rows [b (1 + dz), (b + 1)(1 + dz)), value first.

struct Views {
  std::vector<at::Tensor> P, X, s1, s2;  // 2-D views (rows x h_l)
};

int64_t workspace_numel(int64_t B, int64_t dz, const std::vector<int64_t>& width, int64_t n_act) {
  int64_t total = 0;
  for (size_t l = 0; l < width.size(); ++l) {
    total += (1 + dz) * B * width[l];
    if (static_cast<int64_t>(l) < n_act) total += (1 + dz) * B * width[l] + 2 * B * width[l];
  }
  return total;
}

Views views(const at::Tensor& saved, const Net& n) {
  Views v;
  int64_t off = 0;
  auto take = [&](int64_t rows, int64_t cols) {
    at::Tensor t = saved.narrow(0, off, rows * cols).view({rows, cols});
    off += rows * cols;
    return t;
  };
  const int64_t R = (1 + n.dz) * n.B;
  for (int64_t l = 0; l < n.L; ++l) {
    const int64_t h = n.width[l];
    v.P.push_back(take(R, h));
    if (l < n.n_act) {
      v.X.push_back(take(R, h));
      v.s1.push_back(take(n.B, h));
      v.s2.push_back(take(n.B, h));
    }
  }
  return v;
}

// ---------------------------------------------------------------------------------------------------------------
// Chunks and blocks (see the header).

constexpr int64_t kBlockRows = 512;
constexpr int64_t kMinChunkRows = 256;

int64_t n_chunks(int64_t B, int64_t dz) {
  const int64_t min_samples = std::max<int64_t>(1, kMinChunkRows / (1 + dz));
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), B / min_samples));
}

// f(chunk, b0, bs, first): samples [b0, b0 + bs) of chunk `chunk`; first: the chunk's first block.
template <typename F>
void for_blocks(int64_t B, int64_t dz, int64_t nchunks, const F& f) {
  const int64_t block = std::max<int64_t>(1, kBlockRows / (1 + dz));
  auto run = [&](int64_t c) {
    const int64_t c0 = c * B / nchunks, c1 = (c + 1) * B / nchunks;
    for (int64_t b0 = c0; b0 < c1; b0 += block) f(c, b0, std::min(block, c1 - b0), b0 == c0);
  };
  if (at::get_num_threads() == 1) {
    run(0);
    return;
  }
  // Always inside a parallel region of >= 2 tasks when torch has >= 2 threads, even for one chunk (the surplus task
  // does nothing): outside one, MKL splits each small GEMM over the threads, which on a loaded 2-core machine cost
  // milliseconds per product (the same effect as in csrc/mech_derivs/mech_derivs_cpu.cpp's run()).
  parallel_for_below_autograd(0, std::max<int64_t>(nchunks, 2), 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < std::min(e, nchunks); ++c) run(c);
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Forward

// Activation of layer l on the rows of samples [b0, b0 + bs): X = [s(a); s'(a) A], and s', s'' kept.
template <typename T>
void activate(const Net& n, const Views& v, int64_t l, int64_t b0, int64_t bs) {
  const int64_t h = n.width[l], dz = n.dz, S = 1 + dz;
  const Act act = n.act[l];
  const T prm = static_cast<T>(n.param[l]);
  const T* P = v.P[l].data_ptr<T>();
  T* X = v.X[l].data_ptr<T>();
  T* s1 = v.s1[l].data_ptr<T>();
  T* s2 = v.s2[l].data_ptr<T>();
  for (int64_t b = b0; b < b0 + bs; ++b) {
    const T* pb = P + b * S * h;
    T* xb = X + b * S * h;
    T* d1 = s1 + b * h;
    T* d2 = s2 + b * h;
    for (int64_t r = 0; r < h; ++r) act_eval<T>(act, prm, pb[r], xb[r], d1[r], d2[r]);
    for (int64_t i = 1; i <= dz; ++i) {
      const T* __restrict__ a = pb + i * h;
      T* __restrict__ x = xb + i * h;
      for (int64_t r = 0; r < h; ++r) x[r] = d1[r] * a[r];
    }
  }
}

// C and Q of samples [b0, b0 + bs) from their Jacobian rows (J^T of sample b: rows 1..dz of its stack, width dx).
template <typename T>
void contrast(const T* out, int64_t dz, int64_t dx, int64_t b0, int64_t bs, T* C, T* Q, std::vector<double>& pre) {
  const int64_t S = 1 + dz;
  pre.resize(dx);
  for (int64_t b = b0; b < b0 + bs; ++b) {
    const T* jb = out + (b * S + 1) * dx;
    std::fill(pre.begin(), pre.end(), 0.0);
    double c = 0.0, q = 0.0;
    for (int64_t i = 0; i < dz; ++i) {
      const T* __restrict__ row = jb + i * dx;
      double* __restrict__ p = pre.data();
      for (int64_t k = 0; k < dx; ++k) {
        const double a = std::fabs(static_cast<double>(row[k]));
        c += a * p[k];  // |J_ki| sum_{i' < i} |J_ki'|
        q += a * a;
        p[k] += a;
      }
    }
    C[b] = static_cast<T>(c);
    Q[b] = static_cast<T>(q);
  }
}

template <typename T>
void forward_into(const Net& n, const Views& v, at::Tensor& C, at::Tensor& Q) {
  const int64_t dz = n.dz, S = 1 + dz;
  const int64_t h0 = n.width[0];
  const at::Tensor w0t = n.W[0].t().contiguous();  // (dz, h0): row i = W_0[:, i], the first layer's tangent A_i
  std::vector<at::Tensor> wt;
  for (const auto& w : n.W) wt.push_back(w.t());
  const T* ib = n.in_bias.defined() ? n.in_bias.data_ptr<T>() : nullptr;
  T* Cp = C.data_ptr<T>();
  T* Qp = Q.data_ptr<T>();
  for_blocks(n.B, dz, n_chunks(n.B, dz), [&](int64_t, int64_t b0, int64_t bs, bool) {
    std::vector<double> pre;
    // First layer: value rows a_0 = W_0 z + b_0 (+ in_bias) in a small GEMM, tangent rows = the columns of W_0.
    {
      at::Tensor a0 = at::addmm(n.b[0], n.z.narrow(0, b0, bs), wt[0]);  // (bs, h0)
      const T* ap = a0.data_ptr<T>();
      const T* w0 = w0t.data_ptr<T>();
      T* P = v.P[0].data_ptr<T>();
      for (int64_t b = 0; b < bs; ++b) {
        T* pb = P + (b0 + b) * S * h0;
        for (int64_t r = 0; r < h0; ++r) pb[r] = ap[b * h0 + r] + (ib ? ib[(b0 + b) * h0 + r] : T(0));
        std::copy(w0, w0 + dz * h0, pb + h0);
      }
    }
    if (n.n_act > 0) activate<T>(n, v, 0, b0, bs);
    for (int64_t l = 1; l < n.L; ++l) {
      const at::Tensor& X = v.X[l - 1];
      at::Tensor out = v.P[l].narrow(0, b0 * S, bs * S);
      at::mm_out(out, X.narrow(0, b0 * S, bs * S), wt[l]);
      const int64_t h = n.width[l];
      T* op = out.data_ptr<T>();
      const T* bias = n.b[l].data_ptr<T>();
      for (int64_t b = 0; b < bs; ++b)
        for (int64_t r = 0; r < h; ++r) op[b * S * h + r] += bias[r];
      if (l < n.n_act) activate<T>(n, v, l, b0, bs);
    }
    const at::Tensor& last = n.n_act == n.L ? v.X[n.L - 1] : v.P[n.L - 1];
    contrast<T>(last.data_ptr<T>(), dz, n.dx, b0, bs, Cp, Qp, pre);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> comp_contrast_cpu(const at::Tensor& z, at::TensorList weights,
                                                                 at::TensorList biases,
                                                                 const std::optional<at::Tensor>& in_bias,
                                                                 at::ArrayRef<std::string> activations,
                                                                 at::ArrayRef<double> act_params) {
  const Net n = check_inputs("comp_contrast", z, weights, biases, in_bias, activations, act_params);
  at::Tensor saved = at::empty({workspace_numel(n.B, n.dz, n.width, n.n_act)}, n.z.options());
  at::Tensor C = at::empty({n.B}, n.z.options());
  at::Tensor Q = at::empty({n.B}, n.z.options());
  if (n.B > 0) {
    const Views v = views(saved, n);
    AT_DISPATCH_FLOATING_TYPES(n.z.scalar_type(), "comp_contrast_cpu", [&] { forward_into<scalar_t>(n, v, C, Q); });
  }
  return {C, Q, saved};
}

// ---------------------------------------------------------------------------------------------------------------
// Backward

// Adjoint of the Jacobian rows of samples [b0, b0 + bs) into G (stack layout, bs samples from row 0, width dx):
// dJ = gC sign(J) (sum_{i' != i} |J_ki'|) + 2 gQ J; the value rows are zeroed (C and Q do not depend on x).
template <typename T>
void jacobian_adjoint(const T* out, const T* gC, const T* gQ, int64_t dz, int64_t dx, int64_t b0, int64_t bs, T* G,
                      std::vector<double>& acc) {
  const int64_t S = 1 + dz;
  acc.resize(dx);
  for (int64_t b = 0; b < bs; ++b) {
    const T* jb = out + ((b0 + b) * S + 1) * dx;
    T* gb = G + b * S * dx;
    std::fill(gb, gb + dx, T(0));
    const double gc = static_cast<double>(gC[b0 + b]), gq2 = 2.0 * static_cast<double>(gQ[b0 + b]);
    double* __restrict__ p = acc.data();  // running sums of |J| over the rows passed so far, per output k
    // Pass 1: the prefix sums sum_{i' < i} |J_ki'| into the rows of G (accumulated in double, stored in T).
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t i = 0; i < dz; ++i) {
      const T* __restrict__ row = jb + i * dx;
      T* __restrict__ g = gb + (1 + i) * dx;
      for (int64_t k = 0; k < dx; ++k) {
        g[k] = static_cast<T>(p[k]);
        p[k] += std::fabs(static_cast<double>(row[k]));
      }
    }
    // Pass 2, from the last row up: add the suffix sums, then the sign and the Q term.
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t i = dz - 1; i >= 0; --i) {
      const T* __restrict__ row = jb + i * dx;
      T* __restrict__ g = gb + (1 + i) * dx;
      for (int64_t k = 0; k < dx; ++k) {
        const double j = static_cast<double>(row[k]);
        const double others = static_cast<double>(g[k]) + p[k];
        const double sg = j > 0 ? 1.0 : (j < 0 ? -1.0 : 0.0);  // sign(0) = 0, as torch's abs backward
        g[k] = static_cast<T>(gc * sg * others + gq2 * j);
        p[k] += std::fabs(j);
      }
    }
  }
}

// In place on G (adjoint of X_l for samples [b0, b0 + bs), stack layout from row 0): G becomes the adjoint of P_l:
// tangent rows dA = s' dT; value row da = s' dh + s'' sum_i A_i dT_i.
template <typename T>
void deactivate(const Net& n, const Views& v, int64_t l, int64_t b0, int64_t bs, T* G) {
  const int64_t h = n.width[l], dz = n.dz, S = 1 + dz;
  const bool has_s2 = curved(n.act[l]);
  const T* P = v.P[l].data_ptr<T>();
  const T* s1 = v.s1[l].data_ptr<T>();
  const T* s2 = v.s2[l].data_ptr<T>();
  for (int64_t b = 0; b < bs; ++b) {
    T* __restrict__ gb = G + b * S * h;
    const T* __restrict__ d1 = s1 + (b0 + b) * h;
    const T* __restrict__ d2 = s2 + (b0 + b) * h;
    const T* pb = P + (b0 + b) * S * h;
    for (int64_t r = 0; r < h; ++r) gb[r] *= d1[r];
    for (int64_t i = 1; i <= dz; ++i) {
      T* __restrict__ g = gb + i * h;
      if (has_s2) {
        const T* __restrict__ a = pb + i * h;
        for (int64_t r = 0; r < h; ++r) gb[r] += d2[r] * a[r] * g[r];
      }
      for (int64_t r = 0; r < h; ++r) g[r] *= d1[r];
    }
  }
}

template <typename T>
void backward_into(const Net& n, const Views& v, const at::Tensor& gC, const at::Tensor& gQ, at::Tensor& gz,
                   std::vector<at::Tensor>& gW_out, std::vector<at::Tensor>& gb_out, at::Tensor& gib) {
  const int64_t dz = n.dz, S = 1 + dz, L = n.L, h0 = n.width[0];
  const int64_t nchunks = n_chunks(n.B, dz);
  const auto opt = n.z.options();
  // Per-chunk parameter gradients (chunk 0's are the outputs), and the tangent part of dW_0 transposed (dz x h0).
  std::vector<std::vector<at::Tensor>> gW(nchunks), gb(nchunks);
  std::vector<at::Tensor> gW0t(nchunks);
  for (int64_t c = 0; c < nchunks; ++c) {
    for (int64_t l = 0; l < L; ++l) {
      gW[c].push_back(c == 0 ? gW_out[l] : at::empty(n.W[l].sizes(), opt));
      gb[c].push_back(c == 0 ? gb_out[l] : at::empty(n.b[l].sizes(), opt));
    }
    gW0t[c] = at::empty({dz, h0}, opt);
  }
  int64_t wmax = *std::max_element(n.width.begin(), n.width.end());
  const at::Tensor& last = n.n_act == L ? v.X[L - 1] : v.P[L - 1];
  const T* gCp = gC.data_ptr<T>();
  const T* gQp = gQ.data_ptr<T>();
  const int64_t block = std::max<int64_t>(1, kBlockRows / S);
  for_blocks(n.B, dz, nchunks, [&](int64_t c, int64_t b0, int64_t bs, bool first) {
    std::vector<double> acc;
    const int64_t rows = bs * S;
    at::Tensor buf_a = at::empty({block * S * wmax}, opt), buf_b = at::empty({block * S * wmax}, opt);
    auto as2d = [&](at::Tensor& buf, int64_t cols) { return buf.narrow(0, 0, rows * cols).view({rows, cols}); };
    at::Tensor G = as2d(buf_a, n.dx);
    jacobian_adjoint<T>(last.data_ptr<T>(), gCp, gQp, dz, n.dx, b0, bs, G.data_ptr<T>(), acc);
    if (n.n_act == L) deactivate<T>(n, v, L - 1, b0, bs, G.data_ptr<T>());
    at::Tensor* cur = &buf_a;
    at::Tensor* nxt = &buf_b;
    for (int64_t l = L - 1; l >= 0; --l) {
      const int64_t h = n.width[l];
      at::Tensor Gl = as2d(*cur, h);                       // adjoint of P_l, (rows, h)
      at::Tensor ga = Gl.view({bs, S, h}).select(1, 0);    // value rows: da_l, (bs, h)
      if (first) {
        gb[c][l].copy_(ga.sum(0));
      } else {
        gb[c][l].add_(ga.sum(0));
      }
      if (l > 0) {
        const int64_t hin = n.width[l - 1];
        mm_acc(gW[c][l], Gl.t(), v.X[l - 1].narrow(0, b0 * S, rows), first);  // (h, hin)
        at::Tensor Gin = as2d(*nxt, hin);
        at::mm_out(Gin, Gl, n.W[l]);                        // adjoint of X_{l-1}
        deactivate<T>(n, v, l - 1, b0, bs, Gin.data_ptr<T>());
        std::swap(cur, nxt);
      } else {
        // X_{-1} = [z; I]: dW_0 += da_0^T z + sum_b dA_0[b]^T; dz = da_0 W_0; d in_bias = da_0.
        mm_acc(gW[c][0], ga.t(), n.z.narrow(0, b0, bs), first);
        at::Tensor tang = Gl.view({bs, S, h}).narrow(1, 1, dz).sum(0);  // (dz, h0)
        if (first) {
          gW0t[c].copy_(tang);
        } else {
          gW0t[c].add_(tang);
        }
        at::Tensor gz_rows = gz.narrow(0, b0, bs);
        at::mm_out(gz_rows, ga, n.W[0]);
        gib.narrow(0, b0, bs).copy_(ga);
      }
    }
  });
  for (int64_t c = 0; c < nchunks; ++c) {
    gW[0][0].add_(gW0t[c].t());
    if (c == 0) continue;
    for (int64_t l = 0; l < L; ++l) {
      gW[0][l].add_(gW[c][l]);
      gb[0][l].add_(gb[c][l]);
    }
  }
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> comp_contrast_backward_cpu(
    const at::Tensor& grad_c, const at::Tensor& grad_q, const at::Tensor& z, at::TensorList weights,
    at::TensorList biases, const std::optional<at::Tensor>& in_bias, const at::Tensor& saved,
    at::ArrayRef<std::string> activations, at::ArrayRef<double> act_params) {
  const Net n = check_inputs("comp_contrast_backward", z, weights, biases, in_bias, activations, act_params);
  const auto opt = n.z.options();
  TORCH_CHECK(grad_c.dim() == 1 && grad_c.size(0) == n.B && grad_q.dim() == 1 && grad_q.size(0) == n.B,
              "comp_contrast_backward: grad_c, grad_q: expected shape (", n.B, "), got ", grad_c.sizes(), " and ",
              grad_q.sizes());
  TORCH_CHECK(saved.dim() == 1 && saved.is_contiguous() && saved.scalar_type() == n.z.scalar_type() &&
                  saved.numel() == workspace_numel(n.B, n.dz, n.width, n.n_act),
              "comp_contrast_backward: saved must be the workspace returned by comp_contrast for these inputs");
  const at::Tensor gC = grad_c.to(n.z.scalar_type()).contiguous();
  const at::Tensor gQ = grad_q.to(n.z.scalar_type()).contiguous();
  at::Tensor gz = at::empty({n.B, n.dz}, opt);
  at::Tensor gib = at::empty({n.B, n.width[0]}, opt);
  std::vector<at::Tensor> gW, gb;
  for (int64_t l = 0; l < n.L; ++l) {
    gW.push_back(n.B > 0 ? at::empty(n.W[l].sizes(), opt) : at::zeros(n.W[l].sizes(), opt));
    gb.push_back(n.B > 0 ? at::empty(n.b[l].sizes(), opt) : at::zeros(n.b[l].sizes(), opt));
  }
  if (n.B > 0) {
    const Views v = views(saved, n);
    AT_DISPATCH_FLOATING_TYPES(n.z.scalar_type(), "comp_contrast_backward_cpu",
                               [&] { backward_into<scalar_t>(n, v, gC, gQ, gz, gW, gb, gib); });
  }
  return {gz, gW, gb, gib};
}

}  // namespace

TORCH_LIBRARY_IMPL(mclcore, CPU, m) {
  m.impl("comp_contrast", &comp_contrast_cpu);
  m.impl("comp_contrast_backward", &comp_contrast_backward_cpu);
}

}  // namespace mclcore
