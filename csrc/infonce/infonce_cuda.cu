// CUDA kernels of InfoNCE, registered as the private ops mclcore::_cuda_infonce, mclcore::_cuda_infonce_backward and
// mclcore::_cuda_infonce_with_grad (schemas identical to the public infonce / infonce_backward / infonce_with_grad
// of csrc/registration.cpp; the Python dispatcher registers the public ops' CUDA kernels and calls these).
// Same semantics as csrc/infonce/infonce_cpu.cpp (docs/DESIGN.md §2.1):
//
//   q_i = p_i / max(|p_i|, eps),  k^_j = k_j / max(|k_j|, eps),  S_ij = q_i . k^_j / tau
//   loss = mean_i max(0, lse_all_i - lse_pos_i),  lse_all_i = logsumexp_j S_ij,
//   lse_pos_i = S_ii (groups undefined) or logsumexp_{j : groups[j] == groups[i]} S_ij (multi-positive mode).
//   dS_ij = g/B (exp(S_ij - lse_all_i) - [j in P(i)] exp(S_ij - lse_pos_i))   ([i == j] in diagonal mode),
//   dq_i = sum_j dS_ij k^_j / tau,  dk^_j = sum_i dS_ij q_i / tau,
//   dp_i = (dq_i - q_i (q_i . dq_i)) / |p_i| if |p_i| > eps, else dq_i / eps (same for the keys).
// Rectangular mode (an offset given; csrc/infonce/infonce_cpu.cpp): B query rows against N >= B keys, row i's
// positive is key c_i = offset + i ([i == j] above reads [j == c_i]), groups has one id per key (N,) and row i's own
// id is groups[c_i]; 1/B over the B rows, dk has N rows. The kernels take N and the offset as trailing arguments
// whose defaults (N < 0: N = B; offset 0) are the square mode, the launch signature of
// tests/ops/test_cuda_compile.py's emulation harness.
//
// Kernels (all on the current stream, no host synchronisation unless the opt-in finiteness check below is on):
//  1. normalise_kernel: one warp per row of p and of k. Sum of squares in float64 (rescaled by the row's largest
//     magnitude when it overflows, as the CPU), writes qs = q / tau and kn = k^ in the compute dtype T (float32 for
//     float16 / bfloat16 / float32 inputs, float64 for float64) and the float64 norms |p_i|, |k_i|.
//  2. fwd_kernel: flash-style. A block of 256 threads (16 x 16) owns a 64-row block of queries and walks a range of
//     64-column key tiles; S tile = (qs rows) x (kn rows)^T by a shared-memory FMA GEMM over d in slabs of BK
//     (16 floats / 8 doubles): the two 64 x BK slabs sit transposed in shared memory, each thread accumulates a
//     4 x 4 micro-tile (rows ty + 16 m, columns tx + 16 n, so every shared read is a broadcast or conflict-free).
//     Each thread keeps, for each of its 4 rows, an online log-sum-exp (running max m, sum s) over the entries it
//     has seen, and the same over the positives in multi-positive mode; at the end the 16 threads of a row merge
//     their states with warp shuffles. An online maximum rather than the fixed shift 1/tau: with the fixed shift a
//     row whose entries all sit near -1/tau underflows float32 once tau < 0.023 (see infonce_cpu.cpp). For small B
//     the key range is split over blockIdx.y (flash-decoding) so that about two blocks per SM run; the partial
//     states (nsplit x B x 4) are merged by combine_kernel, and loss_kernel (one block, float64, deterministic
//     tree) takes the mean. In diagonal mode lse_pos_i = S_ii is written by the one thread whose tile holds (i, i).
//     S lives only in registers: never a B x B tensor, global memory O(B d).
//  3. grad_kernel<KEYS>: the backward recomputes S tile by tile from the saved row statistics. A block owns 64 rows
//     of the output (dq rows when KEYS = false, dk^ rows when KEYS = true) and walks every 64-tile of the other
//     side: S tile in registers (same GEMM as the forward, with the roles of queries and keys swapped for dk), dS
//     into shared memory (64 x 65), then out[own rows, chunk] += dS x (other side rows)[., chunk] for output column
//     chunks of 128 (each thread a 4 x 8 register accumulator; the other side's rows stream through shared memory
//     in BK x 128 slabs). When the block owns a single chunk (d <= 128, or d split over blockIdx.y) the accumulator
//     stays in registers over all tiles and is written once; with several chunks per block it is read back and
//     written per tile (the block owns those output rows, so no atomics: deterministic). For small B the chunks are
//     spread over blockIdx.y, each such block recomputing S (parallelism against redundant work), and if that still
//     gives fewer than ~2 blocks per SM the other side's tiles are split over blockIdx.z, each split writing its own
//     (B, d) partial sums (at most 8 buffers, O(B d) memory), which norm_bwd_kernel adds: still no atomics.
//     dq and dk take one kernel each, so the backward computes S twice (four B x B x d products; the CPU's fused
//     path manages three by holding R x B panels, which would need B-sized shared memory here).
//  4. norm_bwd_kernel: one warp per row, back through the normalisation into the input dtype.
// infonce_with_grad runs 1 + 2 + 3 + 4 back to back with g = 1 (no host round trip in between).
//
// Numerics: the float32 exponential is the CPU kernel's Cephes polynomial (relative error 8e-8, not affected by
// --use_fast_math, which would turn expf into the ex2.approx-based __expf), logs of the row sums in float64.
// Half types are read once and computed in float32; loss / lse_all / lse_pos come back in float32 (float64 for
// float64 inputs), dp and dk in the dtypes of p and k, all contiguous, as on the CPU.
// Finiteness, on the device by default (no host synchronisation: the launch path can be captured in a CUDA graph,
// as the Triton one): the normalisation records the first NaN / infinite row of p and of k in a device flag
// (``bad``), and the kernels after it read the flag: combine_kernel writes NaN row statistics, loss_kernel a NaN
// loss and norm_bwd_kernel NaN gradients (every entry: each gradient row depends on every input row through the
// softmax), so a non-finite input can never give a finite wrong result. MCLCORE_CUDA_CHECK_FINITE=1 (read at every
// call, like MCLCORE_TRITON_CHECK_FINITE) restores the CPU op's error, "mclcore.infonce: p contains NaN or infinite
// values (row r)", at one small device-to-host copy (a synchronisation) per call; skipped while the stream is being
// captured into a CUDA graph. (Until 2026-12 the check was on by default and =0 turned it off.)
// Tensor cores: not used (plain FMA). tf32 would move S by ~1e-3 / tau, outside the float32 tolerance of the CPU op.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "infonce_checks.h"
#include "infonce_members.h"

