#include "backend/cpu/vec.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>

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

// Where row r of a 16-row group sits in a packed bf16 panel: the order in which the kernels' two in-lane unpacks
// (no lane-crossing widen) give rows 0-7 and 8-15 of a 256-bit load of 16 bf16 values.
inline int bf16_slot(int r) { return (r & ~12) | ((r & 4) << 1) | ((r & 8) >> 1); }
// Where row r of a panel (r < kPanelRows) is stored in each column.
template <typename W>
int packed_slot(int r) {
  return std::is_same_v<W, bf16_t> ? (r & ~15) | bf16_slot(r & 15) : r;
}

template <typename W>
void pack_panel(const W* w, int64_t rows, int64_t in, int64_t panel, W* dst) {
  int slot[kPanelRows];
  for (int r = 0; r < kPanelRows; ++r) slot[r] = packed_slot<W>(r);
  constexpr int64_t kBlock = 64;  // columns per pass: the block's 8 KB to 16 KB of output stays in L1
  for (int64_t k0 = 0; k0 < in; k0 += kBlock) {
    const int64_t k1 = std::min(in, k0 + kBlock);
    for (int r = 0; r < kPanelRows; ++r) {
      const int64_t row = panel * kPanelRows + r;
      W* d = dst + slot[r];
      if (row < rows) {
        const W* src = w + row * in;
        for (int64_t k = k0; k < k1; ++k) d[k * kPanelRows] = src[k];
      } else {
        for (int64_t k = k0; k < k1; ++k) d[k * kPanelRows] = W{};
      }
    }
  }
}

// The portable kernels: the same packed layout, and the same order of operations for every output as each
// other (acc += w * x over k, from zero), so a row gets the same bits from the GEMV and from the GEMM.
template <typename W>
float packed_weight(const W* panel, int64_t k, int r) {
  return scalar(panel + k * kPanelRows + packed_slot<W>(r));
}

template <typename W>
void gemm_portable(const W* panel, int64_t in, int r0, int rows, const float* x, int64_t ldx, int tokens, float* out,
                   int64_t ldo) {
  for (int t = 0; t < tokens; ++t)
    for (int r = r0; r < r0 + rows; ++r) {
      float acc = 0.f;
      for (int64_t k = 0; k < in; ++k) acc = acc + packed_weight(panel, k, r) * x[t * ldx + k];
      out[t * ldo + r] = acc;
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

// Sixteen packed weights of one column (16 rows) as two f32 vectors, rows 0-7 and 8-15.
RILL_AVX2 inline void load16(const float* p, __m256& lo, __m256& hi) {
  lo = _mm256_loadu_ps(p);
  hi = _mm256_loadu_ps(p + 8);
}
RILL_AVX2 inline void load16(const f16_t* p, __m256& lo, __m256& hi) {
  lo = load8(p);
  hi = load8(p + 8);
}
RILL_AVX2 inline void load16(const bf16_t* p, __m256& lo, __m256& hi) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), z = _mm256_setzero_si256();
  lo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(z, v));
  hi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(z, v));
}

RILL_AVX2 inline void store16(float* o, int rows, __m256 lo, __m256 hi) {
  if (rows == 16) {
    _mm256_storeu_ps(o, lo);
    _mm256_storeu_ps(o + 8, hi);
    return;
  }
  alignas(32) float tmp[16];
  _mm256_store_ps(tmp, lo);
  _mm256_store_ps(tmp + 8, hi);
  std::memcpy(o, tmp, size_t(rows) * sizeof(float));
}

// GEMV over one panel: 64 rows in eight accumulators, one broadcast of x per column, the panel read in address
// order (one sequential stream per thread, which the hardware prefetcher follows best).
template <typename W>
RILL_AVX2 void gemv_panel_avx2(const W* panel, int64_t in, const float* x, float* out, int rows) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  for (int64_t k = 0; k < in; ++k) {
    const __m256 xb = _mm256_broadcast_ss(x + k);
    const W* col = panel + k * kPanelRows;
    __m256 lo, hi;
    load16(col, lo, hi);
    a0 = _mm256_fmadd_ps(lo, xb, a0);
    a1 = _mm256_fmadd_ps(hi, xb, a1);
    load16(col + 16, lo, hi);
    a2 = _mm256_fmadd_ps(lo, xb, a2);
    a3 = _mm256_fmadd_ps(hi, xb, a3);
    load16(col + 32, lo, hi);
    a4 = _mm256_fmadd_ps(lo, xb, a4);
    a5 = _mm256_fmadd_ps(hi, xb, a5);
    load16(col + 48, lo, hi);
    a6 = _mm256_fmadd_ps(lo, xb, a6);
    a7 = _mm256_fmadd_ps(hi, xb, a7);
  }
  store16(out, std::clamp(rows, 0, 16), a0, a1);
  if (rows > 16) store16(out + 16, std::min(rows - 16, 16), a2, a3);
  if (rows > 32) store16(out + 32, std::min(rows - 32, 16), a4, a5);
  if (rows > 48) store16(out + 48, std::min(rows - 48, 16), a6, a7);
}

