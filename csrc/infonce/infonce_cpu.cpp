// CPU kernels of mclcore::infonce, mclcore::infonce_backward and mclcore::infonce_with_grad (schemas in
// csrc/registration.cpp; docs/DESIGN.md §2.1, the paper's Eq. 18 / Algorithm 1 with the normalisation folded in).
//
//   q_i = p_i / max(|p_i|, eps),  k^_j = k_j / max(|k_j|, eps),  S_ij = q_i . k^_j / tau
//   loss = mean_i( lse_all_i - lse_pos_i ),  lse_all_i = logsumexp_j S_ij,
//   lse_pos_i = S_ii (groups undefined) or logsumexp_{j : groups[j] == groups[i]} S_ij (multi-positive mode).
//
// Rectangular mode (an offset given): B query rows against N >= B keys, S is B x N, row i's positive is key column
// c_i = offset + i and its own group id groups[c_i] (groups has one id per key, (N,)); every formula above and below
// holds with "ii" read as (i, c_i), i over the B rows, j over the N columns. The square mode is N = B, offset 0.
// Used across ranks: the B local queries against the N = world_size * B all-gathered keys, offset = rank * B.
//
// Tiled like flash attention: a row block of R rows meets the keys one column tile of C columns at a time
// (S_tile = at::mm of the normalised tiles), so neither pass ever holds more than an R x C piece of S.
// Forward keeps per-row running (max, sum) -- an online log-sum-exp -- and returns only lse_all/lse_pos (O(B)).
// The backward recomputes each tile from those row statistics:
//   dS_ij = g/B (exp(S_ij - lse_all_i) - [j in P(i)] exp(S_ij - lse_pos_i)),
//   dq_I += dS_IJ k^_J / tau,   dk^_J += dS_IJ^T q_I / tau,
// then goes back through the normalisation: dp_i = (dq_i - q_i (q_i . dq_i)) / |p_i| if |p_i| > eps, else dq_i/eps.
//
// Why an online maximum rather than the fixed shift 1/tau that |S_ij| <= 1/tau allows: with the fixed shift every
// exp argument lies in [-2/tau, 0], and a row whose entries all sit near -1/tau has a sum that underflows float32
// (exp(-87.3) is its smallest normal) once tau < 2/87.3 = 0.023 -- temperatures of 0.01-0.02 are used in practice.
// The online maximum costs one vectorised max pass over the tile and one exp per row and tile: max + exp + sum
// together take ~0.7 ns per entry here, against ~3 ns for the entry's share of one matrix product at d = 128
// (256 flops at ~85 GFLOP/s), so any tau > 0 works at no measurable cost.
//
// Parallel over row blocks. dk gathers contributions from every row block, so each worker accumulates into its own
// (B, d) buffer when (workers - 1) B d values fit a budget (32 MiB by default; MCLCORE_INFONCE_PARTIAL_BYTES
// overrides it, 0 forces the other path), else a second pass over column blocks recomputes S^T tile by tile
// (one extra matrix product per tile, no extra memory): memory stays O(B d + tile) whatever the thread count.
//
// Training path (infonce_with_grad, see fused_kernel): loss and gradients in one call with three matrix products
// instead of the four above (the backward's recomputation of S goes), by holding each row block's rows of S whole.
//
// dtypes: float32 and float64 computed natively; float16 / bfloat16 inputs are normalised into float32 and
// everything runs in float32 ("compute dtype" below): loss, lse_all and lse_pos come back in the compute dtype,
// dp and dk in the dtype of p and k.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include "../parallel.h"
#include "../simd.h"
#include "infonce_checks.h"
#include "infonce_members.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

// Elementwise work (exp, max, sums over tile rows, row norms) is written with the vector extensions of
// csrc/simd.h (AVX2+FMA and baseline builds of each float32 kernel, picked at run time). Measured on the 2-core AMD
// EPYC dev VM (2026-11): max + exp + sum over a tile row ~0.7 ns per entry with AVX2 (plain loops over exp did not vectorise
// at all: 3.7 ns). float64 (the accuracy path: tests, gradcheck) uses plain loops and libm's exp.
namespace {

using namespace mclcore::simd;  // NOLINT: exp_t, Vec, v8f / v4f, use_avx2 (csrc/simd.h)

using at::Tensor;
using mclcore::mm_acc;                       // csrc/parallel.h
using mclcore::parallel_for_below_autograd;  // csrc/parallel.h

// Tile geometry. R <= 128 rows per block and C = 256 columns per tile: an R x C float tile is 128 KiB and the key
// tile (C x d, d = 128) another 128 KiB, which stay in the 512 KiB per-core L2 of the 2-core AMD EPYC dev VM (2026-11). Measured there
// (one core, d = 128): at::mm / addmm_ on 128 x 256 tiles run at 79-86 GFLOP/s, within 5% of one 256 x 256
// product; 64 x 256 at 75-83, 128 x 512 at 71-77 (the tile leaves L2).
constexpr int64_t kMaxRowBlock = 128;
constexpr int64_t kMinRowBlock = 16;
constexpr int64_t kColTile = 256;
constexpr int64_t kDefaultPartialBudget = int64_t(32) << 20;
// Fused path (infonce_with_grad): R_f x B panels of S, one per worker, together within a budget of
// max(kFusedBudgetFloor, B d values) -- so memory stays O(B d + 8 MiB) -- that MCLCORE_INFONCE_FUSED_BYTES overrides
// (0 forces the recompute path). See fused_kernel for R_f and the measurements behind these numbers.
constexpr int64_t kFusedBudgetFloor = int64_t(8) << 20;
constexpr int64_t kMinFusedRows = 128;
constexpr int64_t kMaxFusedRows = 256;
constexpr int64_t kPanelCacheBytes = int64_t(1) << 20;

template <typename T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

// ------------------------------------------------------------------------------------------------------------
// Elementwise pieces, scalar versions (float64, tails of float32 rows, compilers without vector extensions).


template <typename T>
MCL_INLINE T row_max_scalar(const T* x, int64_t n, T m) {
  for (int64_t j = 0; j < n; ++j) m = m > x[j] ? m : x[j];
  return m;
}

// x_j <- exp(x_j - shift); returns their sum.
template <typename T>
MCL_INLINE T exp_shift_sum_scalar(T* x, int64_t n, T shift) {
  T s = 0;
  for (int64_t j = 0; j < n; ++j) {
    x[j] = exp_t(x[j] - shift);
    s += x[j];
  }
  return s;
}

// out_j <- x_j where ids_j == g, else -inf.
template <typename T>
MCL_INLINE void mask_row_scalar(const T* x, const int32_t* ids, int32_t g, T* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = ids[j] == g ? x[j] : kNegInf<T>;
}

// x_j <- coef * (exp(x_j - a) - [ids_j == g] exp(x_j - b)); ids null: without the second term.
template <typename T>
MCL_INLINE void ds_row_scalar(T* x, const int32_t* ids, int32_t g, int64_t n, T a, T b, T coef) {
  if (ids == nullptr) {
    for (int64_t j = 0; j < n; ++j) x[j] = coef * exp_t(x[j] - a);
  } else {
    for (int64_t j = 0; j < n; ++j) x[j] = coef * (exp_t(x[j] - a) - (ids[j] == g ? exp_t(x[j] - b) : T(0)));
  }
}

// Sum of the x_j with ids_j == g.
template <typename T>
MCL_INLINE T masked_sum_scalar(const T* x, const int32_t* ids, int32_t g, int64_t n, T s) {
  for (int64_t j = 0; j < n; ++j) s += ids[j] == g ? x[j] : T(0);
  return s;
}

// x_j <- x_j * (ids_j == g ? apos : a); ids null: x_j <- a x_j.
template <typename T>
MCL_INLINE void scale_row_scalar(T* x, const int32_t* ids, int32_t g, int64_t n, T a, T apos) {
  if (ids == nullptr) {
    for (int64_t j = 0; j < n; ++j) x[j] *= a;
  } else {
    for (int64_t j = 0; j < n; ++j) x[j] *= ids[j] == g ? apos : a;
  }
}

template <typename In>
MCL_INLINE double sum_squares_scalar(const In* x, int64_t n, double s) {
  for (int64_t j = 0; j < n; ++j) {
    const double v = static_cast<double>(x[j]);
    s += v * v;
  }
  return s;
}

// Row-wise operations on a tile, for one "vector type" V: float32 / float64 scalars (Scalar<T>) or float32 SIMD
// vectors (Simd<V> below). All are always-inlined into the per-ISA entry points further down.
template <typename T>
struct Scalar {
  using value = T;
  static MCL_INLINE T row_max(const T* x, int64_t n) { return row_max_scalar(x, n, kNegInf<T>); }
  static MCL_INLINE T exp_shift_sum(T* x, int64_t n, T shift) { return exp_shift_sum_scalar(x, n, shift); }
  static MCL_INLINE T exp_shift_sum_nc(T* x, int64_t n, T shift) { return exp_shift_sum_scalar(x, n, shift); }
  static MCL_INLINE void mask_row(const T* x, const int32_t* ids, int32_t g, T* out, int64_t n) {
    mask_row_scalar(x, ids, g, out, n);
  }
  static MCL_INLINE void ds_row(T* x, const int32_t* ids, int32_t g, int64_t n, T a, T b, T coef) {
    ds_row_scalar(x, ids, g, n, a, b, coef);
  }
  static MCL_INLINE T masked_sum(const T* x, const int32_t* ids, int32_t g, int64_t n) {
    return masked_sum_scalar(x, ids, g, n, T(0));
  }
  static MCL_INLINE void scale_row(T* x, const int32_t* ids, int32_t g, int64_t n, T a, T apos) {
    scale_row_scalar(x, ids, g, n, a, apos);
  }
  template <typename In>
  static MCL_INLINE double sum_squares(const In* x, int64_t n) { return sum_squares_scalar(x, n, 0.0); }
  static MCL_INLINE T dot(const T* a, const T* b, int64_t n) {
    T s = 0;
    for (int64_t j = 0; j < n; ++j) s += a[j] * b[j];
    return s;
  }
};

#if MCL_VEC
template <typename V>
struct Simd : mclcore::simd::Vec<V> {
  using Base = mclcore::simd::Vec<V>;
  using typename Base::I;
  using Base::L;
  using Base::splat;
  using Base::load;
  using Base::loadi;
  using Base::store;
  using Base::exp;
  using Base::exp_nc;
  using Base::hmax;
  using Base::hsum;
  using value = float;