#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <tuple>

namespace mclcore {
namespace {

using at::Tensor;

constexpr int kTile = 64;      // rows per block and columns per tile
constexpr int kLd = kTile + 1;  // padded leading dimension of the transposed slabs and of the dS tile
constexpr int kThreads = 256;  // 16 x 16
constexpr int kChunk = 128;    // output columns per register accumulator in grad_kernel (8 per thread)
constexpr int64_t kMaxGradSplits = 8;  // most (B, d) partial-sum buffers the backward's tile split may use

template <typename T>
struct Cfg {
  static constexpr int BK = sizeof(T) == 8 ? 8 : 16;  // d-slab width: keeps the float64 shared memory under 48 KiB
};

// ------------------------------------------------------------------------------------------------------------
// Device helpers. (tests/ops/test_cuda_compile.py runs everything from `using at::Tensor;` to the "Host side."
// marker below on the CPU under a CUDA emulation, so keep device code between those two lines.)

// exp for float32: the CPU kernel's exp_t (Cephes expf), so both backends share the arithmetic; 0 below -87.3 and
// for -inf.
__device__ __forceinline__ float dev_exp(float x) {
  constexpr float lo = -87.3365447505531f, hi = 88.3762626647949f;
  const float xc = fminf(fmaxf(x, lo), hi);
  const float n = rintf(xc * 1.44269504088896341f);
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  poly = poly * r * r + r + 1.0f;
  const float scale = __int_as_float((static_cast<int>(n) + 127) << 23);
  return x < lo ? 0.0f : poly * scale;
}
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }

template <typename T>
__device__ __forceinline__ T neg_inf() {
  return -static_cast<T>(INFINITY);
}
template <typename T>
__device__ __forceinline__ double max_finite() {
  return sizeof(T) == 8 ? DBL_MAX : static_cast<double>(FLT_MAX);
}

__device__ __forceinline__ double nan_value() { return __longlong_as_double(0x7ff8000000000000LL); }
// Whether the normalisation flagged a non-finite row of p or of k (bad: its two flags, INT_MAX = none; null: no).
__device__ __forceinline__ bool any_bad(const int* bad) {
  return bad != nullptr && (bad[0] != INT_MAX || bad[1] != INT_MAX);
}

// (m, s) stands for m + log(s); merge (m2, s2) into it.
template <typename T>
__device__ __forceinline__ void lse_merge(T& m, T& s, T m2, T s2) {
  const T mn = m > m2 ? m : m2;
  if (mn == neg_inf<T>()) return;  // both empty
  s = s * dev_exp(m - mn) + s2 * dev_exp(m2 - mn);
  m = mn;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// acc[m][n] = sum_c own[o0 + ty + 16 m][c] * oth[t0 + tx + 16 n][c] (own rows past Bo and other rows past Bt
// contribute 0). sA, sB: BK x kLd each. Called by every thread of the block (contains __syncthreads); ends with a
// barrier, so the caller may reuse sA / sB right after.
template <typename T>
__device__ __forceinline__ void dot_tile(const T* __restrict__ own, const T* __restrict__ oth, int64_t Bo, int64_t Bt,
                                         int64_t d, int64_t o0, int64_t t0, T (&acc)[4][4], T* sA, T* sB) {
  constexpr int BK = Cfg<T>::BK;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
#pragma unroll
  for (int m = 0; m < 4; ++m)
#pragma unroll
    for (int n = 0; n < 4; ++n) acc[m][n] = T(0);
  for (int64_t c0 = 0; c0 < d; c0 += BK) {
    for (int e = tid; e < kTile * BK; e += kThreads) {
      const int r = e / BK, c = e % BK;
      const int64_t gc = c0 + c;
      const int64_t ga = o0 + r, gb = t0 + r;
      sA[c * kLd + r] = (ga < Bo && gc < d) ? own[ga * d + gc] : T(0);
      sB[c * kLd + r] = (gb < Bt && gc < d) ? oth[gb * d + gc] : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int c = 0; c < BK; ++c) {
      T a[4], b[4];
#pragma unroll
      for (int m = 0; m < 4; ++m) a[m] = sA[c * kLd + ty + 16 * m];
#pragma unroll
      for (int n = 0; n < 4; ++n) b[n] = sB[c * kLd + tx + 16 * n];
#pragma unroll
      for (int m = 0; m < 4; ++m)
#pragma unroll
        for (int n = 0; n < 4; ++n) acc[m][n] += a[m] * b[n];
    }
    __syncthreads();
  }
}

// ------------------------------------------------------------------------------------------------------------
// 1. Row normalisation. Rows [0, B) are p's (scaled by 1/tau), [B, B + N) k's (N < 0: N = B). One warp per row.
template <typename In, typename T>
__global__ void normalise_kernel(const In* __restrict__ p, const In* __restrict__ k, int64_t B, int64_t d,
                                 double inv_tau, double eps, T* __restrict__ qs, T* __restrict__ kn,
                                 double* __restrict__ pnorm, double* __restrict__ knorm, int* __restrict__ bad,
                                 int64_t N = -1) {
  const int lane = threadIdx.x % 32;
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (row >= B + (N < 0 ? B : N)) return;  // warp-uniform
  const int which = row < B ? 0 : 1;
  const int64_t i = row - which * B;
  const In* x = (which == 0 ? p : k) + i * d;
  T* out = (which == 0 ? qs : kn) + i * d;
  double* norms = which == 0 ? pnorm : knorm;
  const double scale = which == 0 ? inv_tau : 1.0;
  double ss = 0;
  for (int64_t j = lane; j < d; j += 32) {
    const double v = static_cast<double>(static_cast<T>(x[j]));
    ss += v * v;
  }
  ss = warp_sum(ss);
  double nr;
  if (isfinite(ss)) {
    nr = sqrt(ss);
  } else {  // a NaN or infinity in the row, or (float64) a finite row whose squares overflow
    double amax = 0;
    int finite = 1;
    for (int64_t j = lane; j < d; j += 32) {
      const double v = static_cast<double>(static_cast<T>(x[j]));
      finite &= isfinite(v) ? 1 : 0;
      amax = fmax(amax, fabs(v));
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      amax = fmax(amax, __shfl_xor_sync(0xffffffffu, amax, o));
      finite &= __shfl_xor_sync(0xffffffffu, finite, o);
    }
    if (!finite) {
      if (lane == 0) {
        norms[i] = nan_value();
        atomicMin(bad + which, static_cast<int>(i));
      }
      for (int64_t j = lane; j < d; j += 32) out[j] = T(0);
      return;
    }
    double s = 0;
    for (int64_t j = lane; j < d; j += 32) {
      const double v = static_cast<double>(static_cast<T>(x[j])) / amax;
      s += v * v;
    }
    s = warp_sum(s);
    nr = amax * sqrt(s);
  }
  if (lane == 0) norms[i] = nr;
  const double f = scale / fmax(nr, eps);
  if (f <= max_finite<T>()) {
    const T ft = static_cast<T>(f);
    for (int64_t j = lane; j < d; j += 32) out[j] = static_cast<T>(x[j]) * ft;
  } else {  // a tiny row with a large 1 / (eps tau): scale in float64 so the factor cannot overflow
    for (int64_t j = lane; j < d; j += 32) out[j] = static_cast<T>(static_cast<double>(static_cast<T>(x[j])) * f);
  }
}

// ------------------------------------------------------------------------------------------------------------
// 2. Forward: partial row statistics of the key tiles [blockIdx.y * tps, ...) into part[(split * B + i) * 4 + .]
//    = (m, s, mp, sp); in diagonal mode lse_pos[i] = S_{i, offset+i} directly. B query rows (blockIdx.x), N keys
//    (N < 0: N = B).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    fwd_kernel(const T* __restrict__ qs, const T* __restrict__ kn, const int64_t* __restrict__ groups, int64_t B,
               int64_t d, int tps, T* __restrict__ part, T* __restrict__ lse_pos, int64_t N = -1,
               int64_t offset = 0) {
  constexpr int BK = Cfg<T>::BK;
  __shared__ T sA[BK * kLd];
  __shared__ T sB[BK * kLd];
  if (N < 0) N = B;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t ntiles = (N + kTile - 1) / kTile;  // key tiles
  const int64_t jt0 = static_cast<int64_t>(blockIdx.y) * tps;
  const int64_t jt1 = ntiles < jt0 + tps ? ntiles : jt0 + tps;
  T m[4], s[4], mp[4], sp[4];
  int64_t gi[4];
#pragma unroll
  for (int a = 0; a < 4; ++a) {
    m[a] = mp[a] = neg_inf<T>();
    s[a] = sp[a] = T(0);
    const int64_t i = i0 + ty + 16 * a;
    gi[a] = (groups != nullptr && i < B) ? groups[offset + i] : 0;  // the id of the row's positive key
  }
  T acc[4][4];
  for (int64_t jt = jt0; jt < jt1; ++jt) {
    const int64_t j0 = jt * kTile;
    dot_tile(qs, kn, B, N, d, i0, j0, acc, sA, sB);
    int64_t gj[4];
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const int64_t j = j0 + tx + 16 * b;
      gj[b] = (groups != nullptr && j < N) ? groups[j] : 0;
    }
#pragma unroll
    for (int a = 0; a < 4; ++a) {
      const int64_t i = i0 + ty + 16 * a;
      if (i >= B) continue;
      T mt = neg_inf<T>(), mpt = neg_inf<T>();
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const int64_t j = j0 + tx + 16 * b;
        if (j >= N) continue;
        const T v = acc[a][b];
        mt = mt > v ? mt : v;
        if (groups != nullptr) {
          if (gj[b] == gi[a]) mpt = mpt > v ? mpt : v;
        } else if (j == offset + i) {
          lse_pos[i] = v;
        }
      }
      if (mt != neg_inf<T>()) {
        const T mn = m[a] > mt ? m[a] : mt;
        T st = T(0);
#pragma unroll
        for (int b = 0; b < 4; ++b)
          if (j0 + tx + 16 * b < N) st += dev_exp(acc[a][b] - mn);
        s[a] = s[a] * dev_exp(m[a] - mn) + st;
        m[a] = mn;
      }
      if (mpt != neg_inf<T>()) {
        const T mn = mp[a] > mpt ? mp[a] : mpt;
        T st = T(0);
#pragma unroll
        for (int b = 0; b < 4; ++b)
          if (j0 + tx + 16 * b < N && gj[b] == gi[a]) st += dev_exp(acc[a][b] - mn);
        sp[a] = sp[a] * dev_exp(mp[a] - mn) + st;
        mp[a] = mn;
      }
    }
  }
  // Merge the 16 threads (tx) of each row: lanes tx and tx ^ o sit in the same half-warp.
