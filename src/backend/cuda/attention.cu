// Paged attention over the flat varlen batch, in three kernels; each sequence's tokens take exactly one
// (route_of), decided alike on the host and the device:
//  - prompts (16+ new tokens): a tensor-core kernel, FlashAttention-2 style (below);
//  - decode (new tokens x query heads per KV head fit one 16-row MMA tile): a tensor-core kernel with the
//    group's heads packed into the tile, so K/V are read once per group, and the keys split across blocks
//    (at most 16 splits, decided by the sequence's own length), merged by log-sum-exp;
//  - the rest (rolling KV with attention sinks, head sizes other than 64/128, mid-size chunks, and everything
//    in float32 mode, where q and the cache are f32): the split kernel, flash-decoding style on CUDA cores.
//    One block handles one query token, the query heads of one KV head (up to 8 at a time) and one split of
//    at most kSplitKeys keys; a key row of head_dim entries is read by LPK lanes with one 16-byte load each
//    (two in f32), scores are reduced across them with shuffles and folded into an
//    online softmax per lane group, then groups and warps merge through shared memory.
//
// A token's splits depend only on how many keys it attends to, never on the rest of the batch. Masks are the
// CPU backend's: causal, an optional sliding window, and rolling KV (entries [0, sinks) are scored with the
// sink query, [sinks, hole_end) are skipped).
#include <cuda_bf16.h>

#include <cmath>
#include <cstdlib>
#include <mutex>
#include <set>
#include <string>
#include <type_traits>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace rill::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kMaxG = 8;           // query heads per block
constexpr int kSplitKeys = 256;    // keys per split

struct Params {
  AttentionArgs a;
  int gchunks = 1;     // blocks per KV head along y: ceil(group / kMaxG)
  int max_splits = 1;  // grid z
  float* part_o = nullptr;    // [n, H, max_splits, hd]
  float* part_lse = nullptr;  // [n, H, max_splits]
  int tc_tiles = 0;           // tensor-core prefill: query tiles per sequence in its grid (0: not launched)
  int tc_rows = 0;            // tensor-core prefill: query rows per block (kPrefillRows or kPrefillRowsShort)
  int dec_maxq = 0;           // tensor-core decode: most new tokens of a decode sequence (0: not launched)
  int dec_splits = 1;         // tensor-core decode: blocks per sequence and KV head (decode_splits_bound)
  int dec_warps = 4;          // tensor-core decode: warps per block (decode_warps)
  float* dec_o = nullptr;     // [num_seqs, dec_maxq, H, kDecodeMaxSplits, hd]
  float* dec_lse = nullptr;   // [num_seqs, dec_maxq, H, kDecodeMaxSplits] (log2 units)
};

// Which kernel a sequence's tokens take: the tensor-core prefill kernel (16+ new tokens), the tensor-core
// decode kernel (new tokens x query heads per KV head fit one 16-row MMA tile), or the split kernel (rolling
// KV, other head sizes, an f32 cache, the rest). Host and device decide alike.
enum Route { kSplit = 0, kTcPrefill = 1, kTcDecode = 2 };
// The prefill kernel: K/V tiles of 64 keys, Q staged in shared memory, 32 query rows per warp (two 16-row MMA
// tiles, so that each K/V fragment read from shared memory feeds two MMAs), 8 warps (256 rows) per block and
// one block per SM; prompts of at most 128 tokens take 4 warps (128 rows) and two blocks per SM, so that no
// warp idles. History, measured on the H100 at 4096 causal tokens
// (bench/results/cuda-attention-prefill-variants-h100-2026-11-23.txt and ...-2026-11-23b.txt):
//  - 8 warps of 16 rows over 4 warps: 125 vs 109 TFLOP/s;
//  - Q in shared memory, not registers, 64-key tiles, 128 registers and two blocks per SM (128-key tiles with
//    Q in registers took 255 registers, spilled, and left one block per SM): 158 -> 195;
//  - masks only on the tiles that need them, the score scale folded into the exponent's FFMA: 193 -> 213;
//  - 32 rows per warp in 8 warps, one block per SM: 208 -> 228 (4 warps, two blocks per SM: 221).
// Blocks launch longest first.
constexpr int kPrefillRows = 256, kPrefillRowsShort = 128, kPrefillMTiles = 2, kPrefillKeys = 64;
constexpr int kTcKeys = 64, kTcMinRows = 16, kDecodeMaxSplits = 16, kDecodeOneSplitTiles = 8;

__host__ __device__ __forceinline__ int route_of(int q_len, int sinks, int G, int hd, bool f32) {
  if (f32 || sinks > 0 || (hd != 64 && hd != 128)) return kSplit;
  if (q_len >= kTcMinRows) return kTcPrefill;
  if (q_len * G <= 16) return kTcDecode;
  return kSplit;
}
__device__ __forceinline__ int route_dev(const AttentionArgs& a, int s) {
  return route_of(a.q_start[s + 1] - a.q_start[s], a.sinks ? a.sinks[s] : 0, a.H / a.KV, a.hd,
                  a.kv_t == DType::F32);
}

// The decode kernel's key splits for one sequence: tiles of 64 keys from kbeg (aligned), at most 16 splits,
// decided by the sequence's own keys alone (so its result does not depend on the batch).
struct DecodeSplit {
  int kbeg, split_keys, nsplit;
};
// Up to 8 tiles (512 keys) is one split: no partial results to merge. Longer: pieces of at least 2 tiles, at
// most 16 of them (measured on the H100 at batch 1 x 1k and 64 x ~200 keys: see the README).
__host__ __device__ __forceinline__ int decode_tiles_per_split(int tiles) {
  return tiles <= kDecodeOneSplitTiles ? max(1, tiles)
                                       : max(2, (tiles + kDecodeMaxSplits - 1) / kDecodeMaxSplits);
}
__host__ __device__ __forceinline__ DecodeSplit decode_split(int ctx, int q_len, int sliding_window) {
  DecodeSplit d;
  const int first_self = ctx - q_len;
  const int lo = sliding_window > 0 ? max(0, first_self - sliding_window + 1) : 0;
  d.kbeg = (lo / kTcKeys) * kTcKeys;
  const int tiles = (ctx - d.kbeg + kTcKeys - 1) / kTcKeys;
  const int per = decode_tiles_per_split(tiles);
  d.split_keys = per * kTcKeys;
  d.nsplit = max(1, (tiles + per - 1) / per);
  return d;
}