  static MCL_INLINE float row_max(const float* x, int64_t n) {
    V acc = splat(kNegInf<float>);
    int64_t j = 0;
    for (; j + L <= n; j += L) {
      const V v = load(x + j);
      acc = v > acc ? v : acc;
    }
    return row_max_scalar(x + j, n - j, hmax(acc));
  }
  static MCL_INLINE float exp_shift_sum(float* x, int64_t n, float shift) {
    V acc = splat(0.0f);
    int64_t j = 0;
    for (; j + L <= n; j += L) {
      const V e = exp(load(x + j) - shift);
      store(x + j, e);
      acc += e;
    }
    return hsum(acc) + exp_shift_sum_scalar(x + j, n - j, shift);
  }
  static MCL_INLINE float exp_shift_sum_nc(float* x, int64_t n, float shift) {
    V acc = splat(0.0f);
    int64_t j = 0;
    for (; j + L <= n; j += L) {
      const V e = exp_nc(load(x + j) - shift);
      store(x + j, e);
      acc += e;
    }
    return hsum(acc) + exp_shift_sum_scalar(x + j, n - j, shift);
  }
  static MCL_INLINE void mask_row(const float* x, const int32_t* ids, int32_t g, float* out, int64_t n) {
    int64_t j = 0;
    for (; j + L <= n; j += L) store(out + j, loadi(ids + j) == g ? load(x + j) : splat(kNegInf<float>));
    mask_row_scalar(x + j, ids + j, g, out + j, n - j);
  }
  static MCL_INLINE void ds_row(float* x, const int32_t* ids, int32_t g, int64_t n, float a, float b, float coef) {
    int64_t j = 0;
    if (ids == nullptr) {
      for (; j + L <= n; j += L) store(x + j, coef * exp(load(x + j) - a));
    } else {
      for (; j + L <= n; j += L) {
        const V v = load(x + j);
        const V pos = exp(loadi(ids + j) == g ? v - b : splat(kNegInf<float>));
        store(x + j, coef * (exp(v - a) - pos));
      }
    }
    ds_row_scalar(x + j, ids ? ids + j : nullptr, g, n - j, a, b, coef);
  }
  static MCL_INLINE float masked_sum(const float* x, const int32_t* ids, int32_t g, int64_t n) {
    V acc = splat(0.0f);
    int64_t j = 0;
    for (; j + L <= n; j += L) acc += loadi(ids + j) == g ? load(x + j) : splat(0.0f);
    return masked_sum_scalar(x + j, ids + j, g, n - j, hsum(acc));
  }
  static MCL_INLINE void scale_row(float* x, const int32_t* ids, int32_t g, int64_t n, float a, float apos) {
    int64_t j = 0;
    if (ids == nullptr) {
      for (; j + L <= n; j += L) store(x + j, load(x + j) * a);
    } else {
      const V va = splat(a), vp = splat(apos);
      for (; j + L <= n; j += L) store(x + j, load(x + j) * (loadi(ids + j) == g ? vp : va));
    }
    scale_row_scalar(x + j, ids ? ids + j : nullptr, g, n - j, a, apos);
  }
  // In float32 (inf when a finite row's squares overflow; the caller then rescales in float64).
  static MCL_INLINE double sum_squares(const float* x, int64_t n) {
    V acc = splat(0.0f);
    int64_t j = 0;
    for (; j + L <= n; j += L) {
      const V v = load(x + j);
      acc += v * v;
    }
    return sum_squares_scalar(x + j, n - j, static_cast<double>(hsum(acc)));
  }
  template <typename In>  // float16 / bfloat16 inputs
  static MCL_INLINE double sum_squares(const In* x, int64_t n) { return sum_squares_scalar(x, n, 0.0); }
  static MCL_INLINE float dot(const float* a, const float* b, int64_t n) {
    V acc = splat(0.0f);
    int64_t j = 0;
    for (; j + L <= n; j += L) acc += load(a + j) * load(b + j);
    float s = hsum(acc);
    for (; j < n; ++j) s += a[j] * b[j];
    return s;
  }
};
#endif  // MCL_VEC

// Online log-sum-exp update of one row with n new values (overwritten): (m, s) stands for m + log(s).
template <typename K, typename T>
MCL_INLINE void lse_update(T* x, int64_t n, T& m, T& s) {
  const T mt = K::row_max(x, n);
  if (mt == kNegInf<T>) return;  // a masked row piece without positives
  const T mn = m > mt ? m : mt;
  s = s * exp_t(m - mn) + K::exp_shift_sum(x, n, mn);  // exp(-inf) = 0 on the first tile
  m = mn;
}

// Forward: fold one r x c tile of S (row stride c; overwritten) into the running statistics of its rows.
// gi/gj: dense group ids of the tile's rows/columns, or null in diagonal mode. scratch: c values.
template <typename K, typename T>
MCL_INLINE void fwd_tile_body(T* S, int64_t r, int64_t c, T* m, T* s, const int32_t* gi, const int32_t* gj, T* mp,
                              T* sp, T* scratch) {
  for (int64_t ii = 0; ii < r; ++ii) {
    T* x = S + ii * c;
    if (gi != nullptr) {
      K::mask_row(x, gj, gi[ii], scratch, c);
      lse_update<K>(scratch, c, mp[ii], sp[ii]);
    }
    lse_update<K>(x, c, m[ii], s[ii]);
  }
}

// Backward: overwrite an r x c tile of S with coef * (exp(S_ij - la_i) - [g_j == g_i] exp(S_ij - lp_i)); in
// diagonal mode (gi null) without the positive term, which the caller subtracts on the diagonal.
template <typename K, typename T>
MCL_INLINE void bwd_tile_body(T* S, int64_t r, int64_t c, const T* la, const T* lp, const int32_t* gi,
                              const int32_t* gj, T coef) {
  for (int64_t ii = 0; ii < r; ++ii)
    K::ds_row(S + ii * c, gi ? gj : nullptr, gi ? gi[ii] : 0, c, la[ii], gi ? lp[ii] : T(0), coef);
}

// Fused path (infonce_with_grad): the r x n panel S holds whole rows i0 .. i0 + r - 1 of S (n = B columns), so each
// row's statistics are final after two passes over it and S becomes dS in place with one exp per entry:
//   m_i = max_j S_ij,  e_ij = exp(S_ij - m_i) (stored over S),  s_i = sum_j e_ij,  lse_all_i = m_i + log s_i;
//   diagonal mode: loss_i = (m_i - S_ii) + log s_i,  dS_ij = coef (e_ij / s_i - [i == j]);
//   multi-positive: t_i = sum_{j in P(i)} e_ij = exp(lse_pos_i - m_i),  loss_i = log s_i - log t_i,
//                   dS_ij = coef e_ij (1 / s_i - [j in P(i)] / t_i)   (exp(S_ij - lse_pos_i) = e_ij / t_i).
// t_i shares the shift m_i, so positives more than ~87 below the row maximum underflow to 0 in float32 (-708 in
// float64). They only matter when the positive mass itself is that far down: when t_i < kMinPosMass (e^-30) the
// row's positive terms are recomputed from q_i and the keys (d flops per positive, into scratch) with their own
// maximum -- e.g. tau = 0.01 with every positive anti-aligned. Otherwise every flushed positive is below
// e^-57 t_i, far under float32 rounding. loss_rows (r entries) get the row terms in float64, clamped at 0 (two
// sums over nested sets can disagree in the last ulp). Row ii's positive is column c0 + ii (the diagonal when c0 =
// i0; offset + i0 in rectangular mode), and its group id ids[c0 + ii]. qs: the r rows q_i / tau (row stride d); kn:
// all n unit keys.
template <typename T>
constexpr T kMinPosMass = T(9.357622968840175e-14);  // e^-30
// |S_ij| <= 1/tau (unit rows), so with the fixed shift 1/tau every exp argument lies in [-2/tau, 0]: no exp
// underflows while 2/tau stays within this range (tau >= 0.025 in float32, 0.00286 in float64).
template <typename T>
constexpr T kFixedShiftRange = sizeof(T) == 4 ? T(80) : T(700);

template <typename K, typename T>
MCL_INLINE void fused_rows_body(T* S, int64_t r, int64_t n, int64_t c0, const int32_t* ids, T coef, T shift,
                                double* loss_rows, const T* qs, const T* kn, int64_t d, T* scratch) {
  const bool fixed = !std::isnan(shift);
  for (int64_t ii = 0; ii < r; ++ii) {
    T* x = S + ii * n;
    const int64_t c = c0 + ii;  // the row's positive column
    const T m = fixed ? shift : K::row_max(x, n);
    if (ids == nullptr) {
      const T sii = x[c];
      const T s = fixed ? K::exp_shift_sum_nc(x, n, m) : K::exp_shift_sum(x, n, m);
      loss_rows[ii] =
          std::max(0.0, (static_cast<double>(m) - static_cast<double>(sii)) + std::log(static_cast<double>(s)));
      K::scale_row(x, nullptr, 0, n, coef / s, T(0));
      x[c] -= coef;
      continue;
    }
    const int32_t g = ids[c];
    const T s = fixed ? K::exp_shift_sum_nc(x, n, m) : K::exp_shift_sum(x, n, m);
    const T t = K::masked_sum(x, ids, g, n);
    if (fixed || t >= kMinPosMass<T>) {
      loss_rows[ii] = std::max(0.0, std::log(static_cast<double>(s)) - std::log(static_cast<double>(t)));
      K::scale_row(x, ids, g, n, coef / s, coef / s - coef / t);
      continue;
    }
    // Rare: the positive mass is far below the row maximum. Recompute the positive entries of S_i.
    const T* qi = qs + ii * d;
    T mp = kNegInf<T>;
    for (int64_t j = 0; j < n; ++j) {
      if (ids[j] != g) continue;
      scratch[j] = K::dot(qi, kn + j * d, d);
      mp = std::max(mp, scratch[j]);
    }
    T sp = 0;
    for (int64_t j = 0; j < n; ++j)
      if (ids[j] == g) sp += exp_t(scratch[j] - mp);
    const double lp = static_cast<double>(mp) + std::log(static_cast<double>(sp));
    const double la = static_cast<double>(m) + std::log(static_cast<double>(s));
    loss_rows[ii] = std::max(0.0, la - lp);
    const T a = coef / s, lpt = static_cast<T>(lp);
    for (int64_t j = 0; j < n; ++j) x[j] = a * x[j] - (ids[j] == g ? coef * exp_t(scratch[j] - lpt) : T(0));
  }
}

// out_i = x_i * scale / max(|x_i|, eps) for rows [b0, b1) of a (., d) matrix; norms_i = |x_i| in float64 (a finite
// float32 row's norm may exceed FLT_MAX). Rows whose sum of squares overflows are rescaled by their largest
// magnitude; a row holding NaN/inf gets norm NaN and is left for the caller to report.
template <typename K, typename In, typename T>
MCL_INLINE void normalise_rows_body(const In* x, T* out, double* norms, int64_t b0, int64_t b1, int64_t d,
                                    double scale, double eps) {
  for (int64_t i = b0; i < b1; ++i) {
    const In* xi = x + i * d;
    const double ss = K::sum_squares(xi, d);
    double nr;
    if (std::isfinite(ss)) {
      nr = std::sqrt(ss);
    } else {  // a NaN or an infinity in the row, or a finite row whose squares overflow: find out which
      double amax = 0;
      bool finite = true;
      for (int64_t j = 0; j < d; ++j) {
        const double v = static_cast<double>(xi[j]);
        finite = finite && std::isfinite(v);
        amax = std::max(amax, std::abs(v));
      }
      if (!finite) {
        norms[i] = std::numeric_limits<double>::quiet_NaN();
        continue;
      }
      double s = 0;
      for (int64_t j = 0; j < d; ++j) {
        const double v = static_cast<double>(xi[j]) / amax;
        s += v * v;
      }
      nr = amax * std::sqrt(s);
    }
    norms[i] = nr;
    const double f = scale / std::max(nr, eps);
    T* oi = out + i * d;
    if (f <= static_cast<double>(std::numeric_limits<T>::max())) {
      const T ft = static_cast<T>(f);
      for (int64_t j = 0; j < d; ++j) oi[j] = static_cast<T>(xi[j]) * ft;
    } else {  // a tiny row with a large 1 / (eps tau): scale in float64 so the factor cannot overflow
      for (int64_t j = 0; j < d; ++j) oi[j] = static_cast<T>(static_cast<double>(xi[j]) * f);
    }
  }
}

// Rows [b0, b1), into out (which may be g or u): the gradient w.r.t. the raw row x_i of u_i = x_i / max(|x_i|, eps)
// given the gradient G_i w.r.t. u_i: (G_i - u_i (u_i . G_i)) / |x_i| when |x_i| > eps, else G_i / eps.
// G_i = gscale * g_i and u_i = uscale * (stored row), which folds in the 1/tau factors.
template <typename K, typename T>
MCL_INLINE void normalise_backward_body(const T* g, const T* u, T* out, const double* norms, int64_t b0, int64_t b1,
                                        int64_t d, T uscale, T gscale, double eps) {
  for (int64_t i = b0; i < b1; ++i) {
    const T* gi = g + i * d;
    const T* ui = u + i * d;
    T* oi = out + i * d;
    if (norms[i] > eps) {
      const T dot = K::dot(ui, gi, d) * uscale * gscale;
      const T inv = static_cast<T>(1.0 / norms[i]);
      const T a = gscale * inv, b = uscale * dot * inv;
      for (int64_t j = 0; j < d; ++j) oi[j] = a * gi[j] - b * ui[j];
    } else {
      const T f = static_cast<T>(static_cast<double>(gscale) / eps);
      for (int64_t j = 0; j < d; ++j) oi[j] = gi[j] * f;
    }
  }
}

// Per-ISA entry points. float64 and the non-vector fallback use Scalar<T>.
#define MCL_KERNEL_ENTRIES(SUFFIX, ATTR, K)                                                                       \
  ATTR void fwd_tile_##SUFFIX(float* S, int64_t r, int64_t c, float* m, float* s, const int32_t* gi,              \
                              const int32_t* gj, float* mp, float* sp, float* scratch) {                         \
    fwd_tile_body<K>(S, r, c, m, s, gi, gj, mp, sp, scratch);                                                     \
  }                                                                                                               \
  ATTR void bwd_tile_##SUFFIX(float* S, int64_t r, int64_t c, const float* la, const float* lp,                   \
                              const int32_t* gi, const int32_t* gj, float coef) {                                \
    bwd_tile_body<K>(S, r, c, la, lp, gi, gj, coef);                                                              \
  }                                                                                                               \
  ATTR void fused_rows_##SUFFIX(float* S, int64_t r, int64_t n, int64_t c0, const int32_t* ids, float coef,       \
                                float shift, double* loss_rows, const float* qs, const float* kn, int64_t d,     \
                                float* scratch) {                                                                 \
    fused_rows_body<K>(S, r, n, c0, ids, coef, shift, loss_rows, qs, kn, d, scratch);                             \
  }                                                                                                               \
  template <typename In>                                                                                          \
  ATTR void normalise_rows_##SUFFIX(const In* x, float* out, double* norms, int64_t b0, int64_t b1, int64_t d,     \
                                    double scale, double eps) {                                                  \
    normalise_rows_body<K>(x, out, norms, b0, b1, d, scale, eps);                                                 \
  }                                                                                                               \
  ATTR void normalise_backward_##SUFFIX(const float* g, const float* u, float* out, const double* norms,          \
                                        int64_t b0, int64_t b1, int64_t d, float uscale, float gscale,          \
                                        double eps) {                                                            \
    normalise_backward_body<K>(g, u, out, norms, b0, b1, d, uscale, gscale, eps);                                 \
  }

