// CUDA implementation of mech_derivs, registered as the private op mclcore::_cuda_mech_derivs (schema identical to
// the public mech_derivs of csrc/registration.cpp; the Python dispatcher registers the public op's CUDA kernel and
// calls this one). Same algorithm, precision rules and outputs as csrc/mech_derivs/mech_derivs_cpu.cpp (read its
// header for the derivation; docs/DESIGN.md §2.3):
//
//   per sample, latent directions i, j: T1_j = dx/dz_j, T2_ij = d2x/dz_i dz_j (i <= j stored, P = dz(dz+1)/2 rows),
//   T3_ij = d3x/dz_i^2 dz_j (dz^2 rows). Linear layer A_n = W T_n; nonlinearity with s_k = s^(k)(a):
//     N1_j = s1 A1_j,  N2_ij = s2 A1_i A1_j + s1 A2_ij,  N3_ij = s3 A1_i^2 A1_j + s2 (2 A1_i A2_ij + A2_ii A1_j) + s1 A3_ij
//   Output: J = [T1_j], A = J^T J = Lc Lc^T, Y = A^-1 J^T, E_i = Y H_i (E_i[k, j] = y_k . T2_ij),
//     m'_i = tr(E_i),  m''_ii = tr(Y T_i) - tr(E_i^2) + ||Lc^-1 R_i^T||_F^2 with R = (I - J Y) T2 (only when dx > dz),
//     L = sum_j log Lc_jj (+ sum_i log|film_scale_i|),  V = (scale_i m'_i, scale_i^2 m''_ii).
//   A relative Cholesky pivot below 1e-13 marks J rank-deficient: V = NaN, L = -inf for that sample.
//
// Design. Samples go in chunks of bc (as many as fit MCLCORE_MECH_DERIVS_CUDA_BYTES, default 1 GiB, of workspace;
// at least one). A chunk's tangents are one stacked matrix of rows [values (bc)] [T1 (bc dz)] [T2 (bc P)]
// [T3 (bc dz^2)] of the current layer width, sample-major inside each block, exactly the CPU layout:
//  - the linear layers are one GEMM of the whole stack with W_l^T (at::mm_out on the device, i.e. cuBLAS; float32
//    stays float32 unless the user enabled TF32 matmuls globally -- torch.backends.cuda.matmul.allow_tf32 -- which
//    would cost the accuracy the CPU op has);
//  - the first layer and the nonlinearity rules are elementwise kernels with one thread per (sample, unit) or per
//    (sample, direction i, unit); consecutive threads take consecutive units, so every access to the stack is
//    coalesced. Activation derivatives s, s', s'', s''' are evaluated in float64 (as the CPU: act_eval) and stored
//    in the tangent dtype; the tangent rules run in the tangent dtype in the CPU's operation order.
//    Order per layer: values -> coefficients (values become s(a)), then the T3 rule (reads the incoming A1, A2),
//    then T2 (reads A1), then T1: four launches so that no thread reads a row another thread is rewriting;
//  - the output algebra runs in float64: A = J J^T (batched GEMM), then chol_kernel (one thread block per sample:
//    Cholesky with the CPU's relative pivot test, Lc^-1 by columns in parallel, A^-1 = Lc^-T Lc^-1, 1/2 logdet),
//    then batched GEMMs and reductions in ATen for Y, M = Y T2^T, tr(E_i), tr(E_i^2), tr(Y T_i) (a batched GEMV of
//    the T3 rows -- or the last hidden layer's N3 rows against W_last^T y_j when the last layer is linear) and the
//    residual term (index_select gathers R_(min(i,k),max(i,k)) so one batched GEMM with Lc^-1 serves every i).
// Why not one fused block-per-sample kernel: the stack of one sample is (1 + dz + P + dz^2) x width values (6.4 MB
// at dz = 64, width 256), far beyond shared memory, so it lives in global memory either way; batching the chunk's
// GEMMs through cuBLAS keeps the heavy part on tuned code and the hand-written parts elementwise (easy to get
// right without a GPU to test on). No limit on dz other than memory (one sample's workspace must fit).
// Memory: O(bc (dz^2 width + dz^2 dx + dz^3)) per chunk, independent of B. No host synchronisation.
// dtypes: float32 and float64 (as the CPU op). Outputs V (B, 2 dz), L (B,) contiguous in z's dtype.
#include <ATen/Dispatch.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/floor_divide.h>
#include <ATen/ops/maximum.h>
#include <ATen/ops/minimum.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "mech_derivs_checks.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace mclcore {
namespace {

using at::Tensor;

// tests/ops/test_cuda_compile.py runs the device code below on the CPU under a CUDA emulation: it takes this enum line
// and everything from "// sigma(a) and 1 - sigma(a)" up to blocks_for(), so keep device code there.
enum Act : int { kTanh = 0, kSigmoid, kSoftplus, kGelu, kSilu, kSmoothLeaky, kRelu, kLeakyRelu, kIdentity };

int parse_act(const std::string& s) {
  if (s == "tanh") return kTanh;
  if (s == "sigmoid") return kSigmoid;
  if (s == "softplus") return kSoftplus;
  if (s == "gelu") return kGelu;
  if (s == "silu") return kSilu;
  if (s == "smooth_leaky") return kSmoothLeaky;
  if (s == "relu") return kRelu;
  if (s == "leaky_relu") return kLeakyRelu;
  if (s == "identity") return kIdentity;
  TORCH_CHECK(false, "mech_derivs: activations: expected tanh, sigmoid, softplus, gelu, silu, smooth_leaky, relu, ",
              "leaky_relu or identity; got '", s, "'");
}

// sigma(a) and 1 - sigma(a) without cancellation.
__device__ __forceinline__ void sigmoid_pair(double a, double& sg, double& om) {
  if (a >= 0) {
    const double e = exp(-a);
    sg = 1.0 / (1.0 + e);
    om = e / (1.0 + e);
  } else {
    const double e = exp(a);
    sg = e / (1.0 + e);
    om = 1.0 / (1.0 + e);
  }
}

// s(a), s'(a), s''(a), s'''(a) in float64, the CPU's act_eval. p: softplus beta, or the (smooth) leaky slope.
__device__ void act_eval(int act, double p, double a, double* s) {
  switch (act) {
    case kTanh: {
      const double t = tanh(a), d = 1.0 - t * t;
      s[0] = t, s[1] = d, s[2] = -2.0 * t * d, s[3] = d * (4.0 * t * t - 2.0 * d);
      return;
    }
    case kSigmoid: {
      double sg, om;
      sigmoid_pair(a, sg, om);
      const double d1 = sg * om;
      s[0] = sg, s[1] = d1, s[2] = d1 * (om - sg), s[3] = d1 * (1.0 - 6.0 * d1);
      return;
    }
    case kSoftplus: {  // (1/beta) log(1 + exp(beta a))
      const double ba = p * a;
      double sg, om;
      sigmoid_pair(ba, sg, om);
      const double d1 = sg * om;
      s[0] = (fmax(ba, 0.0) + log1p(exp(-fabs(ba)))) / p;
      s[1] = sg, s[2] = p * d1, s[3] = p * p * d1 * (om - sg);
      return;
    }
    case kSmoothLeaky: {  // p a + (1 - p) softplus(a)
      double sg, om;
      sigmoid_pair(a, sg, om);
      const double d1 = sg * om, q = 1.0 - p;
      s[0] = p * a + q * (fmax(a, 0.0) + log1p(exp(-fabs(a))));
      s[1] = p + q * sg, s[2] = q * d1, s[3] = q * d1 * (om - sg);
      return;
    }
    case kGelu: {  // a Phi(a), exact erf form
      const double Phi = 0.5 * erfc(-a * 0.70710678118654752440);
      const double phi = 0.39894228040143267794 * exp(-0.5 * a * a);
      s[0] = a * Phi, s[1] = Phi + a * phi, s[2] = (2.0 - a * a) * phi, s[3] = (a * a * a - 4.0 * a) * phi;
      return;
    }
    case kSilu: {
      double sg, om;
      sigmoid_pair(a, sg, om);
      const double d1 = sg * om, d2 = d1 * (om - sg), d3 = d1 * (1.0 - 6.0 * d1);
      s[0] = a * sg, s[1] = sg + a * d1, s[2] = 2.0 * d1 + a * d2, s[3] = 3.0 * d2 + a * d3;
      return;
    }
    case kRelu:
      s[0] = a > 0 ? a : 0.0, s[1] = a > 0 ? 1.0 : 0.0, s[2] = 0.0, s[3] = 0.0;
      return;
    case kLeakyRelu:
      s[0] = a > 0 ? a : p * a, s[1] = a > 0 ? 1.0 : p, s[2] = 0.0, s[3] = 0.0;
      return;
    default:  // identity
      s[0] = a, s[1] = 1.0, s[2] = 0.0, s[3] = 0.0;
      return;
  }
}

constexpr double kPivotRtol = 1e-13;  // as the CPU op (see its output_algebra)

__host__ __device__ __forceinline__ int64_t pair_index(int64_t i, int64_t j, int64_t dz) {  // i <= j
  return i * dz - i * (i - 1) / 2 + (j - i);
}

// Row offsets of a chunk of bc samples inside the stack (in rows).
struct Off {
  int64_t t1, t2, t3, rows;
};

#define MCL_GRID_STRIDE(idx, total) \
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < (total); \
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x)