// The most splits any sequence of at most max_ctx keys takes (the split count is not monotonic in the length:
// 32 tiles make 16 splits of 2, 33 make 11 of 3), so the grid holds blocks for them and no more: at batch 64
// x ~200 keys, one split each, a grid of 16 per sequence and KV head was 15/16 empty blocks.
int decode_splits_bound(int max_ctx) {
  const int max_tiles = (max(max_ctx, 1) + kTcKeys - 1) / kTcKeys;  // kbeg >= 0: no sequence has more tiles
  int most = 1;
  for (int t = 1; t <= max_tiles && most < kDecodeMaxSplits; ++t) {
    const int per = decode_tiles_per_split(t);
    most = max(most, (t + per - 1) / per);
  }
  return most;
}

// Warps per decode block. With 4 (64-key tiles, 70 KB of shared memory and 152 registers: 3 blocks per SM)
// short blocks spend much of their time starting and finishing, and a grid of a few waves loses its last,
// partial one: at batch 64 x 192 keys (512 blocks of one split, 1.3 waves) the kernel read its 50 MB at 1.25
// TB/s. With 2 (32-key tiles, 35 KB: 6 blocks per SM) twice as many run at once. Measured at 64 sequences
// (bench/results/cuda-attention-decode-grid-h100-2026-11-23.txt), 2 against 4 warps: 192 keys 33 vs 40 us,
// 608 keys 95 vs 100, 1024 136 vs 144, 2048 234 vs 258, but 4096 (splits of 4 tiles) 430 vs 424; and batch 1
// x 1k (64 blocks, less than a wave) 2.7% slower end to end. So 2 warps where the grid is more than a wave
// of 4-warp blocks and no split is longer than 2 tiles (or one split of at most 8): contexts up to 2048 keys.
// The warps' key partition differs, so the sums' rounding does: under RILL_BATCH_INVARIANT the count stays 4.
// RILL_CUDA_DECODE_WARPS=2 or 4 fixes it (to compare).
int decode_warps(int64_t blocks, int max_ctx, bool batch_invariant) {
  static const int forced = [] {
    const char* v = std::getenv("RILL_CUDA_DECODE_WARPS");
    if (!v || !*v) return 0;
    const std::string w(v);
    if (w != "2" && w != "4") throw Error("RILL_CUDA_DECODE_WARPS must be 2 or 4, not '" + w + "'");
    return std::stoi(w);
  }();
  if (forced) return forced;
  const int max_tiles = (max(max_ctx, 1) + kTcKeys - 1) / kTcKeys;
  const bool short_splits = max_tiles <= kDecodeOneSplitTiles || decode_tiles_per_split(max_tiles) <= 2;
  return !batch_invariant && short_splits && blocks > 3 * int64_t(sm_count()) ? 2 : 4;
}

struct TokenRange {
  int s, lo, hi, ns, hole;  // keys [lo, hi) minus [ns, hole); [0, ns) use the sink query
};

__device__ __forceinline__ TokenRange token_range(const AttentionArgs& a, int t) {
  TokenRange r;
  r.s = a.token_seq[t];
  const int q_len = a.q_start[r.s + 1] - a.q_start[r.s];
  const int self = a.ctx_len[r.s] - q_len + (t - a.q_start[r.s]);
  r.lo = a.sliding_window > 0 ? max(0, self - a.sliding_window + 1) : 0;
  r.hi = self + 1;
  r.ns = a.sinks ? a.sinks[r.s] : 0;
  r.hole = a.sinks ? max(r.ns, a.hole_end[t]) : 0;
  return r;
}

__host__ __device__ __forceinline__ int splits_for(int keys) { return max(1, (keys + kSplitKeys - 1) / kSplitKeys); }

__device__ __forceinline__ void load8(const bf16* p, float* f) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __bfloat1622float2(h[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}
__device__ __forceinline__ void load8(const float* p, float* f) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}

template <typename TO, typename TK, int LPK>
__global__ void __launch_bounds__(kWarps * 32) attention_split_kernel(Params p) {
  constexpr int KPW = 32 / LPK;  // keys per warp per step
  const AttentionArgs& a = p.a;
  const int t = blockIdx.x;
  const int G = a.H / a.KV;
  const int kvh = blockIdx.y / p.gchunks;
  const int g0 = (blockIdx.y % p.gchunks) * kMaxG;
  const int ng = min(kMaxG, G - g0);
  if (route_dev(a, a.token_seq[t]) != kSplit) return;
  const TokenRange r = token_range(a, t);
  const int nsplit = splits_for(r.hi - r.lo);
  const int z = blockIdx.z;
  if (z >= nsplit) return;
  const int jb = r.lo + z * kSplitKeys, je = min(r.hi, jb + kSplitKeys);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, kg = lane / LPK, sub = lane % LPK;
  const int d0 = sub * 8;
  const bool dims = d0 < a.hd;

  const TK* q = static_cast<const TK*>(a.q);
  const TK* q_sink = static_cast<const TK*>(a.q_sink);
  const int64_t qbase = int64_t(t) * a.H * a.hd + int64_t(kvh * G + g0) * a.hd + d0;
  float qr[kMaxG][8];
#pragma unroll
  for (int g = 0; g < kMaxG; ++g) {
    if (g < ng && dims) {
      load8(q + qbase + int64_t(g) * a.hd, qr[g]);
#pragma unroll
      for (int i = 0; i < 8; ++i) qr[g][i] *= a.scale;
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) qr[g][i] = 0.f;
    }
  }
  float m[kMaxG], l[kMaxG], acc[kMaxG][8];
