// CPU kernel of mclcore::mech_derivs: the mechanism-derivative vector V(z,u) and the log-volume of an MLP generator
// (docs/DESIGN.md §2.3, paper section 3.2).
//
// Per sample and latent directions i, j we carry, through every layer, the value and the Taylor coefficients
//   T1_j = dx/dz_j,  T2_ij = d2x/dz_i dz_j (symmetric: only i <= j is stored, P = dz(dz+1)/2 rows),
//   T3_ij = d3x/dz_i^2 dz_j (dz^2 rows).
// Linear layer: A_n = W T_n (one GEMM over the stacked tangents of a whole chunk of samples).
// Nonlinearity, s_k = s^(k)(a):
//   N1_j  = s1 A1_j
//   N2_ij = s2 A1_i A1_j + s1 A2_ij
//   N3_ij = s3 A1_i^2 A1_j + s2 (2 A1_i A2_ij + A2_ii A1_j) + s1 A3_ij
// The first layer needs no GEMM for the tangents: A1_j = W_0[:, j] is the same for every sample and A2 = A3 = 0.
//
// At the output, J = [T1_1..T1_dz] (dx x dz), H_i = [T2_i1..T2_idz], T_i = [T3_i1..T3_idz], A = J^T J = L L^T
// (Cholesky), Y = A^-1 J^T (dz x dx), E_i = Y H_i (dz x dz). With P_J = J Y the projector on range(J):
//   m'_i  = tr(E_i)
//   m''_ii = tr(Y T_i) - tr(E_i^2) + tr(A^-1 H_i^T (I - P_J) H_i)
// which is docs/DESIGN.md §2.3's tr(A^-1 (H_i^T H_i + J^T T_i)) - 1/2 tr(A^-1 D_i A^-1 D_i) rewritten with A^-1 D_i =
// E_i + A^-1 E_i^T A: the H_i^T P_J H_i part of the first trace cancels the cross term of the second. For square J
// the last term vanishes (d2 log|det J| = tr(J^-1 d2J) - tr((J^-1 dJ)^2)); otherwise it is ||L^-1 R_i^T||_F^2 with
// R_i = (I - P_J) H_i, one (dz x dz)(dz x dz*dx) GEMM per sample because T2 is symmetric in (i, k).
// tr(Y T_i) = sum_j <y_j, T3_ij>; when the last layer is linear, T3_ij = W N3_ij, so we contract N3 with
// W^T y_j instead of pushing the dz^2 third-order rows through the last GEMM.
//
// Precision: float32 inputs propagate in float32 (GEMMs) and every output-side quantity (A, Cholesky, Y, E, the
// residual) is formed in float64: all-float32 gave relative errors up to 1e5 on ill-conditioned samples at dz = 20,
// float32 propagation + float64 algebra a median of 4e-6 (docs/DESIGN.md §2.3).
//
// Parallelism: samples are split into chunks (about 2 MiB of float tangents each, so a chunk's GEMM has thousands of
// rows); the tasks of at::parallel_for take chunks from a shared counter, so a core slowed by another process does
// not hold up the others, and each task keeps its own workspace (peak memory = threads x workspace, independent
// of B: measured 2-5 MiB at B = 256, against 0.5-3 GiB for the vmapped torch.func reference). The GEMMs inside run
// single-threaded (MKL does not nest inside an active OpenMP region; see run()).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "mech_derivs_checks.h"
#include "../mlp_activation.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace mclcore {
namespace {

using mlp::Act;

Act parse_act(const std::string& s) { return mlp::parse_act(s, "mech_derivs"); }

// sigma(a) and 1 - sigma(a) without cancellation.
inline void sigmoid_pair(double a, double& sg, double& om) {
  if (a >= 0) {
    const double e = std::exp(-a);
    sg = 1.0 / (1.0 + e);
    om = e / (1.0 + e);
  } else {
    const double e = std::exp(a);
    sg = e / (1.0 + e);
    om = 1.0 / (1.0 + e);
  }
}

// s(a), s'(a), s''(a), s'''(a), in double (these are O(width) per sample and layer; the O(width * dz^2) work is in
// the tangent rules). p: softplus beta, or the leaky slope.
inline void act_eval(Act act, double p, double a, double* s) {
  switch (act) {
    case Act::Tanh: {
      const double t = std::tanh(a), d = 1.0 - t * t;
      s[0] = t, s[1] = d, s[2] = -2.0 * t * d, s[3] = d * (4.0 * t * t - 2.0 * d);
      return;
    }
    case Act::Sigmoid: {
      double sg, om;
      sigmoid_pair(a, sg, om);
      const double d1 = sg * om;
      s[0] = sg, s[1] = d1, s[2] = d1 * (om - sg), s[3] = d1 * (1.0 - 6.0 * d1);
      return;
    }
    case Act::Softplus: {  // (1/beta) log(1 + exp(beta a))
      const double ba = p * a;
      double sg, om;
      sigmoid_pair(ba, sg, om);
      const double d1 = sg * om;
      s[0] = (std::max(ba, 0.0) + std::log1p(std::exp(-std::fabs(ba)))) / p;
      s[1] = sg, s[2] = p * d1, s[3] = p * p * d1 * (om - sg);
      return;
    }
    case Act::SmoothLeaky: {  // p a + (1 - p) softplus(a)
      double sg, om;
      sigmoid_pair(a, sg, om);
      const double d1 = sg * om, q = 1.0 - p;
      s[0] = p * a + q * (std::max(a, 0.0) + std::log1p(std::exp(-std::fabs(a))));
      s[1] = p + q * sg, s[2] = q * d1, s[3] = q * d1 * (om - sg);
      return;
    }
    case Act::Gelu: {  // a Phi(a) (exact erf form, nn.GELU())
      const double Phi = 0.5 * std::erfc(-a * 0.70710678118654752440);
      const double phi = 0.39894228040143267794 * std::exp(-0.5 * a * a);
      s[0] = a * Phi, s[1] = Phi + a * phi, s[2] = (2.0 - a * a) * phi, s[3] = (a * a * a - 4.0 * a) * phi;
      return;
    }
    case Act::Silu: {  // a sigma(a): s' = sg + a sg', s'' = 2 sg' + a sg'', s''' = 3 sg'' + a sg'''
      double sg, om;
      sigmoid_pair(a, sg, om);
      const double d1 = sg * om, d2 = d1 * (om - sg), d3 = d1 * (1.0 - 6.0 * d1);
      s[0] = a * sg, s[1] = sg + a * d1, s[2] = 2.0 * d1 + a * d2, s[3] = 3.0 * d2 + a * d3;
      return;
    }
    case Act::Relu:  // derivative 0 at a = 0, as torch's relu backward
      s[0] = a > 0 ? a : 0.0, s[1] = a > 0 ? 1.0 : 0.0, s[2] = 0.0, s[3] = 0.0;
      return;
    case Act::LeakyRelu:  // slope p at a <= 0, as torch's leaky_relu backward
      s[0] = a > 0 ? a : p * a, s[1] = a > 0 ? 1.0 : p, s[2] = 0.0, s[3] = 0.0;
      return;
    case Act::Identity:
      s[0] = a, s[1] = 1.0, s[2] = 0.0, s[3] = 0.0;
      return;
  }
}

constexpr double kPivotRtol = 1e-13;  // see the Cholesky in output_algebra

inline int64_t pair_index(int64_t i, int64_t j, int64_t dz) {  // i <= j, row-major upper triangle
  return i * dz - i * (i - 1) / 2 + (j - i);
}

struct Plan {
  int64_t B, dz, P, n_layers, dx, wmax;
  std::vector<int64_t> width;  // width[l] = h_l
  std::vector<Act> act;        // act[l] for l < n_act
  std::vector<double> param;
  int64_t n_act;               // n_layers - 1, or n_layers (final activation)
  bool last_linear;            // last layer has no activation
};

// One thread's scratch space, allocated once per parallel task.
template <typename T>
struct Workspace {
  at::Tensor stack_a, stack_b;  // flat (rows * wmax) T: ping-pong tangent stacks of one chunk
  std::vector<T> coef;          // 4 * wmax: s, s', s'', s''' of one sample's units
  at::Tensor rfull, u;          // flat (bc * dz * dz * dx) double: gathered residual rows, and Lc^-1 times them
};

template <typename T>
class Kernel {
 public:
  Kernel(const Plan& plan, const at::Tensor& z, std::vector<at::Tensor> weights, std::vector<at::Tensor> biases,
         const at::Tensor& in_bias, const at::Tensor& scale, const at::Tensor& shift, at::Tensor& V, at::Tensor& L)
      : p_(plan), z_(z), W_(std::move(weights)), b_(std::move(biases)), in_bias_(in_bias), scale_(scale),
        shift_(shift), V_(V), L_(L) {
    const int64_t dz = p_.dz;
    // First-layer columns W_0[:, j] as contiguous rows (dz x h_0): A1_j of every sample.
    w0t_ = W_[0].t().contiguous();
    for (const auto& w : W_) wt_.push_back(w.t());  // (in, out) views: the GEMMs read W transposed in place
    if (p_.last_linear && p_.n_layers >= 2) w_last64_ = W_.back().to(at::kDouble).contiguous();  // (dx, w_prev)
    rows_per_sample_ = 1 + dz + p_.P + dz * dz;
  }