RILL_AVX2 inline void load_c(const float* o, int rows, __m256& lo, __m256& hi) {
  if (rows == 16) {
    lo = _mm256_loadu_ps(o);
    hi = _mm256_loadu_ps(o + 8);
    return;
  }
  alignas(32) float tmp[16] = {};
  std::memcpy(tmp, o, size_t(rows) * sizeof(float));
  lo = _mm256_load_ps(tmp);
  hi = _mm256_load_ps(tmp + 8);
}

// One token's row of a tile: its x[k] broadcast against the column's 16 weights.
RILL_AVX2 inline void fma_row(const float* xk, __m256 lo, __m256 hi, __m256& c0, __m256& c1) {
  const __m256 b = _mm256_broadcast_ss(xk);
  c0 = _mm256_fmadd_ps(b, lo, c0);
  c1 = _mm256_fmadd_ps(b, hi, c1);
}

// GEMM tile: 16 rows of a panel x T tokens (T <= 6: 12 accumulators, two weight vectors, one broadcast). Per
// column, one load of the 16 weights and T broadcasts of x feed 2T FMAs; each output accumulates over k in the
// same order as in the GEMV, so the two agree to the bit.
// (Named accumulators, not an array: GCC keeps an array of vectors in memory and stores it every iteration.)
// Columns [k0, k1) of the tile; from k0 > 0 on, the sums so far are read back from out (exactly: an f32 stored
// and loaded is the same f32), so the order of operations is that of one pass.
template <typename W, int T>
RILL_AVX2 void gemm_tile_avx2(const W* panel, int64_t k0, int64_t k1, int r0, int rows, const float* x, int64_t ldx,
                              float* out, int64_t ldo) {
  static_assert(T >= 1 && T <= 6);
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  float* o = out + r0;
  if (k0 > 0) {
    load_c(o, rows, c00, c01);
    if constexpr (T > 1) load_c(o + ldo, rows, c10, c11);
    if constexpr (T > 2) load_c(o + 2 * ldo, rows, c20, c21);
    if constexpr (T > 3) load_c(o + 3 * ldo, rows, c30, c31);
    if constexpr (T > 4) load_c(o + 4 * ldo, rows, c40, c41);
    if constexpr (T > 5) load_c(o + 5 * ldo, rows, c50, c51);
  }
  const W* p = panel + r0;
  const float *x0 = x, *x1 = x + ldx, *x2 = x + 2 * ldx, *x3 = x + 3 * ldx, *x4 = x + 4 * ldx, *x5 = x + 5 * ldx;
  for (int64_t k = k0; k < k1; ++k) {
    __m256 lo, hi;
    load16(p + k * kPanelRows, lo, hi);
    fma_row(x0 + k, lo, hi, c00, c01);
    if constexpr (T > 1) fma_row(x1 + k, lo, hi, c10, c11);
    if constexpr (T > 2) fma_row(x2 + k, lo, hi, c20, c21);
    if constexpr (T > 3) fma_row(x3 + k, lo, hi, c30, c31);
    if constexpr (T > 4) fma_row(x4 + k, lo, hi, c40, c41);
    if constexpr (T > 5) fma_row(x5 + k, lo, hi, c50, c51);
  }
  store16(o, rows, c00, c01);
  if constexpr (T > 1) store16(o + ldo, rows, c10, c11);
  if constexpr (T > 2) store16(o + 2 * ldo, rows, c20, c21);
  if constexpr (T > 3) store16(o + 3 * ldo, rows, c30, c31);
  if constexpr (T > 4) store16(o + 4 * ldo, rows, c40, c41);
  if constexpr (T > 5) store16(o + 5 * ldo, rows, c50, c51);
}

