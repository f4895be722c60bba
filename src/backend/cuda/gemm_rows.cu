// Products of a few rows (a batch of decoding sequences: more than the matrix-vector kernels' 8, at most 64)
// with up to three bf16 weight matrices that share x, in one launch on tensor cores. The CUDA backend uses it
// for q, k and v, where cuBLASLt takes three launches, two of them short: at 64 rows of a Llama-3-8B layer,
// 36 against 41-45 us, and at 16 rows 29 against 41-47 us. Single matrices and gate + up stream as fast or
// faster through cuBLASLt, which this kernel does not beat there (it reaches 1.4-1.8 TB/s against the copy
// bandwidth's 3.0: latency-bound, 2 blocks of 8 warps per SM;
// bench/results/cuda-rows-gemm-h100-2026-11-23.txt).
//
// out[r, o] = x[r, :] · w[o, :] is an MMA with the weights as the A operand (16 weight rows per m16n8k16
// tile) and x as the B operand (8 rows of x per n-tile). Neither needs a transpose: W rows and x rows are
// both contiguous in k, as A's row-major and B's column-major fragments want. Since a dot product may add its
// terms in any order, k is permuted alike in both operands:
//   - each lane loads its two weight rows (g and g + 8 of the warp's 16) straight into registers, 16 bytes
//     at k offsets 8·tq and 32 + 8·tq of each 64-wide step;
//   - those 16 bf16 pairs are the A fragments of the step's four MMAs;
//   - the lane reads the same offsets of x from shared memory as its B fragments.
// Each 16-byte weight load of a warp then covers 64 contiguous bytes of 8 rows, with no shared-memory
// staging and no ldmatrix. kDepth steps of weights (4 x 16 bytes each) stay in flight per lane.
//
// A block: 8 warps x 16 rows = 128 weight rows, over one split of k. x streams through shared memory in
// chunks of 256 k (double-buffered cp.async), shared by the 8 warps: 64 rows of x per 128 weight rows keeps
// x's reads from L2 at half the weight bytes.
//
// Few weight rows (6144) cannot fill 132 SMs with 128-row blocks, so k is split over a thread-block cluster
// of S blocks, at most 8. Each block puts its partial sums in its shared memory; after a cluster barrier,
// block `rank` sums its share of the outputs over the S blocks' shared memory (distributed shared memory),
// in rank order, and stores them. So the sums are deterministic, with no workspace and no second kernel.
// S depends only on the weights' shape, never on the number of rows of x: a row's result does not depend on
// the other rows.
#include <cooperative_groups.h>
#include <cuda_bf16.h>

#include <algorithm>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace rill::cuda {