#pragma unroll
  for (int g = 0; g < kMaxG; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[g][i] = 0.f;
  }

  const TK* kc = static_cast<const TK*>(a.k_cache);
  const TK* vc = static_cast<const TK*>(a.v_cache);
  const int32_t* table = a.tables + int64_t(r.s) * a.max_blocks;
  const int64_t slot_stride = int64_t(a.KV) * a.hd, head_off = int64_t(kvh) * a.hd + d0;
  for (int j0 = jb + warp * KPW; j0 < je; j0 += kWarps * KPW) {
    const int j = j0 + kg;
    const bool valid = j < je && !(j >= r.ns && j < r.hole);
    float kf[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    int64_t off = 0;
    if (valid && dims) {
      off = (int64_t(table[j / a.bs]) * a.bs + j % a.bs) * slot_stride + head_off;
      load8(kc + off, kf);
    }
    const bool sink = valid && j < r.ns;
    float sc[kMaxG];
#pragma unroll
    for (int g = 0; g < kMaxG; ++g) {
      float d = 0.f;
      if (sink) {
        if (g < ng && dims) {
          float qs[8];
          load8(q_sink + qbase + int64_t(g) * a.hd, qs);
#pragma unroll
          for (int i = 0; i < 8; ++i) d += qs[i] * a.scale * kf[i];
        }
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) d += qr[g][i] * kf[i];
      }
#pragma unroll
      for (int o = LPK / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
      sc[g] = d;
    }
    if (valid) {
      float vf[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      if (dims) load8(vc + off, vf);
#pragma unroll
      for (int g = 0; g < kMaxG; ++g) {
        const float mn = fmaxf(m[g], sc[g]);
        const float corr = expf(m[g] - mn), pr = expf(sc[g] - mn);
        l[g] = l[g] * corr + pr;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[g][i] = acc[g][i] * corr + pr * vf[i];
        m[g] = mn;
      }
    }
  }

  // Merge the lane groups and warps.
  __shared__ float sm_acc[kWarps * 32][kMaxG][8];
  __shared__ float sm_m[kWarps * KPW][kMaxG], sm_l[kWarps * KPW][kMaxG];
  const int part = warp * KPW + kg;
#pragma unroll
  for (int g = 0; g < kMaxG; ++g)
#pragma unroll
    for (int i = 0; i < 8; ++i) sm_acc[threadIdx.x][g][i] = acc[g][i];
  if (sub == 0)
#pragma unroll
    for (int g = 0; g < kMaxG; ++g) {
      sm_m[part][g] = m[g];
      sm_l[part][g] = l[g];
    }
  __syncthreads();
  for (int idx = threadIdx.x; idx < ng * a.hd; idx += blockDim.x) {
    const int g = idx / a.hd, dim = idx % a.hd;
    float M = -INFINITY;
    for (int pt = 0; pt < kWarps * KPW; ++pt) M = fmaxf(M, sm_m[pt][g]);
    float L = 0.f, A = 0.f;
    if (M > -INFINITY)
      for (int pt = 0; pt < kWarps * KPW; ++pt) {
        const float w = expf(sm_m[pt][g] - M);
        L += sm_l[pt][g] * w;
        A += sm_acc[(pt / KPW) * 32 + (pt % KPW) * LPK + dim / 8][g][dim % 8] * w;
      }
    const int head = kvh * G + g0 + g;
    if (nsplit == 1) {
      static_cast<TO*>(a.out)[int64_t(t) * a.H * a.hd + int64_t(head) * a.hd + dim] = from_f<TO>(L > 0.f ? A / L : 0.f);
    } else {
      const int64_t row = (int64_t(t) * a.H + head) * p.max_splits + z;
      p.part_o[row * a.hd + dim] = L > 0.f ? A / L : 0.f;
      if (dim == 0) p.part_lse[row] = L > 0.f ? M + logf(L) : -INFINITY;
    }
  }
}

template <typename TO>
__global__ void attention_combine_kernel(Params p) {
  const AttentionArgs& a = p.a;
  const int t = blockIdx.x, head = blockIdx.y;
  if (route_dev(a, a.token_seq[t]) != kSplit) return;
  const TokenRange r = token_range(a, t);
  const int nsplit = splits_for(r.hi - r.lo);
  if (nsplit == 1) return;  // written directly by the split kernel
  const int64_t row = (int64_t(t) * a.H + head) * p.max_splits;
  const float* lse = p.part_lse + row;
  float M = -INFINITY;
  for (int z = 0; z < nsplit; ++z) M = fmaxf(M, lse[z]);
  for (int dim = threadIdx.x; dim < a.hd; dim += blockDim.x) {
    float L = 0.f, A = 0.f;
    if (M > -INFINITY)
      for (int z = 0; z < nsplit; ++z) {
        const float w = expf(lse[z] - M);
        L += w;
        A += w * p.part_o[(row + z) * a.hd + dim];
      }
    static_cast<TO*>(a.out)[int64_t(t) * a.H * a.hd + int64_t(head) * a.hd + dim] = from_f<TO>(L > 0.f ? A / L : 0.f);
  }
}

// ---- Prefill on tensor cores (FlashAttention-2 style) --------------------------------------------------
// One block: kPrefillRows (or kPrefillRowsShort) query rows of one sequence and one query head, 16 x
// kPrefillMTiles rows per warp, its Q rows copied once into shared memory; K/V tiles of kPrefillKeys keys
// stream from the paged cache into shared memory (double-buffered cp.async); S = Q K^T and O += P V run on
// mma.sync m16n8k16 (bf16 in, f32 accumulate; Q, K and V fragments by ldmatrix) with the online softmax in
// registers. Rows are independent: a row's result does not depend on which rows share its tile, and key tiles
// are aligned to multiples of kPrefillKeys.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
// Four 8x8 b16 matrices from shared memory; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* p) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, const void* p) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// A warp's Q fragments (A operand, 16 rows x head_dim): row A (g) from qA, row B (g + 8) from qB, zeros for
// rows that do not exist.
template <int HD>
__device__ __forceinline__ void load_q_fragments(uint32_t (&qa)[HD / 16][4], const bf16* qA, const bf16* qB, bool hasA,
                                                 bool hasB, int tq) {
#pragma unroll
  for (int ks = 0; ks < HD / 16; ++ks) {
    const int c = ks * 16 + 2 * tq;
    qa[ks][0] = hasA ? *reinterpret_cast<const uint32_t*>(qA + c) : 0u;
    qa[ks][1] = hasB ? *reinterpret_cast<const uint32_t*>(qB + c) : 0u;
    qa[ks][2] = hasA ? *reinterpret_cast<const uint32_t*>(qA + c + 8) : 0u;
    qa[ks][3] = hasB ? *reinterpret_cast<const uint32_t*>(qB + c + 8) : 0u;
  }
}

// One step of the online softmax for a warp's 16 rows (a thread holds rows A: elements 0,1 and B: 2,3 of
// each 8-key accumulator) given the tile's masked scores and the thread's row maxima over them, in units that
// sl2 (> 0) turns into log2 units (1 when they already are; the prefill kernel keeps raw scores and folds the
// scale into one FFMA per probability): the running maxima and sums move on, O is rescaled, and `sc` is left
// holding the tile's probabilities.
template <int NT, int ND>
__device__ __forceinline__ void online_softmax_step(float (&sc)[NT][4], float (&o)[ND][4], float mxA,
                                                    float mxB, float& mA, float& mB, float& lA, float& lB,
                                                    float sl2 = 1.f) {
#pragma unroll
  for (int off = 1; off <= 2; off <<= 1) {
    mxA = fmaxf(mxA, __shfl_xor_sync(0xffffffffu, mxA, off));
    mxB = fmaxf(mxB, __shfl_xor_sync(0xffffffffu, mxB, off));
  }
  const float nA = fmaxf(mA, mxA), nB = fmaxf(mB, mxB);
  // A row with nothing visible yet keeps exponent base 0, so exp2(-inf) = 0 and never NaN.
  const float baseA = nA == -INFINITY ? 0.f : nA, baseB = nB == -INFINITY ? 0.f : nB;
  const float cA = exp2f((mA - baseA) * sl2), cB = exp2f((mB - baseB) * sl2);
  const float nbA = -baseA * sl2, nbB = -baseB * sl2;
  mA = nA;
  mB = nB;
  float sumA = 0.f, sumB = 0.f;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    sc[nt][0] = exp2f(fmaf(sc[nt][0], sl2, nbA));
    sc[nt][1] = exp2f(fmaf(sc[nt][1], sl2, nbA));
    sc[nt][2] = exp2f(fmaf(sc[nt][2], sl2, nbB));
    sc[nt][3] = exp2f(fmaf(sc[nt][3], sl2, nbB));
    sumA += sc[nt][0] + sc[nt][1];
    sumB += sc[nt][2] + sc[nt][3];
  }
  lA = lA * cA + sumA;
  lB = lB * cB + sumB;
#pragma unroll
  for (int i = 0; i < ND; ++i) {
    o[i][0] *= cA;
    o[i][1] *= cA;
    o[i][2] *= cB;
    o[i][3] *= cB;
  }
}

