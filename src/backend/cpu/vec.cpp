#include "backend/cpu/vec.h"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#define RILL_AVX2 __attribute__((target("avx2,fma,f16c")))
#endif

namespace rill::cpu {

namespace {

// Element tags so overloads and templates can tell bf16 from f16 (both stored as uint16_t).
struct bf16_t {
  uint16_t bits;
};
struct f16_t {
  uint16_t bits;
};
inline float scalar(const float* p) { return *p; }
inline float scalar(const bf16_t* p) { return bf16_to_f32(p->bits); }
inline float scalar(const f16_t* p) { return f16_to_f32(p->bits); }

template <typename W>
void gemv_portable(const float* x, const W* w, int64_t in, int64_t r0, int64_t r1, float* out) {
  for (int64_t r = r0; r < r1; ++r) {
    const W* row = w + r * in;
    float s = 0.f;
    for (int64_t i = 0; i < in; ++i) s += x[i] * scalar(row + i);
    out[r - r0] = s;
  }
}

void gemm_portable(const float* x, int64_t n_tok, const float* wb, int64_t n_rows, int64_t in, float* out,
                   int64_t ldo) {
  for (int64_t t = 0; t < n_tok; ++t)
    for (int64_t r = 0; r < n_rows; ++r) {
      float s = 0.f;
      for (int64_t i = 0; i < in; ++i) s += x[t * in + i] * wb[r * in + i];
      out[t * ldo + r] = s;
    }
}

#if defined(__x86_64__)
RILL_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
RILL_AVX2 inline __m256 load8(const bf16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
RILL_AVX2 inline __m256 load8(const f16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
RILL_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Four rows at a time share each load of x: the kernel is bound by streaming the weights.
template <typename W>
RILL_AVX2 void gemv_avx2(const float* x, const W* w, int64_t in, int64_t r0, int64_t r1, float* out) {
  const int64_t vec_end = in & ~int64_t(7);
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    const W* w0 = w + r * in;
    const W* w1 = w0 + in;
    const W* w2 = w1 + in;
    const W* w3 = w2 + in;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < vec_end; i += 8) {
      const __m256 xv = load8(x + i);
      a0 = _mm256_fmadd_ps(load8(w0 + i), xv, a0);
      a1 = _mm256_fmadd_ps(load8(w1 + i), xv, a1);
      a2 = _mm256_fmadd_ps(load8(w2 + i), xv, a2);
      a3 = _mm256_fmadd_ps(load8(w3 + i), xv, a3);
    }
    float s0 = hsum(a0), s1 = hsum(a1), s2 = hsum(a2), s3 = hsum(a3);
    for (int64_t i = vec_end; i < in; ++i) {
      s0 += x[i] * scalar(w0 + i);
      s1 += x[i] * scalar(w1 + i);
      s2 += x[i] * scalar(w2 + i);
      s3 += x[i] * scalar(w3 + i);
    }
    out[r - r0] = s0;
    out[r - r0 + 1] = s1;
    out[r - r0 + 2] = s2;
    out[r - r0 + 3] = s3;
  }
  for (; r < r1; ++r) {
    const W* w0 = w + r * in;
    __m256 a0 = _mm256_setzero_ps();
    for (int64_t i = 0; i < vec_end; i += 8) a0 = _mm256_fmadd_ps(load8(w0 + i), load8(x + i), a0);
    float s0 = hsum(a0);
    for (int64_t i = vec_end; i < in; ++i) s0 += x[i] * scalar(w0 + i);
    out[r - r0] = s0;
  }
}

// T tokens x R rows of accumulators; each step loads T + R vectors for T * R FMAs.
template <int T, int R>
RILL_AVX2 inline void micro(const float* x, const float* wb, int64_t in, float* out, int64_t ldo) {
  const int64_t vec_end = in & ~int64_t(7);
  __m256 acc[T][R];
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < R; ++r) acc[t][r] = _mm256_setzero_ps();
  for (int64_t i = 0; i < vec_end; i += 8) {
    __m256 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm256_loadu_ps(wb + r * in + i);
    for (int t = 0; t < T; ++t) {
      const __m256 xv = _mm256_loadu_ps(x + t * in + i);
      for (int r = 0; r < R; ++r) acc[t][r] = _mm256_fmadd_ps(xv, wv[r], acc[t][r]);
    }
  }
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < R; ++r) {
      float s = hsum(acc[t][r]);
      for (int64_t i = vec_end; i < in; ++i) s += x[t * in + i] * wb[r * in + i];
      out[t * ldo + r] = s;
    }
}

