// What the paged-attention kernels share (attention.cu routes a batch to them; attention_prefill.cu,
// attention_decode.cu and attention_split.cu hold one kernel family each): their parameters, the route each
// sequence takes, the decode kernel's key splits, and each family's launcher. Internal to backend/cuda.
#pragma once

#include <cuda_bf16.h>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace rill::cuda::attn {

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
// decode kernel (new tokens x query heads per KV head fit one 16-row MMA tile), or the split kernel (sink
// window, other head sizes, an f32 cache, the rest). Host and device decide alike.
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

__host__ __device__ __forceinline__ int splits_for(int keys) { return max(1, (keys + kSplitKeys - 1) / kSplitKeys); }

// Launches a tensor-core kernel with its dynamic shared memory (raising the kernel's limit the first time).
void launch_tc(void (*kernel)(Params), int smem, dim3 grid, cudaStream_t st, const Params& p, int threads = 128,
               bool pdl = false);
// Each kernel family's launch for the sequences routed to it (TO: the output's type, float or bf16).
template <typename TO>
void launch_prefill(cudaStream_t st, const Params& p);
template <typename TO>
void launch_decode(cudaStream_t st, const Params& p);
template <typename TO>
void launch_split(cudaStream_t st, const Params& p);

}  // namespace rill::cuda::attn
