// Portable SIMD pieces shared by the CPU kernels (csrc/infonce, csrc/critic_grad).
//
// Elementwise work is written with GCC/Clang vector extensions, so it vectorises whatever the build flags: the
// extension is built for baseline x86-64, where plain loops over exp did not vectorise at all (3.7 ns per entry
// measured on the 2-core AMD EPYC dev VM (2026-11) against ~0.3 ns here). On x86-64 each float32 kernel is compiled twice, 8 lanes for
// AVX2+FMA (MCL_ATTR_AVX2) and 4 lanes for the baseline (MCL_ATTR_BASE), and MCL_DISPATCH picks one on the first
// call from the CPU's features. Other compilers get MCL_VEC = 0 and the kernels' scalar loops.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define MCL_X86_DISPATCH 1
#else
#define MCL_X86_DISPATCH 0
#endif
#if defined(__GNUC__) || defined(__clang__)
#define MCL_VEC 1
#define MCL_INLINE inline __attribute__((always_inline))
#define MCL_ATTR_AVX2 __attribute__((target("avx2,fma"), noinline))
#define MCL_ATTR_BASE __attribute__((noinline))
#else
#define MCL_VEC 0
#define MCL_INLINE inline
#define MCL_ATTR_AVX2
#define MCL_ATTR_BASE
#endif

namespace mclcore {
namespace simd {

// exp for float32 (Cephes' expf: range reduction by ln 2, degree-6 polynomial), written out so that the vector
// version below is the same arithmetic lane by lane. Max relative error 8e-8 measured over [-87, 10]; returns 0
// below -87.3 (where expf underflows anyway) and for -inf, which the masked positive sums of infonce rely on.
constexpr float kExpLo = -87.3365447505531f, kExpHi = 88.3762626647949f;

// The reduction and polynomial, for a float or a float vector V: x = n ln 2 + r (n rounded to nearest via
// 1.5 * 2^23), returns e^r; the caller scales by 2^n.
template <typename V>
MCL_INLINE V exp_reduced(V x, V& n) {
  n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  V r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V poly = r * 1.9875691500e-4f + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  return poly * r * r + r + 1.0f;
}

MCL_INLINE float exp_t(float x) {
  float xc = x < kExpLo ? kExpLo : (x > kExpHi ? kExpHi : x);
  float n;
  const float poly = exp_reduced(xc, n);
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < kExpLo ? 0.0f : poly * scale;
}
MCL_INLINE double exp_t(double x) { return std::exp(x); }

#if MCL_VEC
typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));

// float32 lanes of one width: loads, stores, exp and horizontal reductions. Kernels derive their row operations
// from it (see Simd in csrc/infonce/infonce_cpu.cpp).
template <typename V>
struct Vec {
  using I = decltype(V{} < V{});  // lane masks / int32 lanes of the same width
  static constexpr int L = sizeof(V) / sizeof(float);

  static MCL_INLINE V splat(float v) { return V{} + v; }
  static MCL_INLINE V load(const float* p) {
    V v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static MCL_INLINE I loadi(const int32_t* p) {
    I v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static MCL_INLINE void store(float* p, V v) { std::memcpy(p, &v, sizeof(v)); }
  static MCL_INLINE V exp(V x) {  // exp_t, lane by lane
    V xc = x < kExpLo ? splat(kExpLo) : x;
    xc = xc > kExpHi ? splat(kExpHi) : xc;
    return x < kExpLo ? splat(0.0f) : exp_nc(xc);
  }
  // exp_t without the range clamps, for arguments known to lie in [-87.3, 88.3].
  static MCL_INLINE V exp_nc(V x) {
    V n;
    const V poly = exp_reduced(x, n);
    I bits = (__builtin_convertvector(n, I) + 127) << 23;
    return poly * (V)bits;
  }
  static MCL_INLINE float hmax(V v) {
    float m = v[0];
    for (int l = 1; l < L; ++l) m = m > v[l] ? m : v[l];
    return m;
  }
  static MCL_INLINE float hsum(V v) {
    float s = 0;
    for (int l = 0; l < L; ++l) s += v[l];
    return s;
  }
};
#endif  // MCL_VEC

// Whether the AVX2+FMA builds may run here (decided once per process).
inline bool use_avx2() {
#if MCL_VEC && MCL_X86_DISPATCH
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return yes;
#else
  return false;
#endif
}

}  // namespace simd
}  // namespace mclcore

// NAME##_avx2 where the CPU has AVX2+FMA, else NAME##_base (both defined by the kernel file).
#if MCL_VEC && MCL_X86_DISPATCH
#define MCL_DISPATCH(NAME, ...) \
  (::mclcore::simd::use_avx2() ? NAME##_avx2(__VA_ARGS__) : NAME##_base(__VA_ARGS__))
#else
#define MCL_DISPATCH(NAME, ...) NAME##_base(__VA_ARGS__)
#endif