#pragma unroll
  for (int a = 0; a < 4; ++a) {
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) {
      const T m2 = __shfl_xor_sync(0xffffffffu, m[a], o, 16), s2 = __shfl_xor_sync(0xffffffffu, s[a], o, 16);
      const T mp2 = __shfl_xor_sync(0xffffffffu, mp[a], o, 16), sp2 = __shfl_xor_sync(0xffffffffu, sp[a], o, 16);
      lse_merge(m[a], s[a], m2, s2);
      lse_merge(mp[a], sp[a], mp2, sp2);
    }
    const int64_t i = i0 + ty + 16 * a;
    if (tx == 0 && i < B) {
      T* out = part + (static_cast<int64_t>(blockIdx.y) * B + i) * 4;
      out[0] = m[a], out[1] = s[a], out[2] = mp[a], out[3] = sp[a];
    }
  }
}

// Merge the nsplit partial states of each row: lse_all_i = m + log s (and lse_pos in multi-positive mode).
// bad (may be null): the normalisation's flags; a non-finite input row makes every statistic NaN.
template <typename T>
__global__ void combine_kernel(const T* __restrict__ part, int nsplit, int64_t B, bool multi, T* __restrict__ la,
                               T* __restrict__ lp, const int* __restrict__ bad = nullptr) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B) return;
  if (any_bad(bad)) {
    la[i] = lp[i] = static_cast<T>(nan_value());
    return;
  }
  T m = neg_inf<T>(), s = T(0), mp = neg_inf<T>(), sp = T(0);
  for (int k = 0; k < nsplit; ++k) {
    const T* q = part + (static_cast<int64_t>(k) * B + i) * 4;
    lse_merge(m, s, q[0], q[1]);
    lse_merge(mp, sp, q[2], q[3]);
  }
  la[i] = static_cast<T>(static_cast<double>(m) + log(static_cast<double>(s)));
  if (multi) lp[i] = static_cast<T>(static_cast<double>(mp) + log(static_cast<double>(sp)));
}