// First layer, one thread per (sample b, unit r): a = W_0 y + b_0 (+ in_bias) in float64 with y = z * scale + shift
// rounded to the generator's dtype; with an activation, values s(a) and coefficients s', s'', s''' (coef rows
// [k][b][r], k = 0..2); without, the values a.
template <typename T>
__global__ void first_layer_kernel(const T* __restrict__ z, const T* __restrict__ sc, const T* __restrict__ sh,
                                   const T* __restrict__ W, const T* __restrict__ bias, const T* __restrict__ ib,
                                   int64_t b0, int64_t bc, int64_t dz, int64_t n, int act, double prm,
                                   T* __restrict__ prim, T* __restrict__ coef) {
  MCL_GRID_STRIDE(idx, bc * n) {
    const int64_t b = idx / n, r = idx % n, g = b0 + b;
    double acc = static_cast<double>(bias[r]) + (ib != nullptr ? static_cast<double>(ib[g * n + r]) : 0.0);
    for (int64_t j = 0; j < dz; ++j) {
      double v = static_cast<double>(z[g * dz + j]);
      if (sc != nullptr) v *= static_cast<double>(sc[g * dz + j]);
      if (sh != nullptr) v += static_cast<double>(sh[g * dz + j]);
      const double y = static_cast<double>(static_cast<T>(v));
      acc += static_cast<double>(W[r * dz + j]) * y;
    }
    if (act >= 0) {
      double s[4];
      act_eval(act, prm, acc, s);
      prim[b * n + r] = static_cast<T>(s[0]);
      coef[(0 * bc + b) * n + r] = static_cast<T>(s[1]);
      coef[(1 * bc + b) * n + r] = static_cast<T>(s[2]);
      coef[(2 * bc + b) * n + r] = static_cast<T>(s[3]);
    } else {
      prim[b * n + r] = static_cast<T>(acc);
    }
  }
}