namespace {

namespace cg = cooperative_groups;

constexpr int kWarps = 8, kBlockRows = kWarps * 16;  // weight rows per block
constexpr int kStep = 64;                            // k per group of four MMAs
constexpr int kDepth = 4;                            // weight steps in flight per lane; steps per x chunk
constexpr int kChunk = kStep * kDepth;               // k per x chunk in shared memory
// x rows in shared memory are kChunk + 32 entries apart (576 bytes, 64 mod 128): the 16-byte reads of
// lanes (g, tq) and (g + 1, tq) then land in different bank groups.
constexpr int kXStride = kChunk + 32;
constexpr int kRedStride = kBlockRows + 4;  // partial sums [x row][weight row]: conflict-free stores

struct RowsArgs {
  const bf16* w[3] = {};
  void* out[3] = {};
  int64_t rows[3] = {}, first[3] = {};  // each matrix's rows, and where they start among all of them
  int count = 0;
  int64_t total = 0;  // all weight rows
  const bf16* x = nullptr;
  int n = 0;
  int64_t k = 0;
  int splits = 1;        // S: blocks per cluster, along k
  int split_chunks = 1;  // x chunks per split
};

template <int NT>
constexpr int smem_bytes() {
  constexpr int x = 2 * NT * 8 * kXStride * int(sizeof(bf16));
  constexpr int red = NT * 8 * kRedStride * int(sizeof(float));
  return x > red ? x : red;
}

// Which of the group's matrices holds weight row `row` (counted over all of them).
__device__ __forceinline__ int matrix_of(const RowsArgs& p, int64_t row) {
  int m = 0;
  while (m + 1 < p.count && row >= p.first[m + 1]) ++m;
  return m;
}

// NT n-tiles of x (n <= 8 NT); TO the output type.
template <int NT, typename TO>
__global__ void __launch_bounds__(kWarps * 32, 2) gemm_rows_kernel(RowsArgs p) {
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* xs = reinterpret_cast<bf16*>(smem);  // [2][NT * 8][kXStride]
  cg::cluster_group cluster = cg::this_cluster();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
  const int tile = int(blockIdx.x) / p.splits, rank = int(blockIdx.x) % p.splits;
  const int64_t kbeg = int64_t(rank) * p.split_chunks * kChunk;
  const int nchunks = p.split_chunks;

  // This warp's 16 weight rows: of which matrix, from which row.
  const int64_t r0 = int64_t(tile) * kBlockRows + warp * 16;
  const int m = matrix_of(p, r0);
  const int64_t row0 = r0 - p.first[m];
  const bool live = r0 < p.total;
  const bf16* wa = p.w[m] + (live ? (row0 + g) * p.k : 0) + kbeg + 8 * tq;
  const bf16* wb = wa + (live ? 8 * p.k : 0);

  // The first chunk's weights, before waiting for the kernel that writes x.
  uint4 ring[kDepth][4] = {};
#pragma unroll
  for (int i = 0; i < kDepth; ++i) {
    if (live) {
      const int64_t o = int64_t(i) * kStep;
      ring[i][0] = load_stream(wa + o), ring[i][1] = load_stream(wa + o + 32);
      ring[i][2] = load_stream(wb + o), ring[i][3] = load_stream(wb + o + 32);
    }
  }
  pdl_wait();

  auto load_x = [&](int c, int buf) {
    bf16* dst = xs + buf * (NT * 8 * kXStride);
    constexpr int kPerRow = kChunk / 8;  // 16-byte pieces per row of a chunk
    for (int i = threadIdx.x; i < NT * 8 * kPerRow; i += blockDim.x) {
      const int r = i / kPerRow, c8 = (i % kPerRow) * 8;
      const bool ok = r < p.n;
      cp_async16(dst + r * kXStride + c8, ok ? p.x + int64_t(r) * p.k + kbeg + int64_t(c) * kChunk + c8 : p.x,
                 ok);
    }
    asm volatile("cp.async.commit_group;\n" ::);
  };

  float acc[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;

  load_x(0, 0);
  for (int c = 0; c < nchunks; ++c) {
    if (c + 1 < nchunks) {
      load_x(c + 1, (c + 1) & 1);
      asm volatile("cp.async.wait_group 1;\n" ::);
    } else {
      asm volatile("cp.async.wait_group 0;\n" ::);
    }
    __syncthreads();
    const bf16* xb = xs + (c & 1) * (NT * 8 * kXStride);
#pragma unroll
    for (int i = 0; i < kDepth; ++i) {
      if (!live) continue;
      // A fragments of the four MMAs: rows g (a0, a1: k offsets 8 tq and 32 + 8 tq) and g + 8 (b0, b1).
      const uint4 &a0 = ring[i][0], &a1 = ring[i][1], &b0 = ring[i][2], &b1 = ring[i][3];
      const uint32_t f[4][4] = {{a0.x, b0.x, a0.y, b0.y},
                                {a0.z, b0.z, a0.w, b0.w},
                                {a1.x, b1.x, a1.y, b1.y},
                                {a1.z, b1.z, a1.w, b1.w}};
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const bf16* xr = xb + (j * 8 + g) * kXStride + i * kStep + 8 * tq;
        const uint4 x0 = *reinterpret_cast<const uint4*>(xr), x1 = *reinterpret_cast<const uint4*>(xr + 32);
        mma_bf16(acc[j], f[0], x0.x, x0.y);
        mma_bf16(acc[j], f[1], x0.z, x0.w);
        mma_bf16(acc[j], f[2], x1.x, x1.y);
        mma_bf16(acc[j], f[3], x1.z, x1.w);
      }
      if (c + 1 < nchunks) {  // then the same step of the next chunk into its registers
        const int64_t o = int64_t(c + 1) * kChunk + int64_t(i) * kStep;
        ring[i][0] = load_stream(wa + o), ring[i][1] = load_stream(wa + o + 32);
        ring[i][2] = load_stream(wb + o), ring[i][3] = load_stream(wb + o + 32);
      }
    }
    __syncthreads();  // this buffer is refilled two chunks on
  }

  // Partial sums to shared memory, [x row][block row] (the x buffers are free now).
  float* red = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int col = j * 8 + 2 * tq, r = warp * 16 + g;
    red[col * kRedStride + r] = acc[j][0];
    red[(col + 1) * kRedStride + r] = acc[j][1];
    red[col * kRedStride + r + 8] = acc[j][2];
    red[(col + 1) * kRedStride + r + 8] = acc[j][3];
  }
  cluster.sync();
  // This block's share of the outputs, summed over the cluster in rank order; consecutive threads take
  // consecutive weight rows (contiguous stores).
  const int outputs = p.n * kBlockRows, per = (outputs + p.splits - 1) / p.splits;
  const int e_end = min(outputs, (rank + 1) * per);
  for (int e = rank * per + int(threadIdx.x); e < e_end; e += blockDim.x) {
    const int col = e / kBlockRows, r = e % kBlockRows;
    float part[8];  // every block's partial loaded at once, then summed in rank order
#pragma unroll
    for (int q = 0; q < 8; ++q)
      if (q < p.splits) part[q] = cluster.map_shared_rank(red, q)[col * kRedStride + r];
    float s = 0.f;
#pragma unroll
    for (int q = 0; q < 8; ++q)
      if (q < p.splits) s += part[q];
    const int64_t gr = int64_t(tile) * kBlockRows + r;
    if (gr < p.total) {
      const int mm = matrix_of(p, gr);
      static_cast<TO*>(p.out[mm])[int64_t(col) * p.rows[mm] + (gr - p.first[mm])] = from_f<TO>(s);
    }
  }
  cluster.sync();  // no block leaves while another still reads its shared memory
}