// Starts copying one tile of KEYS keys (keys [kb, kb + KEYS) of the sequence's block table; those at or past
// `end` are zero-filled) of K and V into shared memory, as one cp.async group.
template <int HD, int KEYS = kTcKeys>
__device__ __forceinline__ void load_tile_async(bf16 (*Ks)[HD + 8], bf16 (*Vs)[HD + 8], const AttentionArgs& a,
                                                const int32_t* table, int kvh, int kb, int end) {
  const int64_t slot_stride = int64_t(a.KV) * HD;
  for (int i = threadIdx.x; i < KEYS * HD / 8; i += blockDim.x) {
    const int key = i / (HD / 8), c = (i % (HD / 8)) * 8;
    const int j = kb + key;
    const bool ok = j < end;
    const int64_t off = ok ? (int64_t(table[j / a.bs]) * a.bs + j % a.bs) * slot_stride + int64_t(kvh) * HD + c : 0;
    cp_async16(&Ks[key][c], as_bf16(a.k_cache) + off, ok);
    cp_async16(&Vs[key][c], as_bf16(a.v_cache) + off, ok);
  }
  asm volatile("cp.async.commit_group;\n" ::);
}
// Shared memory of the tensor-core kernels: two K/V tile buffers (double buffering).
template <int HD, int KEYS = kTcKeys>
__host__ __device__ constexpr int tc_smem_bytes() {
  return 2 * 2 * KEYS * (HD + 8) * int(sizeof(bf16));
}
template <int HD, int KEYS = kTcKeys>
struct TileBuffers {
  bf16 (*k[2])[HD + 8];
  bf16 (*v[2])[HD + 8];
  __device__ explicit TileBuffers(unsigned char* base) {
    for (int b = 0; b < 2; ++b) {
      k[b] = reinterpret_cast<bf16 (*)[HD + 8]>(base + (2 * b) * KEYS * (HD + 8) * sizeof(bf16));
      v[b] = reinterpret_cast<bf16 (*)[HD + 8]>(base + (2 * b + 1) * KEYS * (HD + 8) * sizeof(bf16));
    }
  }
};

// O (MT m-tiles of 16 rows x HD) += P (the same rows x 16 keys, as A fragments) V[key0, key0 + 16): V's B
// fragments by ldmatrix.trans, two 8-wide column tiles at a time, each fed to every m-tile.
template <int HD, int MT>
__device__ __forceinline__ void pv_step(float (&o)[MT][HD / 8][4], const uint32_t (&pa)[MT][4],
                                        bf16 (*Vs)[HD + 8], int key0, int lane) {
#pragma unroll
  for (int n2 = 0; n2 < HD / 16; ++n2) {
    uint32_t vb[4];
    ldmatrix_x4_trans(vb, &Vs[key0 + ((lane / 8) & 1) * 8 + lane % 8][(n2 * 2 + lane / 16) * 8]);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      mma_bf16(o[mt][2 * n2], pa[mt], vb[0], vb[1]);
      mma_bf16(o[mt][2 * n2 + 1], pa[mt], vb[2], vb[3]);
    }
  }
}
template <int HD>
__device__ __forceinline__ void pv_step(float (&o)[HD / 8][4], const uint32_t (&pa)[4], bf16 (*Vs)[HD + 8],
                                        int key0, int lane) {
  pv_step<HD, 1>(reinterpret_cast<float(&)[1][HD / 8][4]>(o), reinterpret_cast<const uint32_t(&)[1][4]>(pa),
                 Vs, key0, lane);
}

// Double buffering: starts tile it + 1 (at next_kb) into the other buffer, if there is one, while waiting for
// tile `it`; then the block synchronizes, and tile `it` is ready in buffer it & 1.
template <int HD, int KEYS = kTcKeys>
__device__ __forceinline__ void advance_tiles(const TileBuffers<HD, KEYS>& buf, int it, int ntiles, const AttentionArgs& a,
                                              const int32_t* table, int kvh, int next_kb, int end) {
  if (it + 1 < ntiles) {
    load_tile_async<HD, KEYS>(buf.k[(it + 1) & 1], buf.v[(it + 1) & 1], a, table, kvh, next_kb, end);
    asm volatile("cp.async.wait_group 1;\n" ::);
  } else {
    asm volatile("cp.async.wait_group 0;\n" ::);
  }
  __syncthreads();
}

// Q is staged in shared memory (one coalesced copy per block) rather than held in registers, and S = Q K^T
// runs with the head dimension outermost: each 16-dim step loads the warp's Q fragment once by ldmatrix and
// feeds it to every key column tile, whose accumulators are then independent (no chain of dependent MMAs).
// That frees the 32 Q registers, so that with 64-key tiles MINB = 2 blocks of 8 warps fit one SM. A warp
// skips the MMAs of a tile whose keys all lie past its last row, and masks only tiles that cross its own
// rows' diagonal, window edge or end.
template <int HD, int KEYS>
constexpr int prefill_smem_bytes(int rows) {
  return tc_smem_bytes<HD, KEYS>() + rows * (HD + 8) * int(sizeof(bf16));
}