  void run() {
    const int64_t B = p_.B;
    if (B == 0) return;
    const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
    // Threads worth using: small calls keep their work on one thread (rough work estimate: the GEMM flops plus the
    // float64 residual, >= ~4 MFLOP per thread), since waking a second, possibly busy, core costs more there.
    double work = 2.0 * p_.dz * p_.dz * p_.dz * p_.dx;
    for (int64_t l = 1; l < p_.n_layers; ++l) work += 2.0 * rows_per_sample_ * p_.width[l - 1] * p_.width[l];
    const int64_t useful = std::max<int64_t>(1, std::min<int64_t>(threads, static_cast<int64_t>(work * B / 4e6)));
    // Chunks: ~2 MiB of tangents each (measured: 8-10 samples at dz = 20, width 80 give GEMMs of ~5000 x 80 x 80,
    // near MKL's single-core peak), and ~4 chunks per useful thread so a core slowed by another process is worked
    // around (one chunk in all when a single thread is useful).
    const int64_t bytes_per_sample = rows_per_sample_ * p_.wmax * static_cast<int64_t>(sizeof(T));
    int64_t bc = std::max<int64_t>(1, (int64_t(2) << 20) / bytes_per_sample);
    if (useful > 1) bc = std::min(bc, (B + 4 * useful - 1) / (4 * useful));
    bc_ = std::min(bc, B);
    const int64_t n_chunks = (B + bc_ - 1) / bc_;
    // We open a parallel region of >= 2 tasks whenever torch has >= 2 threads, even for one useful thread: inside an
    // active OpenMP region MKL runs the small GEMMs sequentially, while outside one it splits each of them over the
    // threads (measured under load on the 2-core AMD EPYC dev VM, 2026-11: a 3 x 3 x 80 torch.bmm took 3.5 us on 1 thread and 16 ms on 2, and this op at
    // B = 3 went from 0.8 ms to 70 ms). Surplus tasks find no chunk left and return.
    const int64_t n_tasks = threads > 1 ? std::max<int64_t>(2, std::min(useful, n_chunks)) : 1;
    std::atomic<int64_t> next{0};
    auto worker = [&](int64_t t0, int64_t t1) {
      // Dispatch keys are thread-local: OpenMP workers do not inherit the caller's "below autograd" state, so the
      // ATen calls below would otherwise go through autograd (and refuse mm_out on weights that require grad).
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      for (int64_t t = t0; t < t1; ++t) {
        Workspace<T> ws = make_workspace();
        for (int64_t c = next.fetch_add(1); c < n_chunks; c = next.fetch_add(1)) {
          const int64_t b0 = c * bc_;
          chunk(ws, b0, std::min(bc_, B - b0));
        }
      }
    };
    if (n_tasks == 1)
      worker(0, 1);
    else
      at::parallel_for(0, n_tasks, 1, worker);
  }

