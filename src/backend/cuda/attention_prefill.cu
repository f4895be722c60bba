// Prompt attention (16+ new tokens) on tensor cores, FlashAttention-2 style (mma.sync; see attention.cuh for the
// shapes and their history).
// ---- Prefill on tensor cores (FlashAttention-2 style) --------------------------------------------------
// One block: kPrefillRows (or kPrefillRowsShort) query rows of one sequence and one query head, 16 x
// kPrefillMTiles rows per warp, its Q rows copied once into shared memory; K/V tiles of kPrefillKeys keys
// stream from the paged cache into shared memory (double-buffered cp.async); S = Q K^T and O += P V run on
// mma.sync m16n8k16 (bf16 in, f32 accumulate; Q, K and V fragments by ldmatrix) with the online softmax in
// registers. Rows are independent: a row's result does not depend on which rows share its tile, and key tiles
// are aligned to multiples of kPrefillKeys.
#include "backend/cuda/mma.cuh"

namespace rill::cuda::attn {

namespace {

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


template <typename TO, int W, int K, int B, int MT>
void launch_prefill_shape(cudaStream_t st, const Params& p) {
  const dim3 grid(unsigned(int64_t(p.a.num_seqs) * p.tc_tiles * p.a.H));
  if (p.a.hd == 64)
    launch_tc(attention_prefill_kernel<TO, 64, W, K, B, MT>, prefill_smem_bytes<64, K>(16 * W * MT), grid, st,
              p, W * 32);
  else
    launch_tc(attention_prefill_kernel<TO, 128, W, K, B, MT>, prefill_smem_bytes<128, K>(16 * W * MT), grid,
              st, p, W * 32);
}


}  // namespace

template <typename TO>
void launch_prefill(cudaStream_t st, const Params& p) {
  if (p.tc_rows == kPrefillRowsShort)
    launch_prefill_shape<TO, kPrefillRowsShort / (16 * kPrefillMTiles), kPrefillKeys, 2, kPrefillMTiles>(st, p);
  else
    launch_prefill_shape<TO, kPrefillRows / (16 * kPrefillMTiles), kPrefillKeys, 1, kPrefillMTiles>(st, p);
  check_launch("attention (prefill)");
}

template void launch_prefill<float>(cudaStream_t, const Params&);
template void launch_prefill<bf16>(cudaStream_t, const Params&);

}  // namespace rill::cuda::attn