#if MCL_VEC
#if MCL_X86_DISPATCH
MCL_KERNEL_ENTRIES(avx2, MCL_ATTR_AVX2, Simd<v8f>)
#endif
MCL_KERNEL_ENTRIES(base, MCL_ATTR_BASE, Simd<v4f>)
#else
MCL_KERNEL_ENTRIES(base, , Scalar<float>)
#endif

void fwd_tile(float* S, int64_t r, int64_t c, float* m, float* s, const int32_t* gi, const int32_t* gj, float* mp,
              float* sp, float* scratch) {
  MCL_DISPATCH(fwd_tile, S, r, c, m, s, gi, gj, mp, sp, scratch);
}
void fwd_tile(double* S, int64_t r, int64_t c, double* m, double* s, const int32_t* gi, const int32_t* gj,
              double* mp, double* sp, double* scratch) {
  fwd_tile_body<Scalar<double>>(S, r, c, m, s, gi, gj, mp, sp, scratch);
}
void bwd_tile(float* S, int64_t r, int64_t c, const float* la, const float* lp, const int32_t* gi, const int32_t* gj,
              float coef) {
  MCL_DISPATCH(bwd_tile, S, r, c, la, lp, gi, gj, coef);
}
void bwd_tile(double* S, int64_t r, int64_t c, const double* la, const double* lp, const int32_t* gi,
              const int32_t* gj, double coef) {
  bwd_tile_body<Scalar<double>>(S, r, c, la, lp, gi, gj, coef);
}
void fused_rows(float* S, int64_t r, int64_t n, int64_t c0, const int32_t* ids, float coef, float shift,
                double* loss_rows, const float* qs, const float* kn, int64_t d, float* scratch) {
  MCL_DISPATCH(fused_rows, S, r, n, c0, ids, coef, shift, loss_rows, qs, kn, d, scratch);
}
void fused_rows(double* S, int64_t r, int64_t n, int64_t c0, const int32_t* ids, double coef, double shift,
                double* loss_rows, const double* qs, const double* kn, int64_t d, double* scratch) {
  fused_rows_body<Scalar<double>>(S, r, n, c0, ids, coef, shift, loss_rows, qs, kn, d, scratch);
}
template <typename In>
void normalise_rows(const In* x, float* out, double* norms, int64_t b0, int64_t b1, int64_t d, double scale,
                    double eps) {
  MCL_DISPATCH(normalise_rows, x, out, norms, b0, b1, d, scale, eps);
}
template <typename In>
void normalise_rows(const In* x, double* out, double* norms, int64_t b0, int64_t b1, int64_t d, double scale,
                    double eps) {
  normalise_rows_body<Scalar<double>>(x, out, norms, b0, b1, d, scale, eps);
}
void normalise_backward_rows(const float* g, const float* u, float* out, const double* norms, int64_t b0,
                             int64_t b1, int64_t d, float uscale, float gscale, double eps) {
  MCL_DISPATCH(normalise_backward, g, u, out, norms, b0, b1, d, uscale, gscale, eps);
}
void normalise_backward_rows(const double* g, const double* u, double* out, const double* norms, int64_t b0,
                             int64_t b1, int64_t d, double uscale, double gscale, double eps) {
  normalise_backward_body<Scalar<double>>(g, u, out, norms, b0, b1, d, uscale, gscale, eps);
}