// S: the largest divisor of the chunk count, at most 8, that keeps every block of the grid resident at once
// (two per SM); one wave, so no block waits for a slot while the others stream.
int splits_for(int64_t tiles, int64_t chunks) {
  int best = 1;
  for (int s = 2; s <= 8; ++s)
    if (chunks % s == 0 && tiles * s <= 2 * int64_t(sm_count())) best = s;
  return best;
}

template <int NT, typename TO>
void launch_rows(cudaStream_t st, const RowsArgs& p, int64_t tiles) {
  auto kernel = gemm_rows_kernel<NT, TO>;
  constexpr int smem = smem_bytes<NT>();
  static const bool raised = [&] {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
               "gemm_rows smem");
    return true;
  }();
  (void)raised;
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = unsigned(p.splits);
  attr[0].val.clusterDim.y = attr[0].val.clusterDim.z = 1;
  attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[1].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(unsigned(tiles * p.splits));
  cfg.blockDim = dim3(kWarps * 32);
  cfg.dynamicSmemBytes = size_t(smem);
  cfg.stream = st;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 2 : 1;
  check_cuda(cudaLaunchKernelEx(&cfg, kernel, p), "gemm_rows launch");
}

bool aligned(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

}  // namespace

bool gemm_rows(cudaStream_t st, const GemvGroup& g, DType out_t, const void* x, int64_t n, int64_t k) {
  if (n <= kGemvMaxRows || n > kRowsMaxRows || k % kChunk != 0 || k > INT32_MAX) return false;
  if (g.count < 1 || g.count > 3 || !aligned(x)) return false;
  RowsArgs p;
  p.count = g.count;
  for (int m = 0; m < g.count; ++m) {
    if (g.rows[m] % 16 != 0 || !aligned(g.w[m])) return false;
    p.w[m] = as_bf16(g.w[m]);
    p.out[m] = g.out[m];
    p.rows[m] = g.rows[m];
    p.first[m] = p.total;
    p.total += g.rows[m];
  }
  p.x = as_bf16(x);
  p.n = int(n);
  p.k = k;
  const int64_t tiles = (p.total + kBlockRows - 1) / kBlockRows;
  if (tiles * 8 > INT32_MAX) return false;
  p.splits = splits_for(tiles, k / kChunk);
  p.split_chunks = int(k / kChunk / p.splits);
  dispatch1(out_t, [&](auto y) {
    using TO = decltype(y);
    if (n <= 16)
      launch_rows<2, TO>(st, p, tiles);
    else if (n <= 32)
      launch_rows<4, TO>(st, p, tiles);
    else
      launch_rows<8, TO>(st, p, tiles);
  });
  return true;
}

}  // namespace rill::cuda