template <typename TO, int HD, int WARPS, int KEYS, int MINB, int MT>
__global__ void __launch_bounds__(WARPS * 32, MINB) attention_prefill_kernel(Params p) {
  constexpr int kTcRows = WARPS * 16 * MT, kWarpRows = 16 * MT;
  extern __shared__ __align__(16) unsigned char tc_smem[];
  const TileBuffers<HD, KEYS> buf(tc_smem);
  bf16(*Qs)[HD + 8] = reinterpret_cast<bf16(*)[HD + 8]>(tc_smem + tc_smem_bytes<HD, KEYS>());
  const AttentionArgs& a = p.a;
  const int r = int(blockIdx.x) / a.H, h = int(blockIdx.x) % a.H;
  // Longest first: heads vary fastest, then sequences, then query tiles from the last (the most keys under
  // the causal mask) to the first, so the long blocks start in the first waves and the short ones fill in the
  // last (in launch order the other way round, the last wave was the longest blocks alone).
  const int s = r % a.num_seqs, tile = p.tc_tiles - 1 - r / a.num_seqs;
  if (route_dev(a, s) != kTcPrefill) return;
  const int q0 = a.q_start[s], q_len = a.q_start[s + 1] - q0;
  const int row0 = tile * kTcRows;
  if (row0 >= q_len) return;
  const int G = a.H / a.KV, kvh = h / G;
  const int first_self = a.ctx_len[s] - q_len;  // cache index of the sequence's first new token
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
  // The warp's rows are [wrow0, wrow0 + 16 MT); in m-tile mt this thread holds rows wrow0 + 16 mt + g (A) and
  // that + 8 (B).
  const int wrow0 = row0 + warp * kWarpRows;
  const bf16* Q = as_bf16(a.q);
  // The block's Q rows into shared memory (zeros past the sequence), in the first cp.async group.
  for (int i = threadIdx.x; i < kTcRows * HD / 8; i += blockDim.x) {
    const int row = i / (HD / 8), c = (i % (HD / 8)) * 8;
    const bool ok = row0 + row < q_len;
    cp_async16(&Qs[row][c], Q + (ok ? (int64_t(q0) + row0 + row) * a.H * HD + int64_t(h) * HD + c : 0), ok);
  }
  float o[MT][HD / 8][4];
  float mA[MT], mB[MT], lA[MT], lB[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int i = 0; i < HD / 8; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f;
    mA[mt] = mB[mt] = -INFINITY;
    lA[mt] = lB[mt] = 0.f;
  }
  const float sl2 = a.scale * 1.4426950408889634f;  // raw score to log2 units (the scale is positive)

  const int last_row = min(row0 + kTcRows, q_len) - 1;
  const int hi = first_self + last_row + 1;  // keys [.., hi) for the block
  const int lo = a.sliding_window > 0 ? max(0, first_self + row0 - a.sliding_window + 1) : 0;
  const int32_t* table = a.tables + int64_t(s) * a.max_blocks;
  const int kfirst = (lo / KEYS) * KEYS, ntiles = (hi - kfirst + KEYS - 1) / KEYS;
  const int wself_last = first_self + min(wrow0 + kWarpRows, q_len) - 1;
  const bool warp_live = wrow0 < q_len;
  load_tile_async<HD, KEYS>(buf.k[0], buf.v[0], a, table, kvh, kfirst, hi);  // commits Q's copies with it
  for (int it = 0; it < ntiles; ++it) {
    const int kb = kfirst + it * KEYS;
    bf16 (*Ks)[HD + 8] = buf.k[it & 1];
    bf16 (*Vs)[HD + 8] = buf.v[it & 1];
    advance_tiles<HD, KEYS>(buf, it, ntiles, a, table, kvh, kb + KEYS, hi);
    if (warp_live && kb <= wself_last) {
      float sc[MT][KEYS / 8][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < KEYS / 8; ++nt)
          sc[mt][nt][0] = sc[mt][nt][1] = sc[mt][nt][2] = sc[mt][nt][3] = 0.f;
#pragma unroll
      for (int ks = 0; ks < HD / 16; ++ks) {
        uint32_t qf[MT][4];  // A fragments: each m-tile's 16 rows, dims [16 ks, 16 ks + 16)
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
          ldmatrix_x4(qf[mt], &Qs[warp * kWarpRows + mt * 16 + (lane % 16)][ks * 16 + (lane / 16) * 8]);
#pragma unroll
        for (int np = 0; np < KEYS / 16; ++np) {
          uint32_t kf[4];  // keys [16 np, 16 np + 16) x dims [16 ks, 16 ks + 16): two B fragments
          ldmatrix_x4(kf, &Ks[np * 16 + (lane / 16) * 8 + lane % 8][ks * 16 + ((lane / 8) & 1) * 8]);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            mma_bf16(sc[mt][2 * np], qf[mt], kf[0], kf[1]);
            mma_bf16(sc[mt][2 * np + 1], qf[mt], kf[2], kf[3]);
          }
        }
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int mrow0 = wrow0 + mt * 16, rA = mrow0 + g, rB = rA + 8;
        const int selfA = first_self + rA, selfB = selfA + 8;
        const int mself0 = first_self + mrow0;
        const bool interior = kb + KEYS - 1 <= mself0 && mrow0 + 16 <= q_len &&
                              (a.sliding_window <= 0 || kb >= mself0 + 16 - a.sliding_window);
        float mxA = -INFINITY, mxB = -INFINITY;
        // Masks only where the tile crosses the m-tile's diagonal, window edge or end; scores stay raw (the
        // scale folds into the exponent).
        if (interior) {
#pragma unroll
          for (int nt = 0; nt < KEYS / 8; ++nt) {
            mxA = fmaxf(mxA, fmaxf(sc[mt][nt][0], sc[mt][nt][1]));
            mxB = fmaxf(mxB, fmaxf(sc[mt][nt][2], sc[mt][nt][3]));
          }
        } else {
          const int loA = a.sliding_window > 0 ? selfA - a.sliding_window + 1 : 0;
          const int loB = a.sliding_window > 0 ? loA + 8 : 0;
#pragma unroll
          for (int nt = 0; nt < KEYS / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int j = kb + nt * 8 + 2 * tq + (e & 1);
              const bool rowB = e >= 2;
              const int self = rowB ? selfB : selfA, low = rowB ? loB : loA;
              const bool ok = (rowB ? rB : rA) < q_len && j <= self && j >= low;
              if (!ok) sc[mt][nt][e] = -INFINITY;
              if (rowB)
                mxB = fmaxf(mxB, sc[mt][nt][e]);
              else
                mxA = fmaxf(mxA, sc[mt][nt][e]);
            }
        }
        online_softmax_step(sc[mt], o[mt], mxA, mxB, mA[mt], mB[mt], lA[mt], lB[mt], sl2);
      }
#pragma unroll
      for (int kt = 0; kt < KEYS / 16; ++kt) {
        uint32_t pa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          pa[mt][0] = pack_bf16(sc[mt][2 * kt][0], sc[mt][2 * kt][1]);
          pa[mt][1] = pack_bf16(sc[mt][2 * kt][2], sc[mt][2 * kt][3]);
          pa[mt][2] = pack_bf16(sc[mt][2 * kt + 1][0], sc[mt][2 * kt + 1][1]);
          pa[mt][3] = pack_bf16(sc[mt][2 * kt + 1][2], sc[mt][2 * kt + 1][3]);
        }
        pv_step<HD, MT>(o, pa, Vs, kt * 16, lane);
      }
    }
    __syncthreads();
  }
  TO* out = static_cast<TO*>(a.out);
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    float sA = lA[mt], sB = lB[mt];
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
      sA += __shfl_xor_sync(0xffffffffu, sA, off);
      sB += __shfl_xor_sync(0xffffffffu, sB, off);
    }
    const float iA = sA > 0.f ? 1.f / sA : 0.f, iB = sB > 0.f ? 1.f / sB : 0.f;
    const int rA = wrow0 + mt * 16 + g, rB = rA + 8;