 private:
  Workspace<T> make_workspace() const {
    Workspace<T> ws;
    auto opt = z_.options();
    ws.stack_a = at::empty({bc_ * rows_per_sample_ * p_.wmax}, opt);
    ws.stack_b = at::empty({bc_ * rows_per_sample_ * p_.wmax}, opt);
    ws.coef.resize(4 * p_.wmax);
    if (p_.dx > p_.dz) {
      auto o64 = opt.dtype(at::kDouble);
      ws.rfull = at::empty({bc_ * p_.dz * p_.dz * p_.dx}, o64);
      ws.u = at::empty({bc_ * p_.dz * p_.dz * p_.dx}, o64);
    }
    return ws;
  }

  // Row offsets inside a chunk of bc samples: [primal (bc)] [T1 (bc*dz)] [T2 (bc*P)] [T3 (bc*dz*dz)],
  // sample-major inside each block, so every GEMM operand is one contiguous 2-D matrix.
  struct Off {
    int64_t t1, t2, t3, rows;
  };
  Off offsets(int64_t bc) const {
    Off o;
    o.t1 = bc;
    o.t2 = o.t1 + bc * p_.dz;
    o.t3 = o.t2 + bc * p_.P;
    o.rows = o.t3 + bc * p_.dz * p_.dz;
    return o;
  }