// loss = mean_i max(0, la_i - lp_i), summed in float64 by one block (fixed order: deterministic). A NaN term stays
// NaN (fmax would drop it), and a flagged non-finite input (bad, may be null) makes the loss NaN.
template <typename T>
__global__ void loss_kernel(const T* __restrict__ la, const T* __restrict__ lp, int64_t B, T* __restrict__ loss,
                            const int* __restrict__ bad = nullptr) {
  __shared__ double red[kThreads];
  double acc = 0;
  for (int64_t i = threadIdx.x; i < B; i += kThreads) {
    const double v = static_cast<double>(la[i]) - static_cast<double>(lp[i]);
    acc += v > 0.0 ? v : (v == v ? 0.0 : v);
  }
  red[threadIdx.x] = acc;
  __syncthreads();
  for (int o = kThreads / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) red[threadIdx.x] += red[threadIdx.x + o];
    __syncthreads();
  }
  if (threadIdx.x == 0) *loss = static_cast<T>(any_bad(bad) ? nan_value() : red[0] / static_cast<double>(B));
}

// ------------------------------------------------------------------------------------------------------------
// 3. Gradient products. KEYS = false: out = dS k^ (dq (B, d), its 1/tau applied later) over row blocks of the B
//    queries; KEYS = true: out = dS^T qs (dk^ (N, d)) over column blocks of the N keys (N < 0: N = B). coef =
//    coef0 * (*gptr when given).
template <typename T, bool KEYS>
__global__ void __launch_bounds__(kThreads)
    grad_kernel(const T* __restrict__ qs, const T* __restrict__ kn, const int64_t* __restrict__ groups,
                const T* __restrict__ la, const T* __restrict__ lp, const T* __restrict__ gptr, T coef0, int64_t B,
                int64_t d, int cpb, int tps, T* __restrict__ out, int64_t N = -1, int64_t offset = 0) {
  constexpr int BK = Cfg<T>::BK;
  constexpr int kBuf = (2 * BK * kLd > BK * kChunk) ? 2 * BK * kLd : BK * kChunk;
  __shared__ T sD[kTile * kLd];  // dS, [own row][other row]
  __shared__ T sbuf[kBuf];       // the GEMM slabs, then the other side's value slab (BK x kChunk)
  T* sA = sbuf;
  T* sB = sbuf + BK * kLd;
  T* sV = sbuf;
  const T* own = KEYS ? kn : qs;
  const T* oth = KEYS ? qs : kn;
  if (N < 0) N = B;
  const int64_t Bo = KEYS ? N : B, Bt = KEYS ? B : N;  // rows of the own and of the other side
  // Row r of a side stands for key index r + shift (a query row i for its positive key offset + i): the ids
  // (groups are indexed by key) and the diagonal-mode positive (equal key indices) use it.
  const int64_t own_shift = KEYS ? 0 : offset, oth_shift = KEYS ? offset : 0;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t nchunks = (d + kChunk - 1) / kChunk;
  const int64_t c_begin = static_cast<int64_t>(blockIdx.y) * cpb;
  const int64_t c_end = nchunks < c_begin + cpb ? nchunks : c_begin + cpb;
  if (c_begin >= c_end) return;  // block-uniform
  const bool many = c_end - c_begin > 1;
  const T coef = gptr != nullptr ? coef0 * *gptr : coef0;
  const int64_t ntiles = (Bt + kTile - 1) / kTile;
  // Other-side tiles [tt0, tt1) of this split; split z writes its partial sums to out + z Bo d.
  const int64_t tt0 = static_cast<int64_t>(blockIdx.z) * tps;
  const int64_t tt1 = ntiles < tt0 + tps ? ntiles : tt0 + tps;
  out += static_cast<int64_t>(blockIdx.z) * Bo * d;
  T acc[4][4];
  T out_acc[4][8];
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int n = 0; n < 8; ++n) out_acc[a][n] = T(0);
  // Statistics of the rows this thread owns (used when the own side is the queries).
  T la_o[4], lp_o[4];
  int64_t g_o[4];