// First-layer tangents, one thread per (b, i, r): A1_i = W_0[:, i] for every sample and A2 = A3 = 0, so
// N3_ij = s3 w_i^2 w_j, N2_ij = s2 w_i w_j, N1_i = s1 w_i (or T1 = W_0 columns, T2 = T3 = 0 without activation).
template <typename T>
__global__ void first_tangents_kernel(const T* __restrict__ W, const T* __restrict__ coef, int64_t bc, int64_t dz,
                                      int64_t n, bool has_act, Off o, T* __restrict__ st) {
  const int64_t P = dz * (dz + 1) / 2;
  MCL_GRID_STRIDE(idx, bc * dz * n) {
    const int64_t r = idx % n, i = (idx / n) % dz, b = idx / (n * dz);
    T* t1 = st + (o.t1 + b * dz) * n;
    T* t2 = st + (o.t2 + b * P) * n;
    T* t3 = st + (o.t3 + b * dz * dz) * n;
    const T wi = W[r * dz + i];
    if (!has_act) {
      t1[i * n + r] = wi;
      for (int64_t j = 0; j < dz; ++j) t3[(i * dz + j) * n + r] = T(0);
      for (int64_t j = i; j < dz; ++j) t2[pair_index(i, j, dz) * n + r] = T(0);
      continue;
    }
    const T s1 = coef[(0 * bc + b) * n + r], s2 = coef[(1 * bc + b) * n + r], s3 = coef[(2 * bc + b) * n + r];
    for (int64_t j = 0; j < dz; ++j) t3[(i * dz + j) * n + r] = s3 * wi * wi * W[r * dz + j];
    for (int64_t j = i; j < dz; ++j) t2[pair_index(i, j, dz) * n + r] = s2 * wi * W[r * dz + j];
    t1[i * n + r] = s1 * wi;
  }
}

