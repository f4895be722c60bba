// Paged attention over the flat varlen batch, in three kernels; each sequence's tokens take exactly one
// (route_of), decided alike on the host and the device:
//  - prompts (16+ new tokens): a tensor-core kernel, FlashAttention-2 style (below);
//  - decode (new tokens x query heads per KV head fit one 16-row MMA tile): a tensor-core kernel with the
//    group's heads packed into the tile, so K/V are read once per group, and the keys split across blocks
//    (at most 16 splits, decided by the sequence's own length), merged by log-sum-exp;
//  - the rest (sink-window sequences, head sizes other than 64/128, mid-size chunks, and everything
//    in float32 mode, where q and the cache are f32): the split kernel, flash-decoding style on CUDA cores.
//    One block handles one query token, the query heads of one KV head (up to 8 at a time) and one split of
//    at most kSplitKeys keys; a key row of head_dim entries is read by LPK lanes with one 16-byte load each
//    (two in f32), scores are reduced across them with shuffles and folded into an
//    online softmax per lane group, then groups and warps merge through shared memory.
//
// A token's splits depend only on how many keys it attends to, never on the rest of the batch. Masks are the
// CPU backend's: causal, an optional sliding window, and the sink window (entries [0, sinks) are scored with the
// sink query, [sinks, hole_end) are skipped).
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <set>
#include <string>

#include "backend/cuda/attention.cuh"

namespace rill::cuda {

namespace attn {

// Launches a tensor-core kernel with its dynamic shared memory (raising the kernel's limit the first time).
void launch_tc(void (*kernel)(Params), int smem, dim3 grid, cudaStream_t st, const Params& p, int threads, bool pdl) {
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

namespace {

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

template <typename TO>
void launch(cudaStream_t st, const Params& p, const Plan& pl) {
  if (pl.prefill && p.tc_tiles > 0) launch_prefill<TO>(st, p);
  if (pl.decode && p.dec_maxq > 0) launch_decode<TO>(st, p);
  if (pl.split) launch_split<TO>(st, p);
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
}  // namespace attn

using namespace attn;

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