// A panel's rows for n_tok tokens: blocks of 256 columns, within a block each 16-row strip of the panel (16 KB of
// cache lines) stays in L1 while every group of 6 tokens (6 KB of x) passes it.
template <typename W>
RILL_AVX2 void gemm_panel_avx2(const W* panel, int64_t in, int rows, const float* x, int64_t ldx, int64_t n_tok,
                               float* out, int64_t ldo) {
  constexpr int64_t kDepth = 256;
  for (int64_t k0 = 0; k0 < in; k0 += kDepth) {
    const int64_t k1 = std::min(in, k0 + kDepth);
    for (int r0 = 0; r0 < rows; r0 += 16) {
      const int m = std::min(16, rows - r0);
      for (int64_t t = 0; t < n_tok; t += 6) {
        const float* xt = x + t * ldx;
        float* ot = out + t * ldo;
        switch (std::min<int64_t>(6, n_tok - t)) {
          case 6: gemm_tile_avx2<W, 6>(panel, k0, k1, r0, m, xt, ldx, ot, ldo); break;
          case 5: gemm_tile_avx2<W, 5>(panel, k0, k1, r0, m, xt, ldx, ot, ldo); break;
          case 4: gemm_tile_avx2<W, 4>(panel, k0, k1, r0, m, xt, ldx, ot, ldo); break;
          case 3: gemm_tile_avx2<W, 3>(panel, k0, k1, r0, m, xt, ldx, ot, ldo); break;
          case 2: gemm_tile_avx2<W, 2>(panel, k0, k1, r0, m, xt, ldx, ot, ldo); break;
          default: gemm_tile_avx2<W, 1>(panel, k0, k1, r0, m, xt, ldx, ot, ldo); break;
        }
      }
    }
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

// exp(x) for x <= 0 (softmax after subtracting the maximum): 2^(x log2 e) as 2^round * 2^frac, the fraction
// by a degree-6 polynomial (relative error ~2e-7, as exp in f32); below -87 it gives exp(-87), no denormals.
RILL_AVX2 inline __m256 exp_neg(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.f));
  const __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f));
  const __m256 r = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(t, r);  // [-0.5, 0.5]
  __m256 p = _mm256_set1_ps(1.535336188319500e-4f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.339887440266574e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618437357674640e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550332471162809e-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402264791363012e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931472028550421e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(r), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

RILL_AVX2 float exp_sum_avx2(float* s, int64_t n, float mx) {
  const __m256 m = _mm256_set1_ps(mx);
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(s + i), m));
    _mm256_storeu_ps(s + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  float sum = hsum(acc);
  for (; i < n; ++i) sum += (s[i] = std::exp(s[i] - mx));
  return sum;
}

// Eight keys at a time: eight dot products accumulate side by side, then one transpose-and-add turns the eight
// vectors into a vector of eight scores. A last group of fewer keys repeats its last key, so every key's score
// takes the same operations wherever it falls in a group: a token's scores do not depend on how its keys are
// cut into runs (chunked prefill gives the bits of token-by-token decode).
RILL_AVX2 void dot_rows_avx2(const float* q, const float* k, int64_t stride, int64_t count, int64_t hd, float scale,
                             float* out) {
  if (hd % 8 != 0) {
    for (int64_t j = 0; j < count; ++j) out[j] = dot_avx2(q, k + j * stride, hd) * scale;
    return;
  }
  const __m256 sc = _mm256_set1_ps(scale);
  for (int64_t j = 0; j < count; j += 8) {
    const int64_t rem = std::min<int64_t>(8, count - j);
    const float* kp[8];
    for (int u = 0; u < 8; ++u) kp[u] = k + (j + std::min<int64_t>(u, rem - 1)) * stride;
    __m256 a[8];
    for (int u = 0; u < 8; ++u) a[u] = _mm256_setzero_ps();
    for (int64_t d = 0; d < hd; d += 8) {
      const __m256 qv = _mm256_loadu_ps(q + d);
      for (int u = 0; u < 8; ++u) a[u] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kp[u] + d), a[u]);
    }
    // a[u] holds key u's eight partial sums: add pairs, then quads, then the two 128-bit halves.
    const __m256 s01 = _mm256_hadd_ps(a[0], a[1]), s23 = _mm256_hadd_ps(a[2], a[3]);
    const __m256 s45 = _mm256_hadd_ps(a[4], a[5]), s67 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);
    const __m256 lo = _mm256_permute2f128_ps(s0123, s4567, 0x20), hi = _mm256_permute2f128_ps(s0123, s4567, 0x31);
    const __m256 r = _mm256_mul_ps(_mm256_add_ps(lo, hi), sc);
    if (rem == 8) {
      _mm256_storeu_ps(out + j, r);
    } else {
      alignas(32) float tmp[8];
      _mm256_store_ps(tmp, r);
      std::memcpy(out + j, tmp, size_t(rem) * sizeof(float));
    }
  }
}