  // Apply the nonlinearity rule in place on the pre-activation stack `st` (width n) for every sample of the chunk.
  void nonlinearity(Workspace<T>& ws, T* st, int64_t n, int64_t bc, const Off& o, Act act, double prm) const {
    const int64_t dz = p_.dz, P = p_.P;
    T* __restrict__ s0 = ws.coef.data();
    T* __restrict__ s1 = s0 + p_.wmax;
    T* __restrict__ s2 = s1 + p_.wmax;
    T* __restrict__ s3 = s2 + p_.wmax;
    for (int64_t b = 0; b < bc; ++b) {
      T* prim = st + b * n;
      double s[4];
      for (int64_t r = 0; r < n; ++r) {
        act_eval(act, prm, static_cast<double>(prim[r]), s);
        s0[r] = static_cast<T>(s[0]), s1[r] = static_cast<T>(s[1]);
        s2[r] = static_cast<T>(s[2]), s3[r] = static_cast<T>(s[3]);
      }
      T* t1 = st + (o.t1 + b * dz) * n;
      T* t2 = st + (o.t2 + b * P) * n;
      T* t3 = st + (o.t3 + b * dz * dz) * n;
      // Third order first: it reads the incoming A1 and A2, which the lower orders then overwrite.
      for (int64_t i = 0; i < dz; ++i) {
        const T* __restrict__ a1i = t1 + i * n;
        const T* __restrict__ a2ii = t2 + pair_index(i, i, dz) * n;
        for (int64_t j = 0; j < dz; ++j) {
          const T* __restrict__ a1j = t1 + j * n;
          const T* __restrict__ a2ij = t2 + (i <= j ? pair_index(i, j, dz) : pair_index(j, i, dz)) * n;
          T* __restrict__ a3 = t3 + (i * dz + j) * n;
          for (int64_t r = 0; r < n; ++r) {
            a3[r] = s3[r] * a1i[r] * a1i[r] * a1j[r] + s2[r] * (T(2) * a1i[r] * a2ij[r] + a2ii[r] * a1j[r]) +
                    s1[r] * a3[r];
          }
        }
      }
      for (int64_t i = 0; i < dz; ++i) {
        const T* __restrict__ a1i = t1 + i * n;
        for (int64_t j = i; j < dz; ++j) {
          const T* __restrict__ a1j = t1 + j * n;
          T* __restrict__ a2 = t2 + pair_index(i, j, dz) * n;
          for (int64_t r = 0; r < n; ++r) a2[r] = s2[r] * a1i[r] * a1j[r] + s1[r] * a2[r];
        }
      }
      for (int64_t j = 0; j < dz; ++j) {
        T* __restrict__ a1 = t1 + j * n;
        for (int64_t r = 0; r < n; ++r) a1[r] *= s1[r];
      }
      for (int64_t r = 0; r < n; ++r) prim[r] = s0[r];
    }
  }

