// Attention on CUDA cores for the sequences the tensor-core kernels do not take (the sink window, head sizes other
// than 64/128, mid-size chunks, and everything in float32 mode, where q and the cache are f32), flash-decoding
// style. One block handles one query token, the query heads of one KV head (up to 8 at a time) and one split of
// at most kSplitKeys keys; a key row of head_dim entries is read by LPK lanes with one 16-byte load each (two in
// f32), scores are reduced across them with shuffles and folded into an online softmax per lane group, then groups
// and warps merge through shared memory; a second kernel merges the splits.
#include <type_traits>

#include "backend/cuda/attention.cuh"

namespace rill::cuda::attn {

namespace {

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

template <typename TO, int LPK>
void launch_split_lanes(cudaStream_t st, const Params& p) {
  const dim3 grid(unsigned(p.a.num_tokens), unsigned(p.a.KV * p.gchunks), unsigned(p.max_splits));
  // float32 mode writes f32 only (the backend's activations are f32 there).
  if constexpr (std::is_same_v<TO, float>)
    if (p.a.kv_t == DType::F32) {
      attention_split_kernel<float, float, LPK><<<grid, kWarps * 32, 0, st>>>(p);
      return;
    }
  attention_split_kernel<TO, bf16, LPK><<<grid, kWarps * 32, 0, st>>>(p);
}


}  // namespace

template <typename TO>
void launch_split(cudaStream_t st, const Params& p) {
  const int lanes = (p.a.hd + 7) / 8;
  if (lanes <= 1) launch_split_lanes<TO, 1>(st, p);
  else if (lanes <= 2) launch_split_lanes<TO, 2>(st, p);
  else if (lanes <= 4) launch_split_lanes<TO, 4>(st, p);
  else if (lanes <= 8) launch_split_lanes<TO, 8>(st, p);
  else if (lanes <= 16) launch_split_lanes<TO, 16>(st, p);
  else launch_split_lanes<TO, 32>(st, p);
  check_launch("attention");
  if (p.max_splits > 1) {
    attention_combine_kernel<TO><<<dim3(unsigned(p.a.num_tokens), unsigned(p.a.H)), 128, 0, st>>>(p);
    check_launch("attention (combine)");
  }
}

template void launch_split<float>(cudaStream_t, const Params&);
template void launch_split<bf16>(cudaStream_t, const Params&);

}  // namespace rill::cuda::attn