#pragma unroll
    for (int nd = 0; nd < HD / 8; ++nd) {
      const int d = nd * 8 + 2 * tq;
      if (rA < q_len) {
        TO* oA = out + (int64_t(q0) + rA) * a.H * HD + int64_t(h) * HD + d;
        oA[0] = from_f<TO>(o[mt][nd][0] * iA);
        oA[1] = from_f<TO>(o[mt][nd][1] * iA);
      }
      if (rB < q_len) {
        TO* oB = out + (int64_t(q0) + rB) * a.H * HD + int64_t(h) * HD + d;
        oB[0] = from_f<TO>(o[mt][nd][2] * iB);
        oB[1] = from_f<TO>(o[mt][nd][3] * iB);
      }
    }
  }
}

// ---- Decode on tensor cores -------------------------------------------------------------------------------
// One block: one sequence's few new tokens x the query heads of one KV head (packed into the 16 rows of an
// MMA tile, row = token * G + head), over one split of its keys. The K/V tiles of 16 * W keys are shared by
// the W warps (4, or 2: decode_warps), each scoring 16 of them; the warps' softmax states merge through
// shared memory at the end, and a second kernel merges the splits (none when no sequence has more than
// one). K and V are read once for all the heads of the group.
template <typename TO, int HD, int W = 4>
__global__ void __launch_bounds__(W * 32) attention_decode_tc_kernel(Params p) {
  constexpr int KEYS = 16 * W;  // each warp scores 16 keys of a tile
  pdl_wait();
  extern __shared__ __align__(16) unsigned char tc_smem[];
  const TileBuffers<HD, KEYS> buf(tc_smem);
  const AttentionArgs& a = p.a;
  // KV heads vary fastest, then splits, then sequences: the blocks that run together read the same cache
  // pages (each page slot holds every KV head's key), and a sequence's splits stream side by side.
  const int kvh = int(blockIdx.x) % a.KV, z = (int(blockIdx.x) / a.KV) % p.dec_splits,
            s = int(blockIdx.x) / (a.KV * p.dec_splits);
  if (route_dev(a, s) != kTcDecode) return;
  const int q0 = a.q_start[s], q_len = a.q_start[s + 1] - q0, G = a.H / a.KV, rows = q_len * G;
  const int ctx = a.ctx_len[s], first_self = ctx - q_len;
  const DecodeSplit ds = decode_split(ctx, q_len, a.sliding_window);
  if (z >= ds.nsplit) return;
  const int zb = ds.kbeg + z * ds.split_keys, ze = min(ctx, zb + ds.split_keys);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
  const int rA = g, rB = g + 8;
  const int tA = rA / G, tB = rB / G;
  const int selfA = first_self + tA, selfB = first_self + tB;
  const int loA = a.sliding_window > 0 ? selfA - a.sliding_window + 1 : 0;
  const int loB = a.sliding_window > 0 ? selfB - a.sliding_window + 1 : 0;
  const bf16* Q = as_bf16(a.q);
  uint32_t qa[HD / 16][4];
  load_q_fragments<HD>(qa, Q + (int64_t(q0) + tA) * a.H * HD + int64_t(kvh * G + rA % G) * HD,
                       Q + (int64_t(q0) + tB) * a.H * HD + int64_t(kvh * G + rB % G) * HD, rA < rows, rB < rows, tq);
  float o[HD / 8][4];
#pragma unroll
  for (int i = 0; i < HD / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float mA = -INFINITY, mB = -INFINITY, lA = 0.f, lB = 0.f;
  const float sl2 = a.scale * 1.4426950408889634f;
  const int32_t* table = a.tables + int64_t(s) * a.max_blocks;
  const int ntiles = (ze - zb + KEYS - 1) / KEYS;
  load_tile_async<HD, KEYS>(buf.k[0], buf.v[0], a, table, kvh, zb, ze);
  for (int it = 0; it < ntiles; ++it) {
    const int kb = zb + it * KEYS;
    bf16 (*Ks)[HD + 8] = buf.k[it & 1];
    bf16 (*Vs)[HD + 8] = buf.v[it & 1];
    advance_tiles<HD, KEYS>(buf, it, ntiles, a, table, kvh, kb + KEYS, ze);
    // This warp's 16 keys: two n-tiles of 8.
    const int k0 = warp * 16;
    float sc[2][4];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
#pragma unroll
      for (int k2 = 0; k2 < HD / 32; ++k2) {
        uint32_t kb4[4];
        ldmatrix_x4(kb4, &Ks[k0 + nt * 8 + lane % 8][k2 * 32 + (lane / 8) * 8]);
        mma_bf16(sc[nt], qa[2 * k2], kb4[0], kb4[1]);
        mma_bf16(sc[nt], qa[2 * k2 + 1], kb4[2], kb4[3]);
      }
    }
    float mxA = -INFINITY, mxB = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int j = kb + k0 + nt * 8 + 2 * tq + (e & 1);
        const bool rowB = e >= 2;
        const bool ok = rowB ? (rB < rows && j < ze && j <= selfB && j >= loB) : (rA < rows && j < ze && j <= selfA && j >= loA);
        const float v = ok ? sc[nt][e] * sl2 : -INFINITY;
        sc[nt][e] = v;
        if (rowB) mxB = fmaxf(mxB, v);
        else mxA = fmaxf(mxA, v);
      }
    online_softmax_step(sc, o, mxA, mxB, mA, mB, lA, lB);
    const uint32_t pa[4] = {pack_bf16(sc[0][0], sc[0][1]), pack_bf16(sc[0][2], sc[0][3]), pack_bf16(sc[1][0], sc[1][1]),
                            pack_bf16(sc[1][2], sc[1][3])};
    pv_step<HD>(o, pa, Vs, k0, lane);
    __syncthreads();  // this buffer is refilled two tiles on
  }