  // First layer: pre-activation a_0 = W_0 y + b_0 (+ in_bias) per sample; tangents straight from the columns of W_0.
  // With an activation the chunk's stack is filled with N1, N2, N3; without one (a single linear layer) with
  // T1 = W_0 columns and T2 = T3 = 0.
  void first_layer(Workspace<T>& ws, T* st, int64_t b0, int64_t bc, const Off& o) const {
    const int64_t dz = p_.dz, P = p_.P, n = p_.width[0];
    const T* z = z_.data_ptr<T>();
    const T* W = W_[0].data_ptr<T>();
    const T* bias = b_[0].data_ptr<T>();
    const T* ib = in_bias_.defined() ? in_bias_.data_ptr<T>() : nullptr;
    const T* sc = scale_.defined() ? scale_.data_ptr<T>() : nullptr;
    const T* sh = shift_.defined() ? shift_.data_ptr<T>() : nullptr;
    const T* w0t = w0t_.data_ptr<T>();
    const bool has_act = p_.n_act > 0;
    double s[4];
    std::vector<double> y(dz);
    T* __restrict__ s1 = ws.coef.data() + p_.wmax;
    T* __restrict__ s2 = s1 + p_.wmax;
    T* __restrict__ s3 = s2 + p_.wmax;
    for (int64_t b = 0; b < bc; ++b) {
      const int64_t g = b0 + b;
      for (int64_t j = 0; j < dz; ++j) {
        double v = static_cast<double>(z[g * dz + j]);
        if (sc) v *= static_cast<double>(sc[g * dz + j]);
        if (sh) v += static_cast<double>(sh[g * dz + j]);
        y[j] = static_cast<double>(static_cast<T>(v));  // the generator sees y in its own dtype
      }
      T* prim = st + b * n;
      T* t1 = st + (o.t1 + b * dz) * n;
      T* t2 = st + (o.t2 + b * P) * n;
      T* t3 = st + (o.t3 + b * dz * dz) * n;
      for (int64_t r = 0; r < n; ++r) {
        double acc = static_cast<double>(bias[r]) + (ib ? static_cast<double>(ib[g * n + r]) : 0.0);
        for (int64_t j = 0; j < dz; ++j) acc += static_cast<double>(W[r * dz + j]) * y[j];
        if (has_act) {
          act_eval(p_.act[0], p_.param[0], acc, s);
          prim[r] = static_cast<T>(s[0]);
          s1[r] = static_cast<T>(s[1]), s2[r] = static_cast<T>(s[2]), s3[r] = static_cast<T>(s[3]);
        } else {
          prim[r] = static_cast<T>(acc);
        }
      }
      if (!has_act) {
        std::copy(w0t, w0t + dz * n, t1);
        std::fill(t2, t2 + P * n, T(0));
        std::fill(t3, t3 + dz * dz * n, T(0));
        continue;
      }
      for (int64_t i = 0; i < dz; ++i) {
        const T* __restrict__ wi = w0t + i * n;
        for (int64_t j = 0; j < dz; ++j) {
          const T* __restrict__ wj = w0t + j * n;
          T* __restrict__ a3 = t3 + (i * dz + j) * n;
          for (int64_t r = 0; r < n; ++r) a3[r] = s3[r] * wi[r] * wi[r] * wj[r];
        }
        for (int64_t j = i; j < dz; ++j) {
          const T* __restrict__ wj = w0t + j * n;
          T* __restrict__ a2 = t2 + pair_index(i, j, dz) * n;
          for (int64_t r = 0; r < n; ++r) a2[r] = s2[r] * wi[r] * wj[r];
        }
        T* __restrict__ a1 = t1 + i * n;
        for (int64_t r = 0; r < n; ++r) a1[r] = s1[r] * wi[r];
      }
    }
  }

  at::Tensor view2d(const at::Tensor& flat, int64_t rows, int64_t cols) const {
    return flat.narrow(0, 0, rows * cols).view({rows, cols});
  }

  void chunk(Workspace<T>& ws, int64_t b0, int64_t bc) const {
    const Off o = offsets(bc);
    const int64_t nl = p_.n_layers;
    at::Tensor cur = ws.stack_a, nxt = ws.stack_b;
    first_layer(ws, cur.data_ptr<T>(), b0, bc, o);
    // t3_mode: 0 = T3 is zero, 1 = T3 rows are in `cur` (width dx), 2 = N3 rows of the last hidden layer are in
    // `prev` (width w_prev) and T3 = W_last N3.
    int t3_mode = (nl == 1 && p_.n_act == 0) ? 0 : 1;
    at::Tensor prev;
    for (int64_t l = 1; l < nl; ++l) {
      const int64_t nin = p_.width[l - 1], nout = p_.width[l];
      at::Tensor in2 = view2d(cur, o.rows, nin), out2 = view2d(nxt, o.rows, nout);
      const bool has_act = l < p_.n_act;
      if (!has_act) {
        // Last, linear layer: only T1 and T2 go through the GEMM (the value x itself is not needed).
        at::Tensor out_rows = out2.narrow(0, o.t1, o.t3 - o.t1);
        at::mm_out(out_rows, in2.narrow(0, o.t1, o.t3 - o.t1), wt_[l]);
        t3_mode = 2;
        prev = cur;
        cur = nxt;
        break;
      }
      at::mm_out(out2, in2, wt_[l]);
      T* st = nxt.data_ptr<T>();
      const T* bias = b_[l].data_ptr<T>();
      for (int64_t b = 0; b < bc; ++b)
        for (int64_t r = 0; r < nout; ++r) st[b * nout + r] += bias[r];
      nonlinearity(ws, st, nout, bc, o, p_.act[l], p_.param[l]);
      std::swap(cur, nxt);
    }
    output_algebra(ws, cur, prev, t3_mode, b0, bc, o);
  }