#pragma unroll
  for (int a = 0; a < 4; ++a) {
    const int64_t r = o0 + ty + 16 * a;
    la_o[a] = (!KEYS && r < Bo) ? la[r] : T(0);
    lp_o[a] = (!KEYS && r < Bo) ? lp[r] : T(0);
    g_o[a] = (groups != nullptr && r < Bo) ? groups[own_shift + r] : 0;
  }
  for (int64_t tt = tt0; tt < tt1; ++tt) {
    const int64_t t0 = tt * kTile;
    dot_tile(own, oth, Bo, Bt, d, o0, t0, acc, sA, sB);
    // dS, oriented [own][other]; the query index is i, the key index j (j == offset + i on the positive).
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const int64_t t = t0 + tx + 16 * b;
      const bool tin = t < Bt;
      const int64_t g_t = (groups != nullptr && tin) ? groups[oth_shift + t] : 0;
      const T la_t = (KEYS && tin) ? la[t] : T(0);
      const T lp_t = (KEYS && tin) ? lp[t] : T(0);
#pragma unroll
      for (int a = 0; a < 4; ++a) {
        const int64_t o = o0 + ty + 16 * a;
        T v = T(0);
        if (tin && o < Bo) {
          const T x = acc[a][b];
          const T lai = KEYS ? la_t : la_o[a];
          T e = dev_exp(x - lai);
          if (groups != nullptr) {
            if (g_t == g_o[a]) e -= dev_exp(x - (KEYS ? lp_t : lp_o[a]));
          } else if (o + own_shift == t + oth_shift) {  // both rows' key indices: the positive pair
            e -= T(1);  // exp(S_{i, offset+i} - lse_pos_i) = 1 exactly in diagonal mode
          }
          v = coef * e;
        }
        sD[(ty + 16 * a) * kLd + tx + 16 * b] = v;
      }
    }
    __syncthreads();
    for (int64_t c = c_begin; c < c_end; ++c) {
      const int64_t col0 = c * kChunk;
      if (many) {  // this thread's accumulator for chunk c lives in out between tiles
#pragma unroll
        for (int a = 0; a < 4; ++a) {
          const int64_t r = o0 + ty + 16 * a;
#pragma unroll
          for (int n = 0; n < 8; ++n) {
            const int64_t col = col0 + tx + 16 * n;
            out_acc[a][n] = (tt > tt0 && r < Bo && col < d) ? out[r * d + col] : T(0);
          }
        }
      }
      for (int kb = 0; kb < kTile; kb += BK) {
        for (int e = threadIdx.x; e < BK * kChunk; e += kThreads) {
          const int k = e / kChunk, n = e % kChunk;
          const int64_t r = t0 + kb + k, col = col0 + n;
          sV[e] = (r < Bt && col < d) ? oth[r * d + col] : T(0);
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < BK; ++k) {
          T dv[4], vv[8];
#pragma unroll
          for (int a = 0; a < 4; ++a) dv[a] = sD[(ty + 16 * a) * kLd + kb + k];
#pragma unroll
          for (int n = 0; n < 8; ++n) vv[n] = sV[k * kChunk + tx + 16 * n];
#pragma unroll
          for (int a = 0; a < 4; ++a)
#pragma unroll
            for (int n = 0; n < 8; ++n) out_acc[a][n] += dv[a] * vv[n];
        }
        __syncthreads();
      }
      if (many) {
#pragma unroll
        for (int a = 0; a < 4; ++a) {
          const int64_t r = o0 + ty + 16 * a;
#pragma unroll
          for (int n = 0; n < 8; ++n) {
            const int64_t col = col0 + tx + 16 * n;
            if (r < Bo && col < d) out[r * d + col] = out_acc[a][n];
          }
        }
      }
    }
  }
  if (!many) {
    const int64_t col0 = c_begin * kChunk;
#pragma unroll
    for (int a = 0; a < 4; ++a) {
      const int64_t r = o0 + ty + 16 * a;
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        const int64_t col = col0 + tx + 16 * n;
        if (r < Bo && col < d) out[r * d + col] = out_acc[a][n];
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------------------
// 4. Back through the normalisation, one warp per row: out_i = gradient w.r.t. the raw row given G_i = gscale g_i
//    w.r.t. u_i = uscale (stored row): (G_i - u_i (u_i . G_i)) / |x_i| when |x_i| > eps, else G_i / eps.
//    g and out may be the same buffer (in place when Out is T), hence no __restrict__ on them.
//    g holds nsplit partial sums (stride B d), added here. bad (may be null): the normalisation's flags; a
//    non-finite input row makes every gradient entry NaN.
template <typename T, typename Out>
__global__ void norm_bwd_kernel(const T* g, int nsplit, const T* __restrict__ u, const double* __restrict__ norms,
                                int64_t B, int64_t d, T uscale, T gscale, double eps, Out* out,
                                const int* __restrict__ bad = nullptr) {
  const int lane = threadIdx.x % 32;
  const int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (i >= B) return;
  const T* gi = g + i * d;
  const T* ui = u + i * d;
  Out* oi = out + i * d;
  if (any_bad(bad)) {  // warp-uniform
    for (int64_t j = lane; j < d; j += 32) oi[j] = static_cast<Out>(static_cast<T>(nan_value()));
    return;
  }
  const int64_t stride = B * d;
  auto gsum = [&](int64_t j) {
    T v = gi[j];
    for (int sp = 1; sp < nsplit; ++sp) v += gi[sp * stride + j];
    return v;
  };
  const double nr = norms[i];
  if (nr > eps) {
    T dot = T(0);
    for (int64_t j = lane; j < d; j += 32) dot += ui[j] * gsum(j);
    dot = warp_sum(dot) * uscale * gscale;
    const T inv = static_cast<T>(1.0 / nr);
    const T a = gscale * inv, b = uscale * dot * inv;
    for (int64_t j = lane; j < d; j += 32) oi[j] = static_cast<Out>(a * gsum(j) - b * ui[j]);
  } else {
    const T f = static_cast<T>(static_cast<double>(gscale) / eps);
    for (int64_t j = lane; j < d; j += 32) oi[j] = static_cast<Out>(gsum(j) * f);
  }
}

// ------------------------------------------------------------------------------------------------------------
// Host side.

int sm_count(int device) {
  static int cache[64] = {0};
  if (device < 0 || device >= 64) return 132;
  if (cache[device] == 0) {
    int v = 0;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || v <= 0) {
      (void)cudaGetLastError();
      v = 132;
    }
    cache[device] = v;
  }
  return cache[device];
}

// MCLCORE_CUDA_CHECK_FINITE=1: raise on non-finite rows, at one synchronisation per call (read at every call;
// default off: the flag stays on the device and the outputs become NaN).
bool check_finite_enabled() {
  const char* v = std::getenv("MCLCORE_CUDA_CHECK_FINITE");
  return v != nullptr && std::string(v) == "1";
}

using infonce_checks::compute_dtype;

int64_t check_inputs(const Tensor& p, const Tensor& k, const std::optional<Tensor>& groups, double tau, double eps,
                     std::optional<int64_t> offset) {
  const int64_t off = infonce_checks::check_inputs(p, k, groups, tau, eps, offset, c10::DeviceType::CUDA);
  // The CUDA kernels index rows with 32-bit grid coordinates.
  TORCH_CHECK(p.size(0) < (int64_t(1) << 31) / kTile * kTile && k.size(0) < (int64_t(1) << 31) / kTile * kTile,
              "mclcore.infonce: B = ", p.size(0), ", N = ", k.size(0), " is too large for the CUDA kernel");
  return off;
}

// Normalised inputs (device tensors).
struct Prepared {
  Tensor qs, kn;       // (B, d) and (N, d), compute dtype: q / tau, k^
  Tensor pnorm, knorm;  // (B,) and (N,) float64
  Tensor groups;       // (N,) int64 contiguous, or undefined
  Tensor bad;          // (2,) int32 on the device: first non-finite row of p and of k (INT_MAX: none)
  int64_t B = 0, N = 0, d = 0, off = 0;  // query rows, key rows, features; row i's positive is key off + i
  const int64_t* gptr() const { return groups.defined() ? groups.const_data_ptr<int64_t>() : nullptr; }
  const int* badptr() const { return bad.const_data_ptr<int>(); }
};

template <typename T, typename In>
Prepared prepare(const Tensor& p, const Tensor& k, const std::optional<Tensor>& groups, double tau, double eps,
                 int64_t off, cudaStream_t stream) {
  Prepared in;
  in.B = p.size(0);
  in.N = k.size(0);
  in.d = p.size(1);
  in.off = off;
  const int64_t B = in.B, N = in.N, d = in.d;
  const Tensor pc = p.contiguous(), kc = k.contiguous();
  const auto opts = pc.options().dtype(c10::CppTypeToScalarType<T>::value);
  in.qs = at::empty({B, d}, opts);
  in.kn = at::empty({N, d}, opts);
  in.pnorm = at::empty({B}, pc.options().dtype(at::kDouble));
  in.knorm = at::empty({N}, pc.options().dtype(at::kDouble));
  in.bad = at::empty({2}, pc.options().dtype(at::kInt)).fill_(INT_MAX);
  const Tensor& bad = in.bad;
  const int64_t warps = B + N;
  const int per_block = 8;  // warps per block
  const unsigned grid = static_cast<unsigned>((warps + per_block - 1) / per_block);
  normalise_kernel<In, T><<<grid, 32 * per_block, 0, stream>>>(
      pc.const_data_ptr<In>(), kc.const_data_ptr<In>(), B, d, 1.0 / tau, eps, in.qs.mutable_data_ptr<T>(),
      in.kn.mutable_data_ptr<T>(), in.pnorm.mutable_data_ptr<double>(), in.knorm.mutable_data_ptr<double>(),
      bad.mutable_data_ptr<int>(), N);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  if (check_finite_enabled() && capture == cudaStreamCaptureStatusNone) {
    // Opt-in (MCLCORE_CUDA_CHECK_FINITE=1): the one host synchronisation of the op.
    const Tensor b = bad.cpu();  // synchronises
    const int* bp = b.const_data_ptr<int>();
    TORCH_CHECK(bp[0] == INT_MAX, "mclcore.infonce: p contains NaN or infinite values (row ", bp[0], ")");
    TORCH_CHECK(bp[1] == INT_MAX, "mclcore.infonce: k contains NaN or infinite values (row ", bp[1], ")");
  }
  if (groups.has_value() && groups->defined()) in.groups = groups->contiguous();
  return in;
}

// Forward: la, lp (B,) and loss (0-dim), all compute dtype. Blocks over the B query rows (x) and, for small B, the
// key tiles split over y (about two blocks per SM).
template <typename T>
void forward(const Prepared& in, Tensor& la, Tensor& lp, Tensor& loss, int device, cudaStream_t stream) {
  const int64_t B = in.B, N = in.N, d = in.d;
  const int64_t row_tiles = (B + kTile - 1) / kTile, key_tiles = (N + kTile - 1) / kTile;
  const int64_t target = 2 * static_cast<int64_t>(sm_count(device));
  int64_t nsplit = std::max<int64_t>(1, std::min<int64_t>(key_tiles, (target + row_tiles - 1) / row_tiles));
  const int64_t tps = (key_tiles + nsplit - 1) / nsplit;
  nsplit = (key_tiles + tps - 1) / tps;
  Tensor part = at::empty({nsplit, B, 4}, in.qs.options());
  const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(nsplit));
  fwd_kernel<T><<<grid, kThreads, 0, stream>>>(in.qs.const_data_ptr<T>(), in.kn.const_data_ptr<T>(), in.gptr(), B,
                                               d, static_cast<int>(tps), part.mutable_data_ptr<T>(),
                                               lp.mutable_data_ptr<T>(), N, in.off);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  combine_kernel<T><<<static_cast<unsigned>((B + 255) / 256), 256, 0, stream>>>(
      part.const_data_ptr<T>(), static_cast<int>(nsplit), B, in.groups.defined(), la.mutable_data_ptr<T>(),
      lp.mutable_data_ptr<T>(), in.badptr());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  loss_kernel<T><<<1, kThreads, 0, stream>>>(la.const_data_ptr<T>(), lp.const_data_ptr<T>(), B,
                                             loss.mutable_data_ptr<T>(), in.badptr());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Launch shape of one grad_kernel side: own rows over x, output column chunks over y, other-side tiles split over z.
struct GradGrid {
  int64_t own_tiles, groups_y, cpb, nsplit, tps;
};

// For small problems the chunks are spread over blockIdx.y and, if that still gives fewer blocks than ~2 per SM,
// the other side's tiles over blockIdx.z, each split writing its own (rows, d) partial sums (at most
// kMaxGradSplits of them), added by norm_bwd_kernel. Deterministic, memory O(rows d).
GradGrid grad_grid(int64_t own_rows, int64_t other_rows, int64_t d, int device) {
  GradGrid g;
  g.own_tiles = (own_rows + kTile - 1) / kTile;
  const int64_t other_tiles = (other_rows + kTile - 1) / kTile;
  const int64_t nchunks = (d + kChunk - 1) / kChunk;
  const int64_t target = 2 * static_cast<int64_t>(sm_count(device));
  g.groups_y = std::max<int64_t>(1, std::min<int64_t>(nchunks, (target + g.own_tiles - 1) / g.own_tiles));
  g.cpb = (nchunks + g.groups_y - 1) / g.groups_y;
  g.groups_y = (nchunks + g.cpb - 1) / g.cpb;
  g.nsplit = std::max<int64_t>(1, std::min<int64_t>({other_tiles, kMaxGradSplits,
                                                     (target + g.own_tiles * g.groups_y - 1) /
                                                         (g.own_tiles * g.groups_y)}));
  g.tps = (other_tiles + g.nsplit - 1) / g.nsplit;
  g.nsplit = (other_tiles + g.tps - 1) / g.tps;
  return g;
}

dim3 grid_of(const GradGrid& g) {
  return dim3(static_cast<unsigned>(g.own_tiles), static_cast<unsigned>(g.groups_y), static_cast<unsigned>(g.nsplit));
}

// Backward: dp (B, d), dk (N, d) in the dtypes of p and k. gptr: the upstream gradient on the device (compute
// dtype), or null for 1. dq runs over the B query rows against the N keys, dk over the N keys against the B rows:
// two launch shapes (the same one in square mode).
template <typename T, typename In>
std::tuple<Tensor, Tensor> backward(const Prepared& in, const T* la, const T* lp, const T* gptr, double tau,
                                    double eps, at::ScalarType out_dtype, int device, cudaStream_t stream) {
  const int64_t B = in.B, N = in.N, d = in.d;
  const GradGrid gq = grad_grid(B, N, d, device), gk = grad_grid(N, B, d, device);
  Tensor dq = at::empty({gq.nsplit, B, d}, in.qs.options());
  Tensor dkh = at::empty({gk.nsplit, N, d}, in.qs.options());
  const T coef0 = static_cast<T>(1.0 / static_cast<double>(B));
  grad_kernel<T, false><<<grid_of(gq), kThreads, 0, stream>>>(
      in.qs.const_data_ptr<T>(), in.kn.const_data_ptr<T>(), in.gptr(), la, lp, gptr, coef0, B, d,
      static_cast<int>(gq.cpb), static_cast<int>(gq.tps), dq.mutable_data_ptr<T>(), N, in.off);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  grad_kernel<T, true><<<grid_of(gk), kThreads, 0, stream>>>(
      in.qs.const_data_ptr<T>(), in.kn.const_data_ptr<T>(), in.gptr(), la, lp, gptr, coef0, B, d,
      static_cast<int>(gk.cpb), static_cast<int>(gk.tps), dkh.mutable_data_ptr<T>(), N, in.off);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // In place when there is one split and the output dtype is the compute dtype (each lane reads an element before
  // writing it, and the row's dot product is complete before any write); else fresh outputs.
  const bool same = out_dtype == in.qs.scalar_type();
  Tensor dp = (same && gq.nsplit == 1) ? dq.view({B, d}) : at::empty({B, d}, in.qs.options().dtype(out_dtype));
  Tensor dk = (same && gk.nsplit == 1) ? dkh.view({N, d}) : at::empty({N, d}, in.qs.options().dtype(out_dtype));
  const int per_block = 8;
  norm_bwd_kernel<T, In><<<static_cast<unsigned>((B + per_block - 1) / per_block), 32 * per_block, 0, stream>>>(
      dq.const_data_ptr<T>(), static_cast<int>(gq.nsplit), in.qs.const_data_ptr<T>(),
      in.pnorm.const_data_ptr<double>(), B, d, static_cast<T>(tau), static_cast<T>(1.0 / tau), eps,
      dp.mutable_data_ptr<In>(), in.badptr());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  norm_bwd_kernel<T, In><<<static_cast<unsigned>((N + per_block - 1) / per_block), 32 * per_block, 0, stream>>>(
      dkh.const_data_ptr<T>(), static_cast<int>(gk.nsplit), in.kn.const_data_ptr<T>(),
      in.knorm.const_data_ptr<double>(), N, d, T(1), T(1), eps, dk.mutable_data_ptr<In>(), in.badptr());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dp, dk};
}