// Normalised inputs of both kernels. B query rows, N key rows (N = B in square mode); row i's positive is key
// column off + i (off = 0 in square mode).
struct Inputs {
  Tensor qs, kn;                  // (B, d) and (N, d), compute dtype, contiguous: q / tau and the unit keys k^
  std::vector<double> pnorm, knorm;  // |p_i|, |k_j| in float64 (a finite float32 row's norm may exceed FLT_MAX)
  std::vector<int32_t> ids;       // dense group ids (0..n_groups-1) of the N keys, empty in diagonal mode
  const int32_t* groups = nullptr;
  int64_t B = 0, N = 0, d = 0, off = 0;
};

// Group ids are compared for equality only; renumbering them densely as int32 (sort, O(N log N)) lets the tile
// loops compare 8 ids per instruction next to 8 floats.
void dense_ids(const Tensor& groups, Inputs& in) {
  const Tensor g = groups.contiguous();
  const int64_t* v = g.const_data_ptr<int64_t>();
  const int64_t n = g.size(0);
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [v](int64_t a, int64_t b) { return v[a] < v[b]; });
  in.ids.assign(n, 0);
  int32_t next = 0;
  for (int64_t t = 0; t < n; ++t) {
    if (t > 0 && v[order[t]] != v[order[t - 1]]) ++next;
    in.ids[order[t]] = next;
  }
  in.groups = in.ids.data();
}