  // Everything after the last layer, in float64 (see the header comment for the formulas).
  void output_algebra(Workspace<T>& ws, const at::Tensor& out, const at::Tensor& prev, int t3_mode, int64_t b0,
                      int64_t bc, const Off& o) const {
    const int64_t dz = p_.dz, P = p_.P, dx = p_.dx;
    at::Tensor out2 = view2d(out, o.rows, dx);
    at::Tensor Jt = out2.narrow(0, o.t1, bc * dz).view({bc, dz, dx}).to(at::kDouble);   // rows: T1_j
    at::Tensor T2t = out2.narrow(0, o.t2, bc * P).view({bc, P, dx}).to(at::kDouble);   // rows: T2_(i<=j)
    at::Tensor A = at::bmm(Jt, Jt.transpose(1, 2));                                     // (bc, dz, dz)
    at::Tensor Linv = at::zeros({bc, dz, dz}, A.options());
    std::vector<double> Lcv(bc * dz * dz, 0.0);  // the Cholesky factors
    at::Tensor Ainv = at::empty({bc, dz, dz}, A.options());
    std::vector<double> half_logdet(bc);
    std::vector<char> ok(bc, 1);
    {
      double* Ap = A.data_ptr<double>();
      double* Lip = Linv.data_ptr<double>();
      double* Aip = Ainv.data_ptr<double>();
      for (int64_t b = 0; b < bc; ++b) {
        const double* a = Ap + b * dz * dz;
        double* li = Lip + b * dz * dz;
        double* ai = Aip + b * dz * dz;
        double* Lc = Lcv.data() + b * dz * dz;
        // Cholesky A = Lc Lc^T.
        double hl = 0.0;
        for (int64_t j = 0; j < dz && ok[b]; ++j) {
          double d = a[j * dz + j];
          for (int64_t k = 0; k < j; ++k) d -= Lc[j * dz + k] * Lc[j * dz + k];
          // Relative pivot d / A_jj = sin^2 of the angle between column j of J and the span of the previous ones;
          // below 1e-13 (cond(J) beyond ~3e6) the columns are numerically dependent: floating-point Cholesky would
          // still "succeed" on an exactly singular A with a pivot of rounding size and return garbage.
          if (!(d > kPivotRtol * a[j * dz + j]) || !std::isfinite(d)) {
            ok[b] = 0;
            break;
          }
          const double ljj = std::sqrt(d);
          Lc[j * dz + j] = ljj;
          hl += std::log(ljj);
          for (int64_t i = j + 1; i < dz; ++i) {
            double v = a[i * dz + j];
            for (int64_t k = 0; k < j; ++k) v -= Lc[i * dz + k] * Lc[j * dz + k];
            Lc[i * dz + j] = v / ljj;
          }
        }
        half_logdet[b] = hl;  // 1/2 logdet A = sum log L_jj
        if (!ok[b]) {
          std::fill(ai, ai + dz * dz, 0.0);
          continue;
        }
        // Lc^-1 (lower triangular) by forward substitution, then A^-1 = Lc^-T Lc^-1.
        for (int64_t c = 0; c < dz; ++c) {
          for (int64_t i = c; i < dz; ++i) {
            double v = (i == c) ? 1.0 : 0.0;
            for (int64_t k = c; k < i; ++k) v -= Lc[i * dz + k] * li[k * dz + c];
            li[i * dz + c] = v / Lc[i * dz + i];
          }
        }
        for (int64_t i = 0; i < dz; ++i)
          for (int64_t j = 0; j <= i; ++j) {
            double v = 0.0;
            for (int64_t k = i; k < dz; ++k) v += li[k * dz + i] * li[k * dz + j];
            ai[i * dz + j] = v;
            ai[j * dz + i] = v;
          }
      }
    }
    at::Tensor Y = at::bmm(Ainv, Jt);                      // (bc, dz, dx): rows y_k of the pseudo-inverse
    at::Tensor M = at::bmm(Y, T2t.transpose(1, 2));        // (bc, dz, P): M[k, p(i,j)] = y_k . T2_ij
    // tr(Y T_i) = sum_j <y_j, T3_ij>, with y_j replaced by W_last^T y_j when the last layer is linear (then N3 of the
    // last hidden layer stands for T3). Plain dot products (dz^2 per sample): a batched GEMV through at::bmm
    // measured 3x slower (14.6 ms vs ~4 ms at dz = 20, B = 256, one thread; 2-core AMD EPYC dev VM, 2026-11).
    at::Tensor Yh;
    const T* n3base = nullptr;
    int64_t n3 = dx;
    if (t3_mode == 1) {
      Yh = Y;
      n3base = out.data_ptr<T>() + o.t3 * dx;  // the flat buffer, laid out with width dx
    } else if (t3_mode == 2) {
      n3 = p_.width[p_.n_layers - 2];
      Yh = at::mm(Y.view({bc * dz, dx}), w_last64_);  // (bc*dz, w_prev)
      n3base = prev.data_ptr<T>() + o.t3 * n3;
    }
    // tr(A^-1 R_i^T R_i) = ||Lc^-1 R_i^T||_F^2 with R = (I - P_J) T2. Gather rfull[k, i, :] = R_(min(i,k),max(i,k))
    // (symmetric in (i, k)), so one triangular solve Lc U = rfull (dz x dz*dx per sample) serves every i.
    at::Tensor res;
    if (dx > dz) {
      at::Tensor R = at::baddbmm(T2t, M.transpose(1, 2), Jt, 1.0, -1.0);  // (bc, P, dx)
      at::Tensor rfull = ws.rfull.narrow(0, 0, bc * dz * dz * dx).view({bc, dz, dz * dx});
      const double* rp = R.data_ptr<double>();
      double* rf = rfull.data_ptr<double>();
      for (int64_t b = 0; b < bc; ++b) {
        const double* rb = rp + b * P * dx;
        double* fb = rf + b * dz * dz * dx;
        for (int64_t i = 0; i < dz; ++i)
          for (int64_t k = i; k < dz; ++k) {
            const double* src = rb + pair_index(i, k, dz) * dx;
            std::copy(src, src + dx, fb + (k * dz + i) * dx);
            if (k != i) std::copy(src, src + dx, fb + (i * dz + k) * dx);
          }
      }
      // Explicit Lc^-1 and one batched GEMM: LAPACK's triangular solve (half the flops) measured slower here
      // (33 vs 24 ms at dz = 20, B = 256; 2-core AMD EPYC dev VM, 2026-11), its per-matrix overhead dominating at these sizes.
      at::Tensor U = ws.u.narrow(0, 0, bc * dz * dz * dx).view({bc, dz, dz * dx});
      at::bmm_out(U, Linv, rfull);
      res = at::zeros({bc, dz}, A.options());
      const double* up = U.data_ptr<double>();
      double* rsp = res.data_ptr<double>();
      for (int64_t b = 0; b < bc; ++b)
        for (int64_t m = 0; m < dz; ++m)
          for (int64_t i = 0; i < dz; ++i) {
            const double* v = up + ((b * dz + m) * dz + i) * dx;
            double acc = 0.0;
#pragma omp simd reduction(+ : acc)
            for (int64_t r = 0; r < dx; ++r) acc += v[r] * v[r];
            rsp[b * dz + i] += acc;
          }
    }
    const double* Mp = M.data_ptr<double>();
    const double* Yhp = Yh.defined() ? Yh.data_ptr<double>() : nullptr;
    const double* resp = res.defined() ? res.data_ptr<double>() : nullptr;
    T* Vp = V_.data_ptr<T>();
    T* Lp = L_.data_ptr<T>();
    const T* sc = scale_.defined() ? scale_.data_ptr<T>() : nullptr;
    const double nan = std::numeric_limits<double>::quiet_NaN();
    std::vector<double> m1(dz), m2(dz);
    for (int64_t b = 0; b < bc; ++b) {
      const int64_t g = b0 + b;
      if (!ok[b]) {
        for (int64_t i = 0; i < 2 * dz; ++i) Vp[g * 2 * dz + i] = static_cast<T>(nan);
        Lp[g] = static_cast<T>(-std::numeric_limits<double>::infinity());
        continue;
      }
      const double* m = Mp + b * dz * P;
      auto Mij = [&](int64_t k, int64_t i, int64_t j) {  // E_i[k, j] = y_k . T2_ij
        return m[k * P + (i <= j ? pair_index(i, j, dz) : pair_index(j, i, dz))];
      };
      for (int64_t i = 0; i < dz; ++i) {
        double tr = 0.0, tr2 = 0.0;
        for (int64_t j = 0; j < dz; ++j) {
          tr += Mij(j, i, j);
          for (int64_t k = 0; k < dz; ++k) tr2 += Mij(j, i, k) * Mij(k, i, j);
        }
        double c3 = 0.0;
        if (t3_mode != 0) {
          for (int64_t j = 0; j < dz; ++j) {
            const double* yh = Yhp + (b * dz + j) * n3;
            const T* row = n3base + ((b * dz + i) * dz + j) * n3;
            double acc = 0.0;
#pragma omp simd reduction(+ : acc)
            for (int64_t r = 0; r < n3; ++r) acc += yh[r] * static_cast<double>(row[r]);
            c3 += acc;
          }
        }
        m1[i] = tr;
        m2[i] = c3 - tr2 + (resp ? resp[b * dz + i] : 0.0);
      }
      // FiLM: y = z * scale + shift, so d/dz_i = scale_i d/dy_i and log-volume gains sum log|scale_i|.
      double lv = half_logdet[b];
      for (int64_t i = 0; i < dz; ++i) {
        const double si = sc ? static_cast<double>(sc[g * dz + i]) : 1.0;
        Vp[g * 2 * dz + i] = static_cast<T>(si * m1[i]);
        Vp[g * 2 * dz + dz + i] = static_cast<T>(si * si * m2[i]);
        if (sc) lv += std::log(std::fabs(si));
      }
      Lp[g] = static_cast<T>(lv);
    }
  }