std::tuple<Tensor, Tensor, Tensor> infonce_cuda_one(const Tensor& p, const Tensor& k,
                                                    const std::optional<Tensor>& groups, double tau, double eps,
                                                    std::optional<int64_t> offset) {
  const int64_t off = check_inputs(p, k, groups, tau, eps, offset);
  const c10::cuda::CUDAGuard guard(p.device());
  const int device = p.get_device();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  const int64_t B = p.size(0);
  const auto ct = compute_dtype(p.scalar_type());
  Tensor loss = at::empty({}, p.options().dtype(ct));
  Tensor lse_all = at::empty({B}, p.options().dtype(ct));
  Tensor lse_pos = at::empty({B}, p.options().dtype(ct));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "mclcore_infonce_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const Prepared in = prepare<T, scalar_t>(p, k, groups, tau, eps, off, stream);
    forward<T>(in, lse_all, lse_pos, loss, device, stream);
  });
  return {loss, lse_all, lse_pos};
}

std::tuple<Tensor, Tensor> infonce_backward_cuda_one(const Tensor& grad_loss, const Tensor& p, const Tensor& k,
                                                     const std::optional<Tensor>& groups, const Tensor& lse_all,
                                                     const Tensor& lse_pos, double tau, double eps,
                                                     std::optional<int64_t> offset) {
  const int64_t off = check_inputs(p, k, groups, tau, eps, offset);
  infonce_checks::check_row_stats(p, grad_loss, lse_all, lse_pos);
  const c10::cuda::CUDAGuard guard(p.device());
  const int device = p.get_device();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  const auto ct = compute_dtype(p.scalar_type());
  // The upstream gradient stays on the device (no .item() synchronisation); a CPU scalar is copied over.
  const Tensor g = grad_loss.reshape({1}).to(p.device(), ct).contiguous();
  Tensor dp, dk;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "mclcore_infonce_backward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const Prepared in = prepare<T, scalar_t>(p, k, groups, tau, eps, off, stream);
    const Tensor la = lse_all.contiguous(), lp = lse_pos.contiguous();
    std::tie(dp, dk) = backward<T, scalar_t>(in, la.const_data_ptr<T>(), lp.const_data_ptr<T>(),
                                             g.const_data_ptr<T>(), tau, eps, p.scalar_type(), device, stream);
  });
  return {dp, dk};
}