// Hidden layer, one thread per (b, r): the GEMM left W a_{l-1} in the value rows; add the bias (in T, as the CPU),
// then values <- s(a), coefficients s', s'', s'''.
template <typename T>
__global__ void coef_kernel(T* __restrict__ prim, const T* __restrict__ bias, int64_t bc, int64_t n, int act,
                            double prm, T* __restrict__ coef) {
  MCL_GRID_STRIDE(idx, bc * n) {
    const int64_t b = idx / n, r = idx % n;
    const T a = prim[b * n + r] + bias[r];
    double s[4];
    act_eval(act, prm, static_cast<double>(a), s);
    prim[b * n + r] = static_cast<T>(s[0]);
    coef[(0 * bc + b) * n + r] = static_cast<T>(s[1]);
    coef[(1 * bc + b) * n + r] = static_cast<T>(s[2]);
    coef[(2 * bc + b) * n + r] = static_cast<T>(s[3]);
  }
}

// Third-order rule, one thread per (b, i, r), in place over A3_i* (reads A1 and A2, which it does not write).
template <typename T>
__global__ void third_order_kernel(const T* __restrict__ coef, int64_t bc, int64_t dz, int64_t n, Off o, T* st) {
  const int64_t P = dz * (dz + 1) / 2;
  MCL_GRID_STRIDE(idx, bc * dz * n) {
    const int64_t r = idx % n, i = (idx / n) % dz, b = idx / (n * dz);
    const T* t1 = st + (o.t1 + b * dz) * n;
    const T* t2 = st + (o.t2 + b * P) * n;
    T* t3 = st + (o.t3 + b * dz * dz) * n;
    const T s1 = coef[(0 * bc + b) * n + r], s2 = coef[(1 * bc + b) * n + r], s3 = coef[(2 * bc + b) * n + r];
    const T a1i = t1[i * n + r];
    const T a2ii = t2[pair_index(i, i, dz) * n + r];
    for (int64_t j = 0; j < dz; ++j) {
      const T a1j = t1[j * n + r];
      const T a2ij = t2[(i <= j ? pair_index(i, j, dz) : pair_index(j, i, dz)) * n + r];
      T* a3 = t3 + (i * dz + j) * n + r;
      *a3 = s3 * a1i * a1i * a1j + s2 * (T(2) * a1i * a2ij + a2ii * a1j) + s1 * *a3;
    }
  }
}

// Second-order rule, one thread per (b, i, r), in place over A2_ij, j >= i (reads A1, not written here).
template <typename T>
__global__ void second_order_kernel(const T* __restrict__ coef, int64_t bc, int64_t dz, int64_t n, Off o, T* st) {
  const int64_t P = dz * (dz + 1) / 2;
  MCL_GRID_STRIDE(idx, bc * dz * n) {
    const int64_t r = idx % n, i = (idx / n) % dz, b = idx / (n * dz);
    const T* t1 = st + (o.t1 + b * dz) * n;
    T* t2 = st + (o.t2 + b * P) * n;
    const T s1 = coef[(0 * bc + b) * n + r], s2 = coef[(1 * bc + b) * n + r];
    const T a1i = t1[i * n + r];
    for (int64_t j = i; j < dz; ++j) {
      T* a2 = t2 + pair_index(i, j, dz) * n + r;
      *a2 = s2 * a1i * t1[j * n + r] + s1 * *a2;
    }
  }
}

// First-order rule, one thread per (b, i, r): A1_i <- s1 A1_i.
template <typename T>
__global__ void first_order_kernel(const T* __restrict__ coef, int64_t bc, int64_t dz, int64_t n, Off o, T* st) {
  MCL_GRID_STRIDE(idx, bc * dz * n) {
    const int64_t r = idx % n, i = (idx / n) % dz, b = idx / (n * dz);
    st[(o.t1 + b * dz + i) * n + r] *= coef[(0 * bc + b) * n + r];
  }
}