// qs_i = p_i / (tau max(|p_i|, eps)) and kn_j = k_j / max(|k_j|, eps) in the compute dtype T, one parallel region
// for both. Raises if a row is not finite, naming the argument and the row.
template <typename T, typename In>
Inputs prepare(const Tensor& p, const Tensor& k, const std::optional<Tensor>& groups, double tau, double eps,
               int64_t off) {
  Inputs in;
  in.B = p.size(0);
  in.N = k.size(0);
  in.d = p.size(1);
  in.off = off;
  const int64_t B = in.B, N = in.N, d = in.d;
  const Tensor pc = p.contiguous(), kc = k.contiguous();
  const auto opts = pc.options().dtype(c10::CppTypeToScalarType<T>::value);
  in.qs = at::empty({B, d}, opts);
  in.kn = at::empty({N, d}, opts);
  in.pnorm.resize(B);
  in.knorm.resize(N);
  const In* src[2] = {pc.const_data_ptr<In>(), kc.const_data_ptr<In>()};
  T* dst[2] = {in.qs.mutable_data_ptr<T>(), in.kn.mutable_data_ptr<T>()};
  double* nrm[2] = {in.pnorm.data(), in.knorm.data()};
  const double scale[2] = {1.0 / tau, 1.0};
  const int64_t first[2] = {0, B}, count[2] = {B, N};
  // Rows [0, B) are p's, [B, B + N) k's: one parallel region for both.
  at::parallel_for(0, B + N, std::max<int64_t>(1, 16384 / d), [&](int64_t b0, int64_t b1) {
    for (int which = 0; which < 2; ++which) {
      const int64_t lo = std::max(b0, first[which]) - first[which];
      const int64_t hi = std::min(b1, first[which] + count[which]) - first[which];
      if (lo < hi) normalise_rows(src[which], dst[which], nrm[which], lo, hi, d, scale[which], eps);
    }
  });
  int64_t bad[2] = {-1, -1};
  for (int which = 0; which < 2; ++which)
    for (int64_t i = 0; i < count[which] && bad[which] < 0; ++i)
      if (std::isnan(nrm[which][i])) bad[which] = i;
  TORCH_CHECK(bad[0] < 0, "mclcore.infonce: p contains NaN or infinite values (row ", bad[0], ")");
  TORCH_CHECK(bad[1] < 0, "mclcore.infonce: k contains NaN or infinite values (row ", bad[1], ")");
  if (groups.has_value() && groups->defined()) dense_ids(*groups, in);
  return in;
}

// In place, for dq (which = 0, B rows) and dk (which = 1, N rows) in one parallel region: back through the row
// normalisations. dq was accumulated as dS k^ (gscale 1/tau still to apply) against qs = q / tau (uscale tau);
// dk = dS^T qs is complete (gscale 1) against the unit keys (uscale 1).
template <typename T>
void normalise_backward(const Inputs& in, T* dq, T* dk, double tau, double eps) {
  const int64_t B = in.B, N = in.N, d = in.d;
  T* g[2] = {dq, dk};
  const T* u[2] = {in.qs.const_data_ptr<T>(), in.kn.const_data_ptr<T>()};
  const double* nrm[2] = {in.pnorm.data(), in.knorm.data()};
  const T uscale[2] = {static_cast<T>(tau), T(1)};
  const T gscale[2] = {static_cast<T>(1.0 / tau), T(1)};
  const int64_t first[2] = {0, B}, count[2] = {B, N};
  at::parallel_for(0, B + N, std::max<int64_t>(1, 16384 / d), [&](int64_t b0, int64_t b1) {
    for (int which = 0; which < 2; ++which) {
      const int64_t lo = std::max(b0, first[which]) - first[which];
      const int64_t hi = std::min(b1, first[which] + count[which]) - first[which];
      if (lo < hi)
        normalise_backward_rows(g[which], u[which], g[which], nrm[which], lo, hi, d, uscale[which], gscale[which],
                                eps);
    }
  });
}

// ------------------------------------------------------------------------------------------------------------
// Tiling.

struct Geometry {
  int64_t R, nrb, C;  // rows per block, number of row blocks (over the B queries), columns per tile (of the N keys)
  int64_t ncb;        // column blocks of R keys (the backward's second pass over the keys)
  int64_t nt;         // workers
  int64_t grain;      // parallel_for grain over row blocks: nrb (i.e. run inline) when not worth a parallel region
  int64_t cgrain;     // the same over column blocks
};

// Row blocks: at most kMaxRowBlock rows, at least one per thread while blocks keep >= kMinRowBlock rows, and a
// count that is a multiple of the thread count so the static OpenMP schedule stays balanced (B = 257 on 2 threads:
// 4 blocks of <= 65 rows rather than 128 + 128 + 1). Below B N d = 2^20 (~12 us of matrix products on one core,
// B = N ~ 90 at d = 128) the kernel runs on the calling thread: waking a second thread costs as much as it saves,
// and far more when the machine is shared and that thread is not scheduled.
constexpr int64_t kMinParallelWork = int64_t(1) << 20;
Geometry geometry(int64_t B, int64_t N, int64_t d) {
  const bool parallel = B * N * d >= kMinParallelWork;
  const int64_t nt = parallel ? std::max<int64_t>(1, at::get_num_threads()) : 1;
  int64_t nrb = (B + kMaxRowBlock - 1) / kMaxRowBlock;
  if (nrb < nt) nrb = std::min(nt, std::max<int64_t>(1, B / kMinRowBlock));
  if (nrb > nt) nrb = (nrb + nt - 1) / nt * nt;
  const int64_t R = (B + nrb - 1) / nrb;
  nrb = (B + R - 1) / R;
  const int64_t ncb = (N + R - 1) / R;
  return {R, nrb, std::min(N, kColTile), ncb, nt, parallel ? 1 : nrb, parallel ? 1 : ncb};
}

int64_t env_bytes(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  return std::strtoll(v, nullptr, 10);
}
int64_t partial_budget() { return env_bytes("MCLCORE_INFONCE_PARTIAL_BYTES", kDefaultPartialBudget); }
int64_t fused_budget(int64_t N, int64_t d, int64_t elem) {
  return env_bytes("MCLCORE_INFONCE_FUSED_BYTES", std::max(kFusedBudgetFloor, N * d * elem));
}