std::tuple<Tensor, Tensor, Tensor> infonce_with_grad_cuda_one(const Tensor& p, const Tensor& k,
                                                              const std::optional<Tensor>& groups, double tau,
                                                              double eps, std::optional<int64_t> offset) {
  const int64_t off = check_inputs(p, k, groups, tau, eps, offset);
  const c10::cuda::CUDAGuard guard(p.device());
  const int device = p.get_device();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  const int64_t B = p.size(0);
  const auto ct = compute_dtype(p.scalar_type());
  Tensor loss = at::empty({}, p.options().dtype(ct));
  Tensor dp, dk;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "mclcore_infonce_with_grad_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const Prepared in = prepare<T, scalar_t>(p, k, groups, tau, eps, off, stream);
    Tensor la = at::empty({B}, in.qs.options());
    Tensor lp = at::empty({B}, in.qs.options());
    forward<T>(in, la, lp, loss, device, stream);
    std::tie(dp, dk) = backward<T, scalar_t>(in, la.const_data_ptr<T>(), lp.const_data_ptr<T>(), nullptr, tau, eps,
                                             p.scalar_type(), device, stream);
  });
  return {loss, dp, dk};
}


// Unstacked (p (B, d)) or member-stacked (p (M, B, d): csrc/infonce/infonce_members.h) entry points.
std::tuple<Tensor, Tensor, Tensor> infonce_cuda(const Tensor& p, const Tensor& k, const std::optional<Tensor>& groups,
                                                double tau, double eps, std::optional<int64_t> offset) {
  if (!infonce_members::stacked(p)) return infonce_cuda_one(p, k, groups, tau, eps, offset);
  return infonce_members::forward(infonce_cuda_one, p, k, groups, tau, eps, offset);
}