// acc += sum_j p[j] * v[j * stride]: 64 dimensions at a time in eight registers, across all the keys.
RILL_AVX2 void weighted_sum_avx2(const float* p, const float* v, int64_t stride, int64_t count, int64_t hd,
                                 float* acc) {
  int64_t d = 0;
  for (; d + 64 <= hd; d += 64) {
    __m256 a[8];
    for (int u = 0; u < 8; ++u) a[u] = _mm256_loadu_ps(acc + d + 8 * u);
    for (int64_t j = 0; j < count; ++j) {
      const __m256 pj = _mm256_broadcast_ss(p + j);
      const float* vj = v + j * stride + d;
      for (int u = 0; u < 8; ++u) a[u] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8 * u), a[u]);
    }
    for (int u = 0; u < 8; ++u) _mm256_storeu_ps(acc + d + 8 * u, a[u]);
  }
  if (d < hd)
    for (int64_t j = 0; j < count; ++j)
      for (int64_t i = d; i < hd; ++i) acc[i] += p[j] * v[j * stride + i];
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

size_t packed_bytes(DType t, int64_t rows, int64_t in) {
  return size_t((rows + kPanelRows - 1) / kPanelRows) * size_t(in) * kPanelRows * dtype_size(t);
}

void pack_panels(DType t, const void* w, int64_t rows, int64_t in, int64_t p0, int64_t p1, void* dst) {
  const size_t per = size_t(in) * kPanelRows;
  for (int64_t p = p0; p < p1; ++p) switch (t) {
      case DType::F32: pack_panel(static_cast<const float*>(w), rows, in, p, static_cast<float*>(dst) + p * per); break;
      case DType::BF16:
        pack_panel(static_cast<const bf16_t*>(w), rows, in, p, static_cast<bf16_t*>(dst) + p * per);
        break;
      case DType::F16: pack_panel(static_cast<const f16_t*>(w), rows, in, p, static_cast<f16_t*>(dst) + p * per); break;
      default: break;
    }
}

namespace {
// Calls f(panel pointer as the weight type) for panel p of m.
template <typename F>
void with_panel(const PackedMatrix& m, int64_t p, F&& f) {
  const size_t off = size_t(p) * size_t(m.in) * kPanelRows;
  switch (m.dtype) {
    case DType::F32: return f(static_cast<const float*>(m.data) + off);
    case DType::BF16: return f(static_cast<const bf16_t*>(m.data) + off);
    case DType::F16: return f(static_cast<const f16_t*>(m.data) + off);
    default: return;
  }
}
}  // namespace

void gemv_packed(const PackedMatrix& m, const float* x, int64_t p0, int64_t p1, float* out) {
  for (int64_t p = p0; p < p1; ++p) {
    const int rows = int(std::min<int64_t>(kPanelRows, m.rows - p * kPanelRows));
    float* o = out + p * kPanelRows;
    with_panel(m, p, [&](const auto* panel) {
#if defined(__x86_64__)
      if (has_avx2()) return gemv_panel_avx2(panel, m.in, x, o, rows);
#endif
      gemm_portable(panel, m.in, 0, rows, x, m.in, 1, o, 0);
    });
  }
}

void gemm_packed(const PackedMatrix& m, int64_t p, const float* x, int64_t ldx, int64_t n_tok, float* out,
                 int64_t ldo) {
  const int rows = int(std::min<int64_t>(kPanelRows, m.rows - p * kPanelRows));
  float* o = out + p * kPanelRows;
  with_panel(m, p, [&](const auto* panel) {
#if defined(__x86_64__)
    if (has_avx2()) return gemm_panel_avx2(panel, m.in, rows, x, ldx, n_tok, o, ldo);
#endif
    gemm_portable(panel, m.in, 0, rows, x, ldx, int(n_tok), o, ldo);
  });
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

void dot_rows(const float* q, const float* k, int64_t stride, int64_t count, int64_t hd, float scale, float* out) {
#if defined(__x86_64__)
  if (has_avx2()) return dot_rows_avx2(q, k, stride, count, hd, scale, out);
#endif
  for (int64_t j = 0; j < count; ++j) out[j] = dot_f32(q, k + j * stride, hd) * scale;
}

float exp_sum(float* s, int64_t n, float mx) {
#if defined(__x86_64__)
  if (has_avx2()) return exp_sum_avx2(s, n, mx);
#endif
  float sum = 0.f;
  for (int64_t i = 0; i < n; ++i) sum += (s[i] = std::exp(s[i] - mx));
  return sum;
}

void weighted_sum(const float* p, const float* v, int64_t stride, int64_t count, int64_t hd, float* acc) {
#if defined(__x86_64__)
  if (has_avx2()) return weighted_sum_avx2(p, v, stride, count, hd, acc);
#endif
  for (int64_t j = 0; j < count; ++j)
    for (int64_t i = 0; i < hd; ++i) acc[i] += p[j] * v[j * stride + i];
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
