// The tensor-core building blocks of the prefill and decode attention kernels: bf16 packing, ldmatrix, Q
// fragments, the online-softmax step, K/V tiles copied from the paged cache into double-buffered shared memory
// (cp.async), and O += P V. Internal to backend/cuda.
#pragma once

#include "backend/cuda/attention.cuh"

namespace rill::cuda::attn {

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

}  // namespace rill::cuda::attn