std::tuple<Tensor, Tensor> infonce_backward_cuda(const Tensor& grad_loss, const Tensor& p, const Tensor& k,
                                                 const std::optional<Tensor>& groups, const Tensor& lse_all,
                                                 const Tensor& lse_pos, double tau, double eps,
                                                 std::optional<int64_t> offset) {
  if (!infonce_members::stacked(p))
    return infonce_backward_cuda_one(grad_loss, p, k, groups, lse_all, lse_pos, tau, eps, offset);
  return infonce_members::backward(infonce_backward_cuda_one, grad_loss, p, k, groups, lse_all, lse_pos, tau, eps,
                                   offset);
}

std::tuple<Tensor, Tensor, Tensor> infonce_with_grad_cuda(const Tensor& p, const Tensor& k,
                                                          const std::optional<Tensor>& groups, double tau,
                                                          double eps, std::optional<int64_t> offset) {
  if (!infonce_members::stacked(p)) return infonce_with_grad_cuda_one(p, k, groups, tau, eps, offset);
  return infonce_members::forward(infonce_with_grad_cuda_one, p, k, groups, tau, eps, offset);
}

}  // namespace

// CUDA kernels of the private ops _cuda_infonce, _cuda_infonce_backward, _cuda_infonce_with_grad, whose schemas
// (the public ones' under another name) csrc/registration.cpp declares; mclcore/ops/_backend.py calls them from
// the public ops' CUDA kernels when the "cuda" backend is selected.
TORCH_LIBRARY_IMPL(mclcore, CUDA, m) {
  m.impl("_cuda_infonce", &infonce_cuda);
  m.impl("_cuda_infonce_backward", &infonce_backward_cuda);
  m.impl("_cuda_infonce_with_grad", &infonce_with_grad_cuda);
}

}  // namespace mclcore