template <typename T>
void forward_kernel(const Inputs& in, T* lse_all, T* lse_pos) {
  const int64_t B = in.B, N = in.N, off = in.off;
  const Geometry geo = geometry(B, N, in.d);
  const int32_t* grp = in.groups;
  parallel_for_below_autograd(0, geo.nrb, geo.grain, [&](int64_t b0, int64_t b1) {
    Tensor sbuf = at::empty({geo.R * geo.C}, in.qs.options());
    std::vector<T> m(geo.R), s(geo.R), mp(geo.R), sp(geo.R), scratch(geo.C);
    for (int64_t rb = b0; rb < b1; ++rb) {
      const int64_t i0 = rb * geo.R, r = std::min(geo.R, B - i0);
      std::fill(m.begin(), m.end(), kNegInf<T>);
      std::fill(s.begin(), s.end(), T(0));
      std::fill(mp.begin(), mp.end(), kNegInf<T>);
      std::fill(sp.begin(), sp.end(), T(0));
      const Tensor qI = in.qs.narrow(0, i0, r);
      for (int64_t j0 = 0; j0 < N; j0 += geo.C) {
        const int64_t c = std::min(geo.C, N - j0);
        Tensor S = sbuf.narrow(0, 0, r * c).view({r, c});
        at::mm_out(S, qI, in.kn.narrow(0, j0, c).t());
        T* x = S.mutable_data_ptr<T>();
        if (grp == nullptr) {  // diagonal mode: S_{i, off+i} from the same product the log-sum-exp sees
          for (int64_t ii = 0; ii < r; ++ii) {
            const int64_t jj = off + i0 + ii - j0;
            if (jj >= 0 && jj < c) lse_pos[i0 + ii] = x[ii * c + jj];
          }
        }
        fwd_tile(x, r, c, m.data(), s.data(), grp ? grp + off + i0 : nullptr, grp ? grp + j0 : nullptr, mp.data(),
                 sp.data(), scratch.data());
      }
      for (int64_t ii = 0; ii < r; ++ii) {
        lse_all[i0 + ii] = m[ii] + std::log(s[ii]);
        if (grp != nullptr) lse_pos[i0 + ii] = mp[ii] + std::log(sp[ii]);
      }
    }
  });
}

// dS for rows [i0, i0 + r) x columns [j0, j0 + c), written into sbuf and returned as an (r, c) view.
template <typename T>
Tensor ds_tile(const Inputs& in, Tensor& sbuf, int64_t i0, int64_t r, int64_t j0, int64_t c, const T* la,
               const T* lp, T coef) {
  Tensor S = sbuf.narrow(0, 0, r * c).view({r, c});
  at::mm_out(S, in.qs.narrow(0, i0, r), in.kn.narrow(0, j0, c).t());
  T* x = S.mutable_data_ptr<T>();
  const int32_t* grp = in.groups;
  bwd_tile(x, r, c, la + i0, lp + i0, grp ? grp + in.off + i0 : nullptr, grp ? grp + j0 : nullptr, coef);
  if (grp == nullptr) {  // the diagonal positive: exp(S_{i, off+i} - lse_pos_i) = 1 exactly
    for (int64_t ii = 0; ii < r; ++ii) {
      const int64_t jj = in.off + i0 + ii - j0;
      if (jj >= 0 && jj < c) x[ii * c + jj] -= coef;
    }
  }
  return S;
}

// Writes dS k^ into dq (B, d; its 1/tau comes later) and dS^T (q / tau) into dk (N, d), uninitialised on entry.
template <typename T>
void backward_kernel(const Inputs& in, const T* la, const T* lp, T coef, Tensor& dq, Tensor& dk) {
  const int64_t B = in.B, N = in.N, d = in.d;
  const Geometry geo = geometry(B, N, in.d);
  const int64_t nchunks = std::min(geo.nt, geo.nrb);
  if ((nchunks - 1) * N * d * static_cast<int64_t>(sizeof(T)) <= partial_budget()) {
    // One pass; chunk 0 accumulates dk in place, the others into their own (N, d) buffers, summed at the end.
    std::vector<Tensor> acc(nchunks);
    acc[0] = dk;
    parallel_for_below_autograd(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
      Tensor sbuf = at::empty({geo.R * geo.C}, in.qs.options());
      for (int64_t ch = c0; ch < c1; ++ch) {
        if (ch > 0) acc[ch] = at::empty({N, d}, dk.options());  // first touched by the thread using it
        Tensor& dkacc = acc[ch];
        const int64_t rb_first = ch * geo.nrb / nchunks;
        for (int64_t rb = rb_first; rb < (ch + 1) * geo.nrb / nchunks; ++rb) {
          const int64_t i0 = rb * geo.R, r = std::min(geo.R, B - i0);
          Tensor dqI = dq.narrow(0, i0, r);
          const Tensor qI = in.qs.narrow(0, i0, r);
          for (int64_t j0 = 0; j0 < N; j0 += geo.C) {
            const int64_t c = std::min(geo.C, N - j0);
            const Tensor E = ds_tile<T>(in, sbuf, i0, r, j0, c, la, lp, coef);
            mm_acc(dqI, E, in.kn.narrow(0, j0, c), j0 == 0);
            mm_acc(dkacc.narrow(0, j0, c), E.t(), qI, rb == rb_first);
          }
        }
      }
    });
    for (int64_t ch = 1; ch < nchunks; ++ch) dk.add_(acc[ch]);
    return;
  }
  // Pass 1: dq over row blocks. Pass 2: dk over column blocks of R keys, recomputing the tiles (rows of C queries).
  parallel_for_below_autograd(0, geo.nrb, geo.grain, [&](int64_t b0, int64_t b1) {
    Tensor sbuf = at::empty({geo.R * geo.C}, in.qs.options());
    for (int64_t rb = b0; rb < b1; ++rb) {
      const int64_t i0 = rb * geo.R, r = std::min(geo.R, B - i0);
      Tensor dqI = dq.narrow(0, i0, r);
      for (int64_t j0 = 0; j0 < N; j0 += geo.C) {
        const int64_t c = std::min(geo.C, N - j0);
        mm_acc(dqI, ds_tile<T>(in, sbuf, i0, r, j0, c, la, lp, coef), in.kn.narrow(0, j0, c), j0 == 0);
      }
    }
  });
  parallel_for_below_autograd(0, geo.ncb, geo.cgrain, [&](int64_t b0, int64_t b1) {
    Tensor sbuf = at::empty({geo.R * geo.C}, in.qs.options());
    for (int64_t cb = b0; cb < b1; ++cb) {
      const int64_t j0 = cb * geo.R, c = std::min(geo.R, N - j0);
      Tensor dkJ = dk.narrow(0, j0, c);
      for (int64_t i0 = 0; i0 < B; i0 += geo.C) {
        const int64_t r = std::min(geo.C, B - i0);
        mm_acc(dkJ, ds_tile<T>(in, sbuf, i0, r, j0, c, la, lp, coef).t(), in.qs.narrow(0, i0, r), i0 == 0);
      }
    }
  });
}