// One block per sample: Cholesky A = Lc Lc^T with the CPU's relative pivot test, Linv = Lc^-1 (lower; the caller
// zero-fills it), Ainv = Lc^-T Lc^-1, hl = sum log Lc_jj, ok = 0 / 1. A rank-deficient sample gets Ainv = 0.
// All matrices (bc, dz, dz) row-major float64 in global memory (L1/L2-resident at these sizes).
__global__ void chol_kernel(const double* __restrict__ A, int64_t dz, double* __restrict__ Lc_all,
                            double* __restrict__ Linv_all, double* __restrict__ Ainv_all, double* __restrict__ hl_out,
                            int* __restrict__ ok_out) {
  __shared__ int ok;
  __shared__ double hl;
  const int64_t b = blockIdx.x;
  const double* a = A + b * dz * dz;
  double* Lc = Lc_all + b * dz * dz;
  double* li = Linv_all + b * dz * dz;
  double* ai = Ainv_all + b * dz * dz;
  const int tid = threadIdx.x, nt = blockDim.x;
  if (tid == 0) {
    ok = 1;
    hl = 0.0;
  }
  __syncthreads();
  for (int64_t j = 0; j < dz; ++j) {
    if (tid == 0) {
      double d = a[j * dz + j];
      for (int64_t k = 0; k < j; ++k) d -= Lc[j * dz + k] * Lc[j * dz + k];
      // Relative pivot = sin^2 of the angle between column j of J and the span of the previous ones (see the CPU).
      if (!(d > kPivotRtol * a[j * dz + j]) || !isfinite(d)) {
        ok = 0;
      } else {
        const double ljj = sqrt(d);
        Lc[j * dz + j] = ljj;
        hl += log(ljj);
      }
    }
    __syncthreads();
    if (!ok) break;  // block-uniform (shared)
    const double ljj = Lc[j * dz + j];
    for (int64_t i = j + 1 + tid; i < dz; i += nt) {
      double v = a[i * dz + j];
      for (int64_t k = 0; k < j; ++k) v -= Lc[i * dz + k] * Lc[j * dz + k];
      Lc[i * dz + j] = v / ljj;
    }
    __syncthreads();
  }
  if (!ok) {
    for (int64_t e = tid; e < dz * dz; e += nt) ai[e] = 0.0;
    if (tid == 0) {
      ok_out[b] = 0;
      hl_out[b] = 0.0;
    }
    return;
  }
  // Lc^-1 column by column (columns are independent).
  for (int64_t c = tid; c < dz; c += nt) {
    for (int64_t i = c; i < dz; ++i) {
      double v = (i == c) ? 1.0 : 0.0;
      for (int64_t k = c; k < i; ++k) v -= Lc[i * dz + k] * li[k * dz + c];
      li[i * dz + c] = v / Lc[i * dz + i];
    }
  }
  __syncthreads();
  for (int64_t e = tid; e < dz * dz; e += nt) {
    const int64_t i = e / dz, j = e % dz;
    if (j > i) continue;
    double v = 0.0;
    for (int64_t k = i; k < dz; ++k) v += li[k * dz + i] * li[k * dz + j];
    ai[i * dz + j] = v;
    ai[j * dz + i] = v;
  }
  if (tid == 0) {
    ok_out[b] = 1;
    hl_out[b] = hl;
  }
}

unsigned blocks_for(int64_t total, int threads) {
  const int64_t b = (total + threads - 1) / threads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(b, int64_t(1) << 20)));  // grid-stride loops
}

struct Plan {
  int64_t B, dz, P, n_layers, dx, wmax, n_act;
  bool last_linear;
  std::vector<int64_t> width;
  std::vector<int> act;
  std::vector<double> param;
};

template <typename T>
class Runner {
 public:
  Runner(const Plan& p, const Tensor& z, const std::vector<Tensor>& W, const std::vector<Tensor>& bs,
         const Tensor& ib, const Tensor& sc, const Tensor& sh, Tensor& V, Tensor& L, cudaStream_t stream)
      : p_(p), z_(z), W_(W), b_(bs), ib_(ib), sc_(sc), sh_(sh), V_(V), L_(L), stream_(stream) {
    for (const auto& w : W_) wt_.push_back(w.t());
    if (p_.last_linear && p_.n_layers >= 2) w_last64_ = W_.back().to(at::kDouble).contiguous();  // (dx, w_prev)
    rows_per_sample_ = 1 + p_.dz + p_.P + p_.dz * p_.dz;
    // idx[k dz + i] = pair_index(min(i, k), max(i, k)): gathers the symmetric T2-indexed rows, built on the device.
    const int64_t dz = p_.dz;
    Tensor ar = at::arange(dz, z_.options().dtype(at::kLong));
    Tensor lo = at::minimum(ar.view({dz, 1}), ar.view({1, dz}));
    Tensor hi = at::maximum(ar.view({dz, 1}), ar.view({1, dz}));
    idx_ = (lo * dz - at::floor_divide(lo * (lo - 1), 2) + (hi - lo)).reshape({dz * dz}).contiguous();
  }