  const Plan& p_;
  const at::Tensor& z_;
  std::vector<at::Tensor> W_, b_;
  const at::Tensor& in_bias_;
  const at::Tensor& scale_;
  const at::Tensor& shift_;
  at::Tensor& V_;
  at::Tensor& L_;
  at::Tensor w0t_, w_last64_;
  std::vector<at::Tensor> wt_;
  int64_t rows_per_sample_ = 0, bc_ = 1;
};

using mech_derivs_checks::optional_per_sample;

std::tuple<at::Tensor, at::Tensor> mech_derivs_cpu(const at::Tensor& z_in, at::TensorList weights,
                                                   at::TensorList biases, const std::optional<at::Tensor>& in_bias,
                                                   const std::optional<at::Tensor>& film_scale,
                                                   const std::optional<at::Tensor>& film_shift,
                                                   at::ArrayRef<std::string> activations,
                                                   at::ArrayRef<double> act_params) {
  TORCH_CHECK(z_in.device().is_cpu(), "mech_derivs: z: expected a CPU tensor");
  const auto layers = mech_derivs_checks::check_layers(z_in, weights, biases, activations, act_params);
  const int64_t na = layers.n_act;
  Plan p;
  p.B = layers.B;
  p.dz = layers.dz;
  p.P = p.dz * (p.dz + 1) / 2;
  p.n_layers = layers.n_layers;
  p.n_act = na;
  p.last_linear = layers.last_linear;
  p.width = layers.width;
  p.dx = layers.dx;
  at::Tensor z = z_in.detach().contiguous();
  const std::vector<at::Tensor>& W = layers.W;
  const std::vector<at::Tensor>& bs = layers.b;
  p.wmax = *std::max_element(p.width.begin(), p.width.end());
  for (int64_t l = 0; l < na; ++l) {
    p.act.push_back(parse_act(std::string(activations[l])));
    p.param.push_back(act_params[l]);
    if (p.act.back() == Act::Softplus)
      TORCH_CHECK(act_params[l] > 0, "mech_derivs: act_params[", l, "]: softplus beta must be > 0, got ",
                  act_params[l]);
  }
  at::Tensor ib = optional_per_sample(in_bias, z, p.width[0], "in_bias");
  at::Tensor sc = optional_per_sample(film_scale, z, p.dz, "film_scale");
  at::Tensor sh = optional_per_sample(film_shift, z, p.dz, "film_shift");
  at::Tensor V = at::empty({p.B, 2 * p.dz}, z.options());
  at::Tensor L = at::empty({p.B}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "mech_derivs_cpu", [&] {
    Kernel<scalar_t> k(p, z, W, bs, ib, sc, sh, V, L);
    k.run();
  });
  return {V, L};
}

}  // namespace

TORCH_LIBRARY_IMPL(mclcore, CPU, m) { m.impl("mech_derivs", &mech_derivs_cpu); }

}  // namespace mclcore
