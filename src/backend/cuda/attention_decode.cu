// Decode attention on tensor cores.
// One block: one sequence's few new tokens x the query heads of one KV head (packed into the 16 rows of an
// MMA tile, row = token * G + head), over one split of its keys. The K/V tiles of 16 * W keys are shared by
// the W warps (4, or 2: decode_warps), each scoring 16 of them; the warps' softmax states merge through
// shared memory at the end, and a second kernel merges the splits (none when no sequence has more than
// one). K and V are read once for all the heads of the group.
#include "backend/cuda/mma.cuh"

namespace rill::cuda::attn {

namespace {

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

}  // namespace

template <typename TO>
void launch_decode(cudaStream_t st, const Params& p) {
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

template void launch_decode<float>(cudaStream_t, const Params&);
template void launch_decode<bf16>(cudaStream_t, const Params&);

}  // namespace rill::cuda::attn