  void run() {
    const int64_t B = p_.B, dz = p_.dz, P = p_.P, dx = p_.dx, w = p_.wmax;
    const double sT = static_cast<double>(sizeof(T));
    const double per_sample =
        sT * (2.0 * rows_per_sample_ * w + 3.0 * w) +
        8.0 * (2.0 * dz * dx + 2.0 * P * dx + 5.0 * dz * dz + dz * P + 2.0 * dz * dz * dz + dz * dz * w + dz * w +
               3.0 * dz * dz * dx);
    const char* env = std::getenv("MCLCORE_MECH_DERIVS_CUDA_BYTES");
    const double budget = (env != nullptr && *env != '\0') ? std::strtod(env, nullptr) : double(int64_t(1) << 30);
    bc_ = std::max<int64_t>(1, std::min<int64_t>(B, static_cast<int64_t>(budget / per_sample)));
    stack_a_ = at::empty({bc_ * rows_per_sample_ * w}, z_.options());
    stack_b_ = at::empty({bc_ * rows_per_sample_ * w}, z_.options());
    coef_ = at::empty({3 * bc_ * w}, z_.options());
    for (int64_t b0 = 0; b0 < B; b0 += bc_) chunk(b0, std::min(bc_, B - b0));
  }

 private:
  Off offsets(int64_t bc) const {
    Off o;
    o.t1 = bc;
    o.t2 = o.t1 + bc * p_.dz;
    o.t3 = o.t2 + bc * p_.P;
    o.rows = o.t3 + bc * p_.dz * p_.dz;
    return o;
  }

  static Tensor view2d(const Tensor& flat, int64_t rows, int64_t cols) {
    return flat.narrow(0, 0, rows * cols).view({rows, cols});
  }