#pragma unroll
  for (int off = 1; off <= 2; off <<= 1) {
    lA += __shfl_xor_sync(0xffffffffu, lA, off);
    lB += __shfl_xor_sync(0xffffffffu, lB, off);
  }
  // Merge the 4 warps through shared memory (the K/V tiles' space).
  __syncthreads();
  float* so = reinterpret_cast<float*>(tc_smem);  // [W][16][HD]
  __shared__ float sm[W][16], sl[W][16];
#pragma unroll
  for (int nd = 0; nd < HD / 8; ++nd) {
    const int d = nd * 8 + 2 * tq;
    so[(warp * 16 + rA) * HD + d] = o[nd][0];
    so[(warp * 16 + rA) * HD + d + 1] = o[nd][1];
    so[(warp * 16 + rB) * HD + d] = o[nd][2];
    so[(warp * 16 + rB) * HD + d + 1] = o[nd][3];
  }
  if (tq == 0) {
    sm[warp][rA] = mA, sl[warp][rA] = lA;
    sm[warp][rB] = mB, sl[warp][rB] = lB;
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < rows * HD; idx += blockDim.x) {
    const int r = idx / HD, d = idx % HD;
    float M = -INFINITY;
    for (int w = 0; w < W; ++w) M = fmaxf(M, sm[w][r]);
    float L = 0.f, A = 0.f;
    if (M > -INFINITY)
      for (int w = 0; w < W; ++w) {
        const float f = exp2f(sm[w][r] - M);
        L += sl[w][r] * f;
        A += so[(w * 16 + r) * HD + d] * f;
      }
    const int t = r / G, head = kvh * G + r % G;
    if (ds.nsplit == 1) {
      static_cast<TO*>(a.out)[(int64_t(q0) + t) * a.H * HD + int64_t(head) * HD + d] = from_f<TO>(L > 0.f ? A / L : 0.f);
    } else {
      const int64_t row = ((int64_t(s) * p.dec_maxq + t) * a.H + head) * kDecodeMaxSplits + z;
      p.dec_o[row * HD + d] = L > 0.f ? A / L : 0.f;
      if (d == 0) p.dec_lse[row] = L > 0.f ? M + log2f(L) : -INFINITY;
    }
  }
}

template <typename TO>
__global__ void attention_decode_combine_kernel(Params p) {
  pdl_wait();
  const AttentionArgs& a = p.a;
  const int s = blockIdx.x / p.dec_maxq, t = blockIdx.x % p.dec_maxq, head = blockIdx.y;
  if (route_dev(a, s) != kTcDecode) return;
  const int q0 = a.q_start[s], q_len = a.q_start[s + 1] - q0;
  if (t >= q_len) return;
  const DecodeSplit ds = decode_split(a.ctx_len[s], q_len, a.sliding_window);
  if (ds.nsplit == 1) return;
  const int64_t row = ((int64_t(s) * p.dec_maxq + t) * a.H + head) * kDecodeMaxSplits;
  // Every split's log-sum-exp and partial output loaded at once (unrolled to the 16-split bound), rather
  // than one dependent load after another.
  float lse[kDecodeMaxSplits];
  float M = -INFINITY;
#pragma unroll
  for (int z = 0; z < kDecodeMaxSplits; ++z) {
    lse[z] = z < ds.nsplit ? p.dec_lse[row + z] : -INFINITY;
    M = fmaxf(M, lse[z]);
  }
  for (int d = threadIdx.x; d < a.hd; d += blockDim.x) {
    float o[kDecodeMaxSplits];
#pragma unroll
    for (int z = 0; z < kDecodeMaxSplits; ++z) o[z] = z < ds.nsplit ? p.dec_o[(row + z) * a.hd + d] : 0.f;
    float L = 0.f, A = 0.f;
    if (M > -INFINITY)
#pragma unroll
      for (int z = 0; z < kDecodeMaxSplits; ++z) {
        const float w = z < ds.nsplit ? exp2f(lse[z] - M) : 0.f;
        L += w;
        A += w * o[z];
      }
    static_cast<TO*>(a.out)[(int64_t(q0) + t) * a.H * a.hd + int64_t(head) * a.hd + d] =
        from_f<TO>(L > 0.f ? A / L : 0.f);
  }
}

int max_keys(const AttentionArgs& a) {
  return a.sliding_window > 0 ? std::min(a.max_ctx_len, a.sliding_window) : a.max_ctx_len;
}

// What the host knows of the batch's routes: which kernels run, and the decode kernel's token bound.
struct Plan {
  bool split = true, prefill = true, decode = true;
  int dec_maxq = 16;
};
Plan plan_of(const AttentionArgs& a) {
  Plan pl;
  if (!a.host_q_len) return pl;  // unknown: launch all (each block checks its route)
  pl.split = pl.prefill = pl.decode = false;
  pl.dec_maxq = 0;
  for (int s = 0; s < a.num_seqs; ++s) {
    const int r =
        route_of(a.host_q_len[s], a.host_sinks ? a.host_sinks[s] : 0, a.H / a.KV, a.hd, a.kv_t == DType::F32);
    pl.split |= r == kSplit;
    pl.prefill |= r == kTcPrefill;
    if (r == kTcDecode) pl.decode = true, pl.dec_maxq = std::max(pl.dec_maxq, a.host_q_len[s]);
  }
  return pl;
}

// Launches a tensor-core kernel with its dynamic shared memory (raising the kernel's limit the first time).
void launch_tc(void (*kernel)(Params), int smem, dim3 grid, cudaStream_t st, const Params& p, int threads = 128,
               bool pdl = false) {
  static std::mutex mu;
  static std::set<void (*)(Params)> raised;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (raised.insert(kernel).second)
      check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), "attention smem");
  }
  if (pdl) launch_pdl(kernel, grid, threads, size_t(smem), st, p);
  else kernel<<<grid, threads, size_t(smem), st>>>(p);
}

template <typename TO, int LPK>
void launch_split(cudaStream_t st, const Params& p) {
  const dim3 grid(unsigned(p.a.num_tokens), unsigned(p.a.KV * p.gchunks), unsigned(p.max_splits));
  // float32 mode writes f32 only (the backend's activations are f32 there).
  if constexpr (std::is_same_v<TO, float>)
    if (p.a.kv_t == DType::F32) {
      attention_split_kernel<float, float, LPK><<<grid, kWarps * 32, 0, st>>>(p);
      return;
    }
  attention_split_kernel<TO, bf16, LPK><<<grid, kWarps * 32, 0, st>>>(p);
}