// Fused forward + gradient (infonce_with_grad). The gradient needs each row's final log-sum-exps, which the online
// (flash) scheme only has after the last column tile: infonce + infonce_backward therefore compute S twice, four
// B x B x d products in all, where the pure-autograd reference (python/infonce.py) does three. At B = 256, d = 128
// one such product takes 185-196 us on one core of the 2-core AMD EPYC dev VM (2026-11) (86-90 GFLOP/s with MKL, ~95% of the core's FMA
// peak), and the products are most of the time. Here each row block I holds its rows of S whole, an R_f x B panel:
// S_I = (q_I / tau) k^T (one product), then per row the exact statistics and dS_I in place with one exp per entry
// (fused_rows), then dk += dS_I^T (q_I / tau) and dq_I = dS_I k^ -- three products -- and dp_I at once into the rows
// of q / tau, which block I no longer needs (no (B, d) dq buffer); dk goes through its normalisation at the end.
//
// Options weighed: keeping all of S while B^2 fits a budget, recomputing above it (the panel generalises that: only
// R_f x B per worker is ever kept, so the three-product path reaches B = 8192 within 8 MiB of panels on 2 threads);
// exact rescaling of partial tile sums (flash style) makes the statistics exact but not dS, which needs them before
// the products that consume it, so it still costs a second pass of products.
// Measured on the 2-core AMD EPYC dev VM (2026-11), one thread, d = 128, raw op, this path vs the recompute path (budget 0):
//   B = 256 (R_f = 256, one block): 0.70 ms vs 0.95 ms, of which the three products 0.59 ms and normalisation
//     18 us, fused_rows 56 us (about 36 with the fixed shift below), dp / dk normalisation 16 us;
//   B = 1024: 12.7 vs 16.4 ms;  B = 4096: 191 vs 270 ms;  B = 8192 (R_f = 128): 853 vs 1204 ms.
// R_f: one block per worker, at most kMaxFusedRows = 256 (one 256 x 256 x 128 product beats two 128-row ones by
// ~3%), fewer once a panel passes kPanelCacheBytes (1 MiB; the L2 is 512 KiB), never under kMinFusedRows = 128: MKL
// packs the B x d keys for every product and amortises that over R_f rows -- at B = 16384 the panel products ran
// at 28-44 GFLOP/s with R_f = 32 and 44-61 with 64, against ~80 for the recompute path's 128 x 256 tiles, so
// there four products on tiles beat three on thin panels. The budget (all panels <= max(8 MiB, B d values)) then
// decides: at d = 128 the fused path covers B <= 8192 on 2 threads (B <= 16384 on one); B = 16384 on 2 threads
// takes the recompute path, with the memory of infonce + infonce_backward (49 MiB peak extra measured, bench
// --large; the fused path with R_f = 32 measured 48-56 MiB there and no measurable gain).
//
// Exponentials: |S_ij| <= 1/tau, so while 2/tau <= kFixedShiftRange (tau >= 0.025 in float32) the fixed shift 1/tau
// replaces the row maximum: no max pass, and the exp needs no range clamps. Below that, each row's maximum (see
// fused_rows_body for the positives of the multi-positive mode).
//
// Rectangular mode: the panels are R_f x N (whole rows over all N keys), budgets and caches counted in N.
//
// Returns false, touching nothing, when the panels do not fit the budget with R_f >= min(kMinFusedRows, rows per
// worker), or the per-worker dk buffers (workers - 1) N d values exceed partial_budget(): the caller then runs
// forward_kernel + backward_kernel (O(N d + tile) memory at any size). Writes the loss row terms into loss_rows
// (B), dp into in.qs and dk (N, d) into dk, both complete (through the normalisations).
template <typename T>
bool fused_kernel(const Inputs& in, double tau, double eps, T coef, double* loss_rows, Tensor& dk) {
  const int64_t B = in.B, N = in.N, d = in.d;
  const Geometry geo = geometry(B, N, d);
  const int64_t nt = geo.nt;
  const int64_t elem = sizeof(T);
  const int64_t rmax = fused_budget(N, d, elem) / (nt * N * elem);
  // Rows per block without a budget: one block per worker, up to kMaxFusedRows, fewer (down to kMinFusedRows) once
  // a panel outgrows kPanelCacheBytes.
  const int64_t cache_rows = std::max(kMinFusedRows, std::min(kMaxFusedRows, kPanelCacheBytes / (N * elem)));
  const int64_t want = std::min(cache_rows, (B + nt - 1) / nt);
  if (rmax < std::min(want, kMinFusedRows)) return false;
  int64_t R = std::min(want, rmax);
  int64_t nrb = (B + R - 1) / R;
  if (nrb > nt) nrb = (nrb + nt - 1) / nt * nt;  // balanced static schedule, as in geometry()
  R = (B + nrb - 1) / nrb;
  nrb = (B + R - 1) / R;
  const int64_t nchunks = std::min(nt, nrb);
  if ((nchunks - 1) * N * d * elem > partial_budget()) return false;
  const int32_t* grp = in.groups;
  // The fixed shift 1/tau where no exp can underflow, else each row's maximum (NaN tells fused_rows which).
  const T shift =
      2.0 / tau <= kFixedShiftRange<T> ? static_cast<T>(1.0 / tau) : std::numeric_limits<T>::quiet_NaN();
  // Allocated by the calling thread, so that once freed the memory sits in its malloc arena, where the rest of the
  // training step (the backward's scaled gradients) allocates, rather than in a worker's.
  std::vector<Tensor> acc(nchunks), panel(nchunks), dqbuf(nchunks);
  for (int64_t ch = 0; ch < nchunks; ++ch) {
    acc[ch] = ch == 0 ? dk : at::empty({N, d}, dk.options());
    panel[ch] = at::empty({R * N}, in.qs.options());
    dqbuf[ch] = at::empty({R, d}, in.qs.options());
  }
  const T uscale = static_cast<T>(tau), gscale = static_cast<T>(1.0 / tau);
  parallel_for_below_autograd(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<T> scratch(grp != nullptr ? N : 0);
    T* qs = in.qs.mutable_data_ptr<T>();
    const T* kn = in.kn.const_data_ptr<T>();
    for (int64_t ch = c0; ch < c1; ++ch) {
      const int64_t rb_first = ch * nrb / nchunks;
      for (int64_t rb = rb_first; rb < (ch + 1) * nrb / nchunks; ++rb) {
        const int64_t i0 = rb * R, r = std::min(R, B - i0);
        const Tensor qI = in.qs.narrow(0, i0, r);
        Tensor S = panel[ch].narrow(0, 0, r * N).view({r, N});
        at::mm_out(S, qI, in.kn.t());
        fused_rows(S.mutable_data_ptr<T>(), r, N, in.off + i0, grp, coef, shift, loss_rows + i0, qs + i0 * d, kn, d,
                   scratch.data());
        mm_acc(acc[ch], S.t(), qI, rb == rb_first);
        // Rows I of q are needed no more: dq_I = dS_I k^ (1/tau to apply), and dp_I goes where q_I / tau was.
        Tensor dqI = dqbuf[ch].narrow(0, 0, r);
        at::mm_out(dqI, S, in.kn);
        T* qsI = qs + i0 * d;
        normalise_backward_rows(dqI.const_data_ptr<T>(), qsI, qsI, in.pnorm.data() + i0, 0, r, d, uscale, gscale,
                                eps);
      }
    }
  });
  // dk = sum of the workers' buffers, then back through the key normalisation, row by row while in cache.
  T* dkp = dk.mutable_data_ptr<T>();
  const T* kn = in.kn.const_data_ptr<T>();
  at::parallel_for(0, N, std::max<int64_t>(1, 16384 / d), [&](int64_t b0, int64_t b1) {
    for (int64_t ch = 1; ch < nchunks; ++ch) {
      const T* a = acc[ch].const_data_ptr<T>();
      for (int64_t x = b0 * d; x < b1 * d; ++x) dkp[x] += a[x];
    }
    normalise_backward_rows(dkp, kn, dkp, in.knorm.data(), b0, b1, d, T(1), T(1), eps);
  });
  return true;
}

// ------------------------------------------------------------------------------------------------------------
// Checks and entry points. offset: none in square mode (p, k (B, d)), the key column of row 0's positive in
// rectangular mode (k (N, d)); infonce_checks.h has the rules.

using mclcore::infonce_checks::compute_dtype;