  void nonlinearity(T* st, const T* bias, int64_t bc, int64_t n, const Off& o, int act, double prm) {
    T* coef = coef_.mutable_data_ptr<T>();
    const int th = 256;
    coef_kernel<T><<<blocks_for(bc * n, th), th, 0, stream_>>>(st, bias, bc, n, act, prm, coef);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t total = bc * p_.dz * n;
    third_order_kernel<T><<<blocks_for(total, th), th, 0, stream_>>>(coef, bc, p_.dz, n, o, st);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    second_order_kernel<T><<<blocks_for(total, th), th, 0, stream_>>>(coef, bc, p_.dz, n, o, st);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    first_order_kernel<T><<<blocks_for(total, th), th, 0, stream_>>>(coef, bc, p_.dz, n, o, st);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  void chunk(int64_t b0, int64_t bc) {
    const Off o = offsets(bc);
    const int64_t nl = p_.n_layers, dz = p_.dz;
    Tensor cur = stack_a_, nxt = stack_b_;
    {
      const int64_t n = p_.width[0];
      const bool has_act = p_.n_act > 0;
      const int th = 256;
      first_layer_kernel<T><<<blocks_for(bc * n, th), th, 0, stream_>>>(
          z_.const_data_ptr<T>(), sc_.defined() ? sc_.const_data_ptr<T>() : nullptr,
          sh_.defined() ? sh_.const_data_ptr<T>() : nullptr, W_[0].const_data_ptr<T>(), b_[0].const_data_ptr<T>(),
          ib_.defined() ? ib_.const_data_ptr<T>() : nullptr, b0, bc, dz, n, has_act ? p_.act[0] : -1,
          has_act ? p_.param[0] : 0.0, cur.mutable_data_ptr<T>(), coef_.mutable_data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      first_tangents_kernel<T><<<blocks_for(bc * dz * n, th), th, 0, stream_>>>(
          W_[0].const_data_ptr<T>(), coef_.const_data_ptr<T>(), bc, dz, n, has_act, o, cur.mutable_data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    // t3_mode: 0 = T3 is zero, 1 = T3 rows are in `cur` (width dx), 2 = N3 rows of the last hidden layer are in
    // `prev` (width w_prev) and T3 = W_last N3.
    int t3_mode = (nl == 1 && p_.n_act == 0) ? 0 : 1;
    Tensor prev;
    for (int64_t l = 1; l < nl; ++l) {
      const int64_t nin = p_.width[l - 1], nout = p_.width[l];
      Tensor in2 = view2d(cur, o.rows, nin), out2 = view2d(nxt, o.rows, nout);
      if (l >= p_.n_act) {
        // Last, linear layer: only T1 and T2 go through the GEMM (the value x itself is not needed).
        Tensor out_rows = out2.narrow(0, o.t1, o.t3 - o.t1);
        at::mm_out(out_rows, in2.narrow(0, o.t1, o.t3 - o.t1), wt_[l]);
        t3_mode = 2;
        prev = cur;
        cur = nxt;
        break;
      }
      at::mm_out(out2, in2, wt_[l]);
      nonlinearity(nxt.mutable_data_ptr<T>(), b_[l].const_data_ptr<T>(), bc, nout, o, p_.act[l], p_.param[l]);
      std::swap(cur, nxt);
    }
    output_algebra(cur, prev, t3_mode, b0, bc, o);
  }

  void output_algebra(const Tensor& out, const Tensor& prev, int t3_mode, int64_t b0, int64_t bc, const Off& o) {
    const int64_t dz = p_.dz, P = p_.P, dx = p_.dx;
    const auto o64 = z_.options().dtype(at::kDouble);
    Tensor out2 = view2d(out, o.rows, dx);
    Tensor Jt = out2.narrow(0, o.t1, bc * dz).view({bc, dz, dx}).to(at::kDouble).contiguous();  // rows T1_j
    Tensor T2t = out2.narrow(0, o.t2, bc * P).view({bc, P, dx}).to(at::kDouble).contiguous();   // rows T2_(i<=j)
    Tensor A = at::bmm(Jt, Jt.transpose(1, 2)).contiguous();                                     // (bc, dz, dz)
    Tensor Lc = at::empty({bc, dz, dz}, o64);
    Tensor Linv = at::zeros({bc, dz, dz}, o64);
    Tensor Ainv = at::empty({bc, dz, dz}, o64);
    Tensor hl = at::empty({bc}, o64);
    Tensor ok = at::empty({bc}, z_.options().dtype(at::kInt));
    const int th = static_cast<int>(std::min<int64_t>(256, std::max<int64_t>(32, (dz + 31) / 32 * 32)));
    chol_kernel<<<static_cast<unsigned>(bc), th, 0, stream_>>>(
        A.const_data_ptr<double>(), dz, Lc.mutable_data_ptr<double>(), Linv.mutable_data_ptr<double>(),
        Ainv.mutable_data_ptr<double>(), hl.mutable_data_ptr<double>(), ok.mutable_data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    Tensor Y = at::bmm(Ainv, Jt);                // (bc, dz, dx): rows y_k of the pseudo-inverse
    Tensor M = at::bmm(Y, T2t.transpose(1, 2));  // (bc, dz, P): M[k, p(i,j)] = y_k . T2_ij
    // F[b, i, k, j] = E_i[k, j] = M[b, k, p(i, j)].
    Tensor F = M.index_select(2, idx_).view({bc, dz, dz, dz}).permute({0, 2, 1, 3});
    Tensor tr = F.diagonal(0, 2, 3).sum(-1);                     // (bc, dz): tr E_i
    Tensor m2 = -(F * F.transpose(2, 3)).sum(at::IntArrayRef{2, 3});  // -tr(E_i^2)
    if (t3_mode != 0) {
      // tr(Y T_i) = sum_j <y_j, T3_ij>; with a linear last layer T3_ij = W_last N3_ij, so y_j -> W_last^T y_j.
      Tensor Yh, N3;
      int64_t n3 = dx;
      if (t3_mode == 1) {
        Yh = Y;
        N3 = out2.narrow(0, o.t3, bc * dz * dz);
      } else {
        n3 = p_.width[p_.n_layers - 2];
        Yh = at::mm(Y.reshape({bc * dz, dx}), w_last64_);  // (bc dz, w_prev)
        N3 = view2d(prev, o.rows, n3).narrow(0, o.t3, bc * dz * dz);
      }
      // N3[b, i, (j, r)] against Yh[b, (j, r)]: a batched GEMV.
      Tensor N3d = N3.reshape({bc, dz, dz * n3}).to(at::kDouble);
      Tensor c3 = at::bmm(N3d, Yh.reshape({bc, dz * n3, 1})).squeeze(2);
      m2 = m2 + c3;
    }
    if (dx > dz) {
      // tr(A^-1 R_i^T R_i) = ||Lc^-1 R_i^T||_F^2 with R = (I - P_J) T2; rfull[b, k, (i, :)] = R_(min(i,k),max(i,k)).
      Tensor R = at::baddbmm(T2t, M.transpose(1, 2), Jt, 1.0, -1.0);  // (bc, P, dx)
      Tensor rfull = R.index_select(1, idx_).view({bc, dz, dz * dx});
      Tensor U = at::bmm(Linv, rfull);  // (bc, dz, dz dx)
      m2 = m2 + U.view({bc, dz, dz, dx}).square().sum(at::IntArrayRef{1, 3});
    }
    Tensor m1 = tr;
    Tensor lv = hl;
    if (sc_.defined()) {
      // FiLM: y = z * scale + shift, so d/dz_i = scale_i d/dy_i and the log-volume gains sum log|scale_i|.
      Tensor si = sc_.narrow(0, b0, bc).to(at::kDouble);
      m1 = m1 * si;
      m2 = m2 * si * si;
      lv = lv + si.abs().log().sum(1);
    }
    Tensor good = ok.ne(0);
    Tensor Vc = at::where(good.unsqueeze(1), at::cat({m1, m2}, 1), std::numeric_limits<double>::quiet_NaN());
    Tensor Lv = at::where(good, lv, -std::numeric_limits<double>::infinity());
    V_.narrow(0, b0, bc).copy_(Vc);
    L_.narrow(0, b0, bc).copy_(Lv);
  }

  const Plan& p_;
  const Tensor& z_;
  const std::vector<Tensor>& W_;
  const std::vector<Tensor>& b_;
  const Tensor& ib_;
  const Tensor& sc_;
  const Tensor& sh_;
  Tensor& V_;
  Tensor& L_;
  cudaStream_t stream_;
  std::vector<Tensor> wt_;
  Tensor w_last64_, idx_, stack_a_, stack_b_, coef_;
  int64_t rows_per_sample_ = 0, bc_ = 1;
};

using mech_derivs_checks::optional_per_sample;

std::tuple<Tensor, Tensor> mech_derivs_cuda(const Tensor& z_in, at::TensorList weights, at::TensorList biases,
                                            const std::optional<Tensor>& in_bias,
                                            const std::optional<Tensor>& film_scale,
                                            const std::optional<Tensor>& film_shift,
                                            at::ArrayRef<std::string> activations, at::ArrayRef<double> act_params) {
  TORCH_CHECK(z_in.device().is_cuda(), "mech_derivs: z: expected a CUDA tensor (CUDA kernel), got ", z_in.device());
  const c10::cuda::CUDAGuard guard(z_in.device());
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
  Tensor z = z_in.detach().contiguous();
  const std::vector<Tensor>& W = layers.W;
  const std::vector<Tensor>& bs = layers.b;
  p.wmax = *std::max_element(p.width.begin(), p.width.end());
  for (int64_t l = 0; l < na; ++l) {
    p.act.push_back(parse_act(std::string(activations[l])));
    p.param.push_back(act_params[l]);
    if (p.act.back() == kSoftplus)
      TORCH_CHECK(act_params[l] > 0, "mech_derivs: act_params[", l, "]: softplus beta must be > 0, got ",
                  act_params[l]);
  }
  Tensor ib = optional_per_sample(in_bias, z, p.width[0], "in_bias");
  Tensor sc = optional_per_sample(film_scale, z, p.dz, "film_scale");
  Tensor sh = optional_per_sample(film_shift, z, p.dz, "film_shift");
  Tensor V = at::empty({p.B, 2 * p.dz}, z.options());
  Tensor L = at::empty({p.B}, z.options());
  if (p.B == 0) return {V, L};
  // The tangent GEMMs and the float64 algebra need no autograd bookkeeping (V, L are not differentiable).
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(z.get_device()).stream();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "mech_derivs_cuda", [&] {
    Runner<scalar_t> r(p, z, W, bs, ib, sc, sh, V, L, stream);
    r.run();
  });
  return {V, L};
}

}  // namespace

// CUDA kernel of the private op _cuda_mech_derivs, whose schema (the public one's under another name)
// csrc/registration.cpp declares; mclcore/ops/_backend.py calls it from the public op's CUDA kernel when the
// "cuda" backend is selected.
TORCH_LIBRARY_IMPL(mclcore, CUDA, m) { m.impl("_cuda_mech_derivs", &mech_derivs_cuda); }

}  // namespace mclcore