template <typename TO, int W, int K, int B, int MT>
void launch_prefill(cudaStream_t st, const Params& p) {
  const dim3 grid(unsigned(int64_t(p.a.num_seqs) * p.tc_tiles * p.a.H));
  if (p.a.hd == 64)
    launch_tc(attention_prefill_kernel<TO, 64, W, K, B, MT>, prefill_smem_bytes<64, K>(16 * W * MT), grid, st,
              p, W * 32);
  else
    launch_tc(attention_prefill_kernel<TO, 128, W, K, B, MT>, prefill_smem_bytes<128, K>(16 * W * MT), grid,
              st, p, W * 32);
}

template <typename TO>
void launch(cudaStream_t st, const Params& p, const Plan& pl) {
  if (pl.prefill && p.tc_tiles > 0) {
    if (p.tc_rows == kPrefillRowsShort)
      launch_prefill<TO, kPrefillRowsShort / (16 * kPrefillMTiles), kPrefillKeys, 2, kPrefillMTiles>(st, p);
    else
      launch_prefill<TO, kPrefillRows / (16 * kPrefillMTiles), kPrefillKeys, 1, kPrefillMTiles>(st, p);
    check_launch("attention (prefill)");
  }
  if (pl.decode && p.dec_maxq > 0) {
    const dim3 grid(unsigned(int64_t(p.a.num_seqs) * p.a.KV * p.dec_splits));
    if (p.dec_warps == 2) {
      if (p.a.hd == 64)
        launch_tc(attention_decode_tc_kernel<TO, 64, 2>, tc_smem_bytes<64, 32>(), grid, st, p, 64, true);
      else
        launch_tc(attention_decode_tc_kernel<TO, 128, 2>, tc_smem_bytes<128, 32>(), grid, st, p, 64, true);
    } else {
      if (p.a.hd == 64)
        launch_tc(attention_decode_tc_kernel<TO, 64>, tc_smem_bytes<64>(), grid, st, p, 128, true);
      else
        launch_tc(attention_decode_tc_kernel<TO, 128>, tc_smem_bytes<128>(), grid, st, p, 128, true);
    }
    check_launch("attention (decode)");
    if (p.dec_splits > 1) {  // else every sequence wrote its output directly
      launch_pdl(attention_decode_combine_kernel<TO>,
                 dim3(unsigned(p.a.num_seqs * p.dec_maxq), unsigned(p.a.H)), 128, 0, st, p);
      check_launch("attention (decode combine)");
    }
  }
  if (!pl.split) return;
  const int lanes = (p.a.hd + 7) / 8;
  if (lanes <= 1) launch_split<TO, 1>(st, p);
  else if (lanes <= 2) launch_split<TO, 2>(st, p);
  else if (lanes <= 4) launch_split<TO, 4>(st, p);
  else if (lanes <= 8) launch_split<TO, 8>(st, p);
  else if (lanes <= 16) launch_split<TO, 16>(st, p);
  else launch_split<TO, 32>(st, p);
  check_launch("attention");
  if (p.max_splits > 1) {
    attention_combine_kernel<TO><<<dim3(unsigned(p.a.num_tokens), unsigned(p.a.H)), 128, 0, st>>>(p);
    check_launch("attention (combine)");
  }
}

size_t split_bytes(const AttentionArgs& a, const Plan& pl) {
  const int splits = splits_for(max_keys(a));
  if (!pl.split || splits == 1) return 0;
  return size_t(a.num_tokens) * size_t(a.H) * size_t(splits) * (size_t(a.hd) + 1) * sizeof(float);
}
size_t decode_bytes(const AttentionArgs& a, const Plan& pl) {
  if (!pl.decode || (a.hd != 64 && a.hd != 128) || a.kv_t != DType::BF16) return 0;
  return size_t(a.num_seqs) * size_t(pl.dec_maxq) * size_t(a.H) * kDecodeMaxSplits * (size_t(a.hd) + 1) * sizeof(float);
}

}  // namespace

size_t attention_workspace_bytes(const AttentionArgs& a) {
  const Plan pl = plan_of(a);
  return split_bytes(a, pl) + decode_bytes(a, pl);
}

void attention(cudaStream_t st, const AttentionArgs& a, void* workspace) {
  if (a.num_tokens == 0) return;
  if (a.hd % 8 != 0 || a.hd > 256)
    throw Error("cuda backend: attention: head_dim " + std::to_string(a.hd) + " is not a multiple of 8 up to 256");
  if (a.H % a.KV != 0) throw Error("cuda backend: attention: heads not a multiple of kv heads");
  if (a.kv_t != DType::BF16 && !(a.kv_t == DType::F32 && a.out_t == DType::F32))
    throw Error("cuda backend: attention: the cache must be bf16, or f32 with an f32 output");
  const Plan pl = plan_of(a);
  Params p;
  p.a = a;
  const int G = a.H / a.KV;
  p.gchunks = (G + kMaxG - 1) / kMaxG;
  p.max_splits = splits_for(max_keys(a));
  if (p.max_splits > 65535)
    throw Error("cuda backend: attention: context of " + std::to_string(a.max_ctx_len) + " keys is too long");
  char* ws = static_cast<char*>(workspace);
  if (split_bytes(a, pl) > 0) {
    p.part_o = reinterpret_cast<float*>(ws);
    p.part_lse = p.part_o + size_t(a.num_tokens) * size_t(a.H) * size_t(p.max_splits) * size_t(a.hd);
    ws += split_bytes(a, pl);
  }
  if ((a.hd == 64 || a.hd == 128) && a.kv_t == DType::BF16) {
    if (pl.prefill && a.max_q_len >= kTcMinRows) {
      p.tc_rows = a.max_q_len <= kPrefillRowsShort ? kPrefillRowsShort : kPrefillRows;
      p.tc_tiles = (a.max_q_len + p.tc_rows - 1) / p.tc_rows;
    }
    if (pl.decode && G <= 16) {
      p.dec_maxq = pl.dec_maxq;
      p.dec_splits = decode_splits_bound(a.max_ctx_len);
      p.dec_warps = decode_warps(int64_t(a.num_seqs) * a.KV * p.dec_splits, a.max_ctx_len, a.batch_invariant);
      p.dec_o = reinterpret_cast<float*>(ws);
      p.dec_lse = p.dec_o + size_t(a.num_seqs) * size_t(p.dec_maxq) * size_t(a.H) * kDecodeMaxSplits * size_t(a.hd);
    }
  }
  if (int64_t(p.tc_tiles) * a.num_seqs * a.H > int64_t(INT32_MAX))
    throw Error("cuda backend: attention: batch too large");
  dispatch1(a.out_t, [&](auto x) { launch<decltype(x)>(st, p, pl); });
}

}  // namespace rill::cuda