RILL_AVX2 void gemm_avx2(const float* x, int64_t n_tok, const float* wb, int64_t n_rows, int64_t in, float* out,
                         int64_t ldo) {
  int64_t t = 0;
  for (; t + 3 <= n_tok; t += 3) {
    int64_t r = 0;
    for (; r + 4 <= n_rows; r += 4) micro<3, 4>(x + t * in, wb + r * in, in, out + t * ldo + r, ldo);
    for (; r < n_rows; ++r) micro<3, 1>(x + t * in, wb + r * in, in, out + t * ldo + r, ldo);
  }
  for (; t < n_tok; ++t) {
    int64_t r = 0;
    for (; r + 4 <= n_rows; r += 4) micro<1, 4>(x + t * in, wb + r * in, in, out + t * ldo + r, ldo);
    for (; r < n_rows; ++r) micro<1, 1>(x + t * in, wb + r * in, in, out + t * ldo + r, ldo);
  }
}

template <typename W>
RILL_AVX2 void to_f32_avx2(const W* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8(src + i));
  for (; i < n; ++i) dst[i] = scalar(src + i);
}

RILL_AVX2 float dot_avx2(const float* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float s = hsum(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

RILL_AVX2 void axpy_avx2(float a, const float* x, float* y, int64_t n) {
  const __m256 av = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += a * x[i];
}
#endif

}  // namespace

bool has_avx2() {
#if defined(__x86_64__)
  static const bool yes = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;  // F16C from CPUID leaf 1 (clang's __builtin_cpu_supports lacks it)
    const bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c && !std::getenv("RILL_NO_AVX2");
  }();
  return yes;
#else
  return false;
#endif
}

void gemv_rows(DType wt, const float* x, const void* w, int64_t in, int64_t r0, int64_t r1, float* out) {
#if defined(__x86_64__)
  if (has_avx2()) {
    switch (wt) {
      case DType::F32: return gemv_avx2(x, static_cast<const float*>(w), in, r0, r1, out);
      case DType::BF16: return gemv_avx2(x, static_cast<const bf16_t*>(w), in, r0, r1, out);
      case DType::F16: return gemv_avx2(x, static_cast<const f16_t*>(w), in, r0, r1, out);
      default: break;
    }
  }
#endif
  switch (wt) {
    case DType::F32: return gemv_portable(x, static_cast<const float*>(w), in, r0, r1, out);
    case DType::BF16: return gemv_portable(x, static_cast<const bf16_t*>(w), in, r0, r1, out);
    case DType::F16: return gemv_portable(x, static_cast<const f16_t*>(w), in, r0, r1, out);
    default: break;
  }
}

void gemm_f32_block(const float* x, int64_t n_tok, const float* wb, int64_t n_rows, int64_t in, float* out,
                    int64_t ldo) {
#if defined(__x86_64__)
  if (has_avx2()) return gemm_avx2(x, n_tok, wb, n_rows, in, out, ldo);
#endif
  gemm_portable(x, n_tok, wb, n_rows, in, out, ldo);
}

void to_f32(DType t, const void* src, float* dst, int64_t n) {
#if defined(__x86_64__)
  if (has_avx2()) {
    switch (t) {
      case DType::F32: std::memcpy(dst, src, size_t(n) * 4); return;
      case DType::BF16: return to_f32_avx2(static_cast<const bf16_t*>(src), dst, n);
      case DType::F16: return to_f32_avx2(static_cast<const f16_t*>(src), dst, n);
      default: break;
    }
  }
#endif
  switch (t) {
    case DType::F32: std::memcpy(dst, src, size_t(n) * 4); return;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(static_cast<const uint16_t*>(src)[i]);
      return;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(static_cast<const uint16_t*>(src)[i]);
      return;
    default: break;
  }
}

float dot_f32(const float* a, const float* b, int64_t n) {
#if defined(__x86_64__)
  if (has_avx2()) return dot_avx2(a, b, n);
#endif
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

void axpy_f32(float a, const float* x, float* y, int64_t n) {
#if defined(__x86_64__)
  if (has_avx2()) return axpy_avx2(a, x, y, n);
#endif
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

}  // namespace rill::cpu