int64_t check_inputs(const Tensor& p, const Tensor& k, const std::optional<Tensor>& groups, double tau, double eps,
                     std::optional<int64_t> offset) {
  return mclcore::infonce_checks::check_inputs(p, k, groups, tau, eps, offset, c10::DeviceType::CPU);
}

std::tuple<Tensor, Tensor, Tensor> infonce_cpu_one(const Tensor& p, const Tensor& k,
                                                   const std::optional<Tensor>& groups, double tau, double eps,
                                                   std::optional<int64_t> offset) {
  const int64_t off = check_inputs(p, k, groups, tau, eps, offset);
  const int64_t B = p.size(0);
  const auto ct = compute_dtype(p.scalar_type());
  Tensor loss = at::empty({}, p.options().dtype(ct));
  Tensor lse_all = at::empty({B}, p.options().dtype(ct));
  Tensor lse_pos = at::empty({B}, p.options().dtype(ct));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "mclcore_infonce", [&] {
    using T = at::opmath_type<scalar_t>;
    const Inputs in = prepare<T, scalar_t>(p, k, groups, tau, eps, off);
    T* la = lse_all.mutable_data_ptr<T>();
    T* lp = lse_pos.mutable_data_ptr<T>();
    forward_kernel<T>(in, la, lp);
    // Per-row terms are >= 0 mathematically (P(i) is a subset of all j). In diagonal mode the rounded values keep
    // that exactly (the running sum holds exp(0) = 1 for the row maximum, so lse_all >= max_j S_ij >= S_ii); two
    // rounded log-sum-exps over nested sets can disagree in the last ulp, and the clamp keeps that from making
    // the loss negative. Summed in float64: B terms of size ~log N.
    double total = 0;
    for (int64_t i = 0; i < B; ++i) total += std::max(0.0, static_cast<double>(la[i]) - static_cast<double>(lp[i]));
    *loss.mutable_data_ptr<T>() = static_cast<T>(total / static_cast<double>(B));
  });
  return {loss, lse_all, lse_pos};
}

std::tuple<Tensor, Tensor> infonce_backward_cpu_one(const Tensor& grad_loss, const Tensor& p, const Tensor& k,
                                                    const std::optional<Tensor>& groups, const Tensor& lse_all,
                                                    const Tensor& lse_pos, double tau, double eps,
                                                    std::optional<int64_t> offset) {
  const int64_t off = check_inputs(p, k, groups, tau, eps, offset);
  mclcore::infonce_checks::check_row_stats(p, grad_loss, lse_all, lse_pos);
  const int64_t B = p.size(0), N = k.size(0), d = p.size(1);
  const auto ct = compute_dtype(p.scalar_type());
  const double g = grad_loss.item<double>();
  Tensor dp, dk;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "mclcore_infonce_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    const Inputs in = prepare<T, scalar_t>(p, k, groups, tau, eps, off);
    const Tensor la = lse_all.contiguous(), lp = lse_pos.contiguous();
    Tensor dq = at::empty({B, d}, in.qs.options());
    Tensor dkh = at::empty({N, d}, in.qs.options());
    backward_kernel<T>(in, la.const_data_ptr<T>(), lp.const_data_ptr<T>(), static_cast<T>(g / B), dq, dkh);
    normalise_backward<T>(in, dq.mutable_data_ptr<T>(), dkh.mutable_data_ptr<T>(), tau, eps);
    dp = p.scalar_type() == ct ? dq : dq.to(p.scalar_type());
    dk = k.scalar_type() == ct ? dkh : dkh.to(k.scalar_type());
  });
  return {dp, dk};
}

// Loss and its gradients in one call, for an upstream gradient of 1 (the autograd formula scales them).
std::tuple<Tensor, Tensor, Tensor> infonce_with_grad_cpu_one(const Tensor& p, const Tensor& k,
                                                             const std::optional<Tensor>& groups, double tau,
                                                             double eps, std::optional<int64_t> offset) {
  const int64_t off = check_inputs(p, k, groups, tau, eps, offset);
  const int64_t B = p.size(0), N = k.size(0), d = p.size(1);
  const auto ct = compute_dtype(p.scalar_type());
  Tensor loss = at::empty({}, p.options().dtype(ct));
  Tensor dp, dk;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "mclcore_infonce_with_grad", [&] {
    using T = at::opmath_type<scalar_t>;
    const Inputs in = prepare<T, scalar_t>(p, k, groups, tau, eps, off);
    Tensor dkh = at::empty({N, d}, in.qs.options());
    const T coef = static_cast<T>(1.0 / static_cast<double>(B));
    std::vector<double> rows(B);
    double total = 0;
    Tensor dq;
    if (fused_kernel<T>(in, tau, eps, coef, rows.data(), dkh)) {
      for (int64_t i = 0; i < B; ++i) total += rows[i];
      dq = in.qs;  // dp, computed block by block into the buffer of q / tau; dkh is complete too
    } else {
      std::vector<T> la(B), lp(B);
      forward_kernel<T>(in, la.data(), lp.data());
      for (int64_t i = 0; i < B; ++i)
        total += std::max(0.0, static_cast<double>(la[i]) - static_cast<double>(lp[i]));
      dq = at::empty({B, d}, in.qs.options());
      backward_kernel<T>(in, la.data(), lp.data(), coef, dq, dkh);
      normalise_backward<T>(in, dq.mutable_data_ptr<T>(), dkh.mutable_data_ptr<T>(), tau, eps);
    }
    *loss.mutable_data_ptr<T>() = static_cast<T>(total / static_cast<double>(B));
    dp = p.scalar_type() == ct ? dq : dq.to(p.scalar_type());
    dk = k.scalar_type() == ct ? dkh : dkh.to(k.scalar_type());
  });
  return {loss, dp, dk};
}

// Unstacked (p (B, d)) or member-stacked (p (M, B, d): csrc/infonce/infonce_members.h) entry points.
namespace members = mclcore::infonce_members;

std::tuple<Tensor, Tensor, Tensor> infonce_cpu(const Tensor& p, const Tensor& k, const std::optional<Tensor>& groups,
                                               double tau, double eps, std::optional<int64_t> offset) {
  if (!members::stacked(p)) return infonce_cpu_one(p, k, groups, tau, eps, offset);
  return members::forward(infonce_cpu_one, p, k, groups, tau, eps, offset);
}

std::tuple<Tensor, Tensor> infonce_backward_cpu(const Tensor& grad_loss, const Tensor& p, const Tensor& k,
                                                const std::optional<Tensor>& groups, const Tensor& lse_all,
                                                const Tensor& lse_pos, double tau, double eps,
                                                std::optional<int64_t> offset) {
  if (!members::stacked(p))
    return infonce_backward_cpu_one(grad_loss, p, k, groups, lse_all, lse_pos, tau, eps, offset);
  return members::backward(infonce_backward_cpu_one, grad_loss, p, k, groups, lse_all, lse_pos, tau, eps, offset);
}

std::tuple<Tensor, Tensor, Tensor> infonce_with_grad_cpu(const Tensor& p, const Tensor& k,
                                                         const std::optional<Tensor>& groups, double tau, double eps,
                                                         std::optional<int64_t> offset) {
  if (!members::stacked(p)) return infonce_with_grad_cpu_one(p, k, groups, tau, eps, offset);
  return members::forward(infonce_with_grad_cpu_one, p, k, groups, tau, eps, offset);
}

}  // namespace

TORCH_LIBRARY_IMPL(mclcore, CPU, m) {
  m.impl("infonce", &infonce_cpu);
  m.impl("infonce_backward", &infonce_backward_cpu);
  m.impl("infonce_with_grad", &infonce_with_grad_cpu);
}
