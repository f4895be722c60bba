// Sampling on the device: penalties, greedy, temperature, top-k, top-p, min-p and the draw, one block per
// row, with the rule of backend/sampling.h and no sort.
//
// Every filter keeps a prefix of the row in rank order (logit / temperature descending, ties by lower id),
// and the draw picks the token where a running sum in that order crosses a target. So each step asks one
// question: where in rank order does a running sum (of ones for top-k, of probabilities otherwise) first
// reach a target? One pass over the row counts the tokens into 2048 bins by their distance below the top
// (bins keep rank order), which finds the bin the sum crosses in; only that bin's tokens, gathered into
// shared memory, are then ranked exactly, by a radix select over the order-preserving bits of their value
// and then over their ids for ties. Once the kept set fits in shared memory (after top-k, say), the later
// steps run there and no longer read the row.
//
// Probabilities are unnormalized weights exp(x - max) in fixed point (2^40 for the top token), so sums are
// exact integers: the result does not depend on the order of the atomic adds, and a seed gives the same
// token on every run. Tokens under 2^-40 of the top one weigh nothing and are never drawn. The weights are
// computed in float here and in double by the host's sample_row, so the two pick the same token except
// when the draw falls within about 1e-7 of a boundary between two tokens.
#include <climits>
#include <cstdint>
#include <type_traits>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace rill::cuda {

namespace {

using u64 = unsigned long long;
constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr double kFixedOne = 1099511627776.0;  // 2^40
constexpr int kBins = 2048;                    // by distance below the top: 64 bins per unit, 32 units
constexpr float kBinsPerUnit = 64.f;
constexpr int kCand = 4096;  // tokens held in shared memory: a bin's, or the kept set once that is small

// Ascends with the float: negative floats reversed, positive ones above them; -0 is 0 (they tie).
__device__ __forceinline__ uint32_t order_key(float x) {
  if (x == 0.f) x = 0.f;
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Rank order: a token is at or before the cut when its key is larger, or equal with an id no larger.
struct Cut {
  uint32_t key = 0;
  int id = INT_MAX;  // {0, INT_MAX}: every token
  __device__ bool keeps(float x, int i) const {
    const uint32_t k = order_key(x);
    return k > key || (k == key && i <= id);
  }
};

struct Shared {
  u64 bin_mass[kBins];
  unsigned bin_count[kBins];
  u64 mass[256];
  unsigned count[256];
  float keep_x[kCand];  // the kept set (x = logit / temperature, and id), once it fits
  int keep_id[kCand];
  float bin_x[kCand];  // the tokens of one bin
  int bin_id[kCand];
  u64 red[kWarps];
  float red_f[kWarps];
  int red_i[kWarps];
  uint32_t prefix;
  u64 above, tie_mass, cross_above;
  unsigned tie_count, n_keep, n_bin;
  int found, cross_bin, last_bin;
};

struct Found {
  uint32_t key;   // the key of the token where the sum crosses
  u64 above;      // the sum over tokens ranked before that key
  u64 tie_mass;   // the sum over tokens with this key
  unsigned ties;  // how many tokens have this key
};

__device__ u64 block_sum(u64 v, Shared& sm) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) sm.red[threadIdx.x / 32] = v;
  __syncthreads();
  u64 t = 0;
  for (int w = 0; w < kWarps; ++w) t += sm.red[w];
  __syncthreads();
  return t;
}

// Exclusive prefix sum over the block's threads in order; *total gets the sum of all.
__device__ u64 block_exclusive(u64 v, u64* total, Shared& sm) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  u64 inc = v;
  for (int o = 1; o < 32; o <<= 1) {
    const u64 n = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += n;
  }
  if (lane == 31) sm.red[warp] = inc;
  __syncthreads();
  u64 before = 0, all = 0;
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) before += sm.red[w];
    all += sm.red[w];
  }
  __syncthreads();
  *total = all;
  return before + inc - v;
}

// Where does the running sum of w over the tokens 0..n-1 that elem admits, in descending key order and
// starting from above0, first reach target (sum >= target; sum > target when strict)? elem(i, key, w) says
// whether token i takes part, with its key and weight. When the sum never gets there: the last key.
template <class Elem>
__device__ Found radix_select(int n, const Elem& elem, u64 above0, u64 target, bool strict, Shared& sm) {
  uint32_t prefix = 0, mask = 0;
  u64 above = above0;
  const int lane = threadIdx.x % 32;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += kThreads) sm.mass[b] = 0, sm.count[b] = 0;
    __syncthreads();
    for (int base = 0; base < n; base += kThreads) {  // whole warps in every iteration, for the warp votes
      const int i = base + int(threadIdx.x);
      uint32_t key = 0;
      u64 w = 0;
      const bool in = i < n && elem(i, key, w) && (key & mask) == prefix;
      const unsigned active = __ballot_sync(0xffffffffu, in);
      if (in) {
        // Lanes with the same bin add up first: keys crowd into a few bins.
        const unsigned bin = (key >> shift) & 255u;
        const unsigned group = __match_any_sync(active, bin);
        const unsigned lo = __reduce_add_sync(group, unsigned(w & 0xfffffu));
        const unsigned hi = __reduce_add_sync(group, unsigned(w >> 20));  // w <= 2^40: no overflow in 32 lanes
        if (lane == __ffs(group) - 1) {
          atomicAdd(&sm.mass[bin], (u64(hi) << 20) + lo);
          atomicAdd(&sm.count[bin], unsigned(__popc(group)));
        }
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      u64 sum = above, last_above = above;
      int chosen = -1, last = 0;
      for (int b = 255; b >= 0; --b) {
        if (sm.count[b] == 0) continue;
        const u64 next = sum + sm.mass[b];
        if (strict ? next > target : next >= target) {
          chosen = b;
          break;
        }
        last = b;
        last_above = sum;
        sum = next;
      }
      if (chosen < 0) chosen = last, sum = last_above;  // never reached: the last token
      sm.prefix = prefix | (uint32_t(chosen) << shift);
      sm.above = sum;
      sm.tie_mass = sm.mass[chosen];
      sm.tie_count = sm.count[chosen];
    }
    __syncthreads();
    prefix = sm.prefix;
    above = sm.above;
    mask |= 0xffu << shift;
  }
  Found f{prefix, above, sm.tie_mass, sm.tie_count};
  __syncthreads();  // sm is reused by the next call
  return f;
}

// The token at which the running sum (as radix_select) first reaches target, as a cut in rank order.
// tok(i, x, id) gives token i of n (false: not taking part); weight(x) its weight.
template <class Tok, class Weight>
__device__ Cut exact_cut(int n, const Tok& tok, const Weight& weight, u64 above0, u64 target, bool strict,
                         Shared& sm) {
  auto elem = [&](int i, uint32_t& key, u64& w) {
    float x;
    int id;
    if (!tok(i, x, id)) return false;
    key = order_key(x);
    w = weight(x);
    return true;
  };
  const Found f = radix_select(n, elem, above0, target, strict, sm);
  Cut cut;
  cut.key = f.key;
  // Tied tokens weigh the same: the sum crosses at the j-th of them in id order.
  const u64 q = f.ties ? f.tie_mass / f.ties : 0, rem = target >= f.above ? target - f.above : 0;
  u64 j = q == 0 ? 1 : strict ? rem / q + 1 : (rem + q - 1) / q;
  j = j < 1 ? 1 : j > f.ties ? f.ties : j;
  auto tied = [&](int i, uint32_t& key, u64& w) {
    float x;
    int id;
    if (!tok(i, x, id) || order_key(x) != f.key) return false;
    key = ~uint32_t(id);  // lower ids first
    w = 1;
    return true;
  };
  cut.id = int(~radix_select(n, tied, 0, j, false, sm).key);
  return cut;
}

// The tokens a step looks at: x = logit / temperature and id, for those `extra` admits. get() reads token i of
// n; visit() calls f(x, id) for each, split over the block's threads.
template <class Extra>
struct RowTokens {  // the whole row, in global memory
  const float* row;
  int n;
  float temp;
  Extra extra;
  static constexpr bool shared = false;
  // Masked tokens (-inf) take no part, as NaN ones: they have no chance, and a mask leaves most of a row -inf.
  __device__ bool get(int i, float& x, int& id) const {
    x = row[i] / temp, id = i;
    return !isnan(x) && x > -INFINITY && extra(x, id);
  }
  template <class F>
  __device__ void visit(const F& f) const {
    for_each_in_row(row, n, [&](float l, int i) {
      const float x = l / temp;
      if (!isnan(x) && x > -INFINITY && extra(x, i)) f(x, i);
    });
  }
};
template <class Extra>
struct KeptTokens {  // the kept set, in shared memory
  const Shared* sm;
  int n;
  Extra extra;
  static constexpr bool shared = true;
  __device__ bool get(int i, float& x, int& id) const {
    x = sm->keep_x[i], id = sm->keep_id[i];
    return extra(x, id);
  }
  template <class F>
  __device__ void visit(const F& f) const {
    for (int i = threadIdx.x; i < n; i += kThreads) {
      float x;
      int id;
      if (get(i, x, id)) f(x, id);
    }
  }
};

// One filter or the draw over the tokens of src: the cut at which their running
// sum in rank order (of weight(x)) first reaches target(total) (> when strict). Tokens are first counted into
// bins by distance below the top (x_max - x, rank order kept), which finds the bin the sum crosses in; only
// that bin's tokens are then ranked exactly. With `keep`, the tokens at or before the cut are also stored in
// shared memory when they fit (sm.n_keep of them; else sm.n_keep is kCand + 1).
template <class Src, class Weight, class Target>
__device__ Cut select(const Src& src, const Weight& weight, const Target& target_of, bool strict, bool keep, float mx,
                      Shared& sm) {
  const int n = src.n;
  constexpr bool src_shared = Src::shared;
  auto bin_of = [mx](float x) {
    const float d = (mx - x) * kBinsPerUnit;
    return d < float(kBins - 1) ? int(d) : kBins - 1;
  };
  for (int b = threadIdx.x; b < kBins; b += kThreads) sm.bin_mass[b] = 0, sm.bin_count[b] = 0;
  __syncthreads();
  src.visit([&](float x, int) {
    const int b = bin_of(x);
    atomicAdd(&sm.bin_mass[b], weight(x));
    atomicAdd(&sm.bin_count[b], 1u);
  });
  __syncthreads();
  // The bin the running sum crosses in: each thread scans two bins after a block-wide prefix sum.
  constexpr int per = kBins / kThreads;
  const int b0 = int(threadIdx.x) * per;
  u64 mine = 0, total = 0;
  unsigned count_mine = 0;
  int last_mine = -1;
  for (int k = 0; k < per; ++k) {
    mine += sm.bin_mass[b0 + k];
    count_mine += sm.bin_count[b0 + k];
    if (sm.bin_count[b0 + k]) last_mine = b0 + k;
  }
  u64 count_total;
  const u64 before = block_exclusive(mine, &total, sm);
  const u64 count_before = block_exclusive(count_mine, &count_total, sm);
  const u64 target = target_of(total);
  if (threadIdx.x == 0) sm.cross_bin = -1, sm.last_bin = -1;
  __syncthreads();
  atomicMax(&sm.last_bin, last_mine);
  u64 sum = before;
  unsigned count_sum = unsigned(count_before);
  for (int k = 0; k < per; ++k) {
    const int b = b0 + k;
    const u64 next = sum + sm.bin_mass[b];
    const bool was = strict ? sum > target : sum >= target, now = strict ? next > target : next >= target;
    if (sm.bin_count[b] && now && !was) sm.cross_bin = b, sm.cross_above = sum, sm.n_keep = count_sum + sm.bin_count[b];
    sum = next;
    count_sum += sm.bin_count[b];
  }
  __syncthreads();
  if (threadIdx.x == 0 && sm.cross_bin < 0 && sm.last_bin >= 0) {  // never reached: the last bin
    sm.cross_bin = sm.last_bin;
    sm.cross_above = total - sm.bin_mass[sm.last_bin];
    sm.n_keep = unsigned(count_total);
  }
  __syncthreads();
  const int cb = sm.cross_bin;
  const u64 cross_above = sm.cross_above;
  const unsigned in_bin = sm.bin_count[cb < 0 ? 0 : cb], up_to_bin = sm.n_keep;
  __syncthreads();
  if (cb < 0) {  // nothing takes part
    if (threadIdx.x == 0) sm.n_keep = kCand + 1;
    __syncthreads();
    return Cut{};
  }
  auto in_cross_bin = [&](int i, float& x, int& id) { return src.get(i, x, id) && bin_of(x) == cb; };
  Cut cut;
  if (src_shared || in_bin > unsigned(kCand)) {
    cut = exact_cut(n, in_cross_bin, weight, cross_above, target, strict, sm);
  } else {
    if (threadIdx.x == 0) sm.n_bin = 0;
    __syncthreads();
    src.visit([&](float x, int id) {
      if (bin_of(x) != cb) return;
      const unsigned slot = atomicAdd(&sm.n_bin, 1u);
      sm.bin_x[slot] = x, sm.bin_id[slot] = id;
    });
    __syncthreads();
    auto held = [&](int i, float& x, int& id) {
      x = sm.bin_x[i], id = sm.bin_id[i];
      return true;
    };
    cut = exact_cut(int(sm.n_bin), held, weight, cross_above, target, strict, sm);
  }
  if (!keep) return cut;
  // The kept set into shared memory, when it fits: gathered first (the source may be that memory itself).
  if (up_to_bin > unsigned(kCand)) {
    if (threadIdx.x == 0) sm.n_keep = kCand + 1;
    __syncthreads();
    return cut;
  }
  constexpr int kPer = kCand / kThreads;
  float gx[kPer];
  int gid[kPer];
  int got = 0;
  if (src_shared) {
    for (int i = threadIdx.x; i < n; i += kThreads) {
      float x;
      int id;
      if (src.get(i, x, id) && cut.keeps(x, id)) gx[got] = x, gid[got] = id, ++got;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) sm.n_keep = 0;
  __syncthreads();
  auto put = [&](float x, int id) {
    const unsigned slot = atomicAdd(&sm.n_keep, 1u);
    if (slot < unsigned(kCand)) sm.keep_x[slot] = x, sm.keep_id[slot] = id;
  };
  if (src_shared) {
    for (int k = 0; k < got; ++k) put(gx[k], gid[k]);
  } else {
    src.visit([&](float x, int id) {
      if (cut.keeps(x, id)) put(x, id);
    });
  }
  __syncthreads();
  return cut;
}

__global__ void __launch_bounds__(kThreads)
    sample_kernel(int32_t* ids, float* logits, int V, const SampleRow* rows, const PenaltyEntry* pen, int entries) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Shared& sm = *reinterpret_cast<Shared*>(smem_raw);
  const SampleRow p = rows[blockIdx.x];
  float* row = logits + int64_t(blockIdx.x) * V;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;

  // Penalties: the entries are distinct tokens, so no two threads write one logit.
  const int e_end = min(p.penalty_end, entries);
  for (int e = max(p.penalty_begin, 0) + int(threadIdx.x); e < e_end; e += kThreads) {
    const int t = pen[e].token;
    if (t < 0 || t >= V) continue;
    float l = row[t];
    if (p.params.repetition_penalty != 1.f) l = l > 0 ? l / p.params.repetition_penalty : l * p.params.repetition_penalty;
    if (pen[e].output_count > 0) l -= p.params.presence_penalty + p.params.frequency_penalty * float(pen[e].output_count);
    row[t] = l;
  }
  __syncthreads();

  // The largest logit / temperature (the raw logit when greedy) and its first id; the count of those above -inf
  // (a row under a grammar's mask may have fewer than top_k, and then top-k keeps them all).
  const bool greedy = p.params.temperature == 0.f;
  float best = -INFINITY;
  int best_i = INT_MAX;
  u64 valid = 0;
  for_each_in_row(row, V, [&](float l, int i) {
    const float x = greedy ? l : l / p.params.temperature;
    if (isnan(x)) return;
    if (x > -INFINITY) ++valid;
    if (x > best || best_i == INT_MAX) best = x, best_i = i;
  });
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
    if (oi != INT_MAX && (best_i == INT_MAX || ov > best || (ov == best && oi < best_i))) best = ov, best_i = oi;
  }
  if (lane == 0) sm.red_f[warp] = best, sm.red_i[warp] = best_i;
  __syncthreads();
  for (int w = 0; w < kWarps; ++w) {
    const float ov = sm.red_f[w];
    const int oi = sm.red_i[w];
    if (oi != INT_MAX && (best_i == INT_MAX || ov > best || (ov == best && oi < best_i))) best = ov, best_i = oi;
  }
  __syncthreads();
  const bool none = best_i == INT_MAX || (!greedy && best == -INFINITY);  // every logit NaN, or masked when sampling
  if (none || greedy) {
    if (threadIdx.x == 0) ids[blockIdx.x] = none ? -1 : best_i;
    return;
  }
  valid = block_sum(valid, sm);
  const float mx = best, temp = p.params.temperature;
  auto weight = [mx](float x) { return u64(double(expf(x - mx)) * kFixedOne); };
  auto one = [](float) { return u64(1); };
  // The tokens still in play: the whole row, or the kept set once it is in shared memory.
  bool shared = false;
  auto stage = [&](const auto& weight_of, const auto& target_of, const auto& extra, bool strict, bool keep) {
    using Extra = std::decay_t<decltype(extra)>;
    Cut cut = shared ? select(KeptTokens<Extra>{&sm, int(sm.n_keep), extra}, weight_of, target_of, strict, keep, mx, sm)
                     : select(RowTokens<Extra>{row, V, temp, extra}, weight_of, target_of, strict, keep, mx, sm);
    if (keep && sm.n_keep <= unsigned(kCand)) shared = true;
    __syncthreads();
    return cut;
  };
  auto all = [](float, int) { return true; };

  // top-k: the first k tokens (a running count).
  Cut top_k;
  if (p.params.top_k > 0 && u64(p.params.top_k) < valid)
    top_k = stage(one, [&](u64) { return u64(p.params.top_k); }, all, false, true);
  auto in_top_k = [&](float x, int id) { return shared || top_k.keeps(x, id); };
  // top-p: the shortest prefix whose probability reaches top_p.
  Cut top_p;
  if (p.params.top_p < 1.f) {
    auto target = [&](u64 sum) {
      u64 t = u64(ceil(double(p.params.top_p) * double(sum)));
      return t < 1 ? u64(1) : t > sum ? sum : t;
    };
    top_p = stage(weight, target, in_top_k, false, true);
  }
  // min-p, then the draw: the token at which the running probability first exceeds uniform * total.
  const float min_p = p.params.min_p;
  auto kept = [&](float x, int id) {
    return in_top_k(x, id) && (shared || top_p.keeps(x, id)) && (min_p == 0.f || expf(x - mx) >= min_p);
  };
  auto draw_at = [&](u64 sum) {
    const u64 r = u64(p.uniform * double(sum));
    return r >= sum ? sum - 1 : r;
  };
  const Cut pick = stage(weight, draw_at, kept, true, false);
  if (threadIdx.x == 0) ids[blockIdx.x] = pick.id == INT_MAX ? -1 : pick.id;
}

// top_logprobs: one block per row. A pass gives the max, a second the log-sum-exp (f64 terms, as the host
// adds them), then each of the k entries is one more pass over the row (in L2 by then), taking the best entry
// ranked after the one before (log-probability descending, then id): no sort and no list of taken ids.
__global__ void __launch_bounds__(kThreads) top_logprobs_kernel(float* out, const float* logits, const int32_t* ids,
                                                                int V, int k) {
  __shared__ float sv[32];
  __shared__ int si[32];
  __shared__ double sd[32];
  const float* row = logits + int64_t(blockIdx.x) * V;
  float* o = out + int64_t(blockIdx.x) * (1 + 2 * k);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = int(blockDim.x / 32);
  float mx = -INFINITY;
  for_each_in_row(row, V, [&](float v, int) { mx = fmaxf(mx, v); });  // NaN never wins, as on the host
  for (int d = 16; d > 0; d >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, d));
  if (lane == 0) sv[warp] = mx;
  __syncthreads();
  for (int w = 0; w < warps; ++w) mx = fmaxf(mx, sv[w]);
  double sum = 0;
  for_each_in_row(row, V, [&](float v, int) {
    if (!isnan(v)) sum += exp(double(v - mx));
  });
  for (int d = 16; d > 0; d >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, d);
  if (lane == 0) sd[warp] = sum;
  __syncthreads();
  sum = 0;
  for (int w = 0; w < warps; ++w) sum += sd[w];
  const float lse = mx + float(log(sum));
  if (threadIdx.x == 0) {
    const int32_t t = ids[blockIdx.x];
    o[0] = t >= 0 && t < V ? row[t] - lse : NAN;
  }
  float prev = INFINITY;
  int prev_id = -1;
  for (int j = 0; j < k; ++j) {
    float bv = -INFINITY;
    int bi = INT_MAX;
    for_each_in_row(row, V, [&](float v, int id) {
      const float lp = v - lse;
      if (!isnan(v) && ranks_before(prev, prev_id, lp, id) && ranks_before(lp, id, bv, bi)) bv = lp, bi = id;
    });
    block_best(bv, bi, sv, si);
    if (threadIdx.x == 0) {
      o[1 + 2 * j] = bi == INT_MAX ? -1.f : float(bi);
      o[2 + 2 * j] = bi == INT_MAX ? -INFINITY : bv;
    }
    prev = bv, prev_id = bi;
  }
}

}  // namespace

void top_logprobs(cudaStream_t st, float* out, const float* logits, const int32_t* ids, int64_t rows, int64_t vocab,
                  int k) {
  if (rows == 0) return;
  top_logprobs_kernel<<<unsigned(rows), kThreads, 0, st>>>(out, logits, ids, int(vocab), k);
  check_launch("top_logprobs");
}

void sample_rows(cudaStream_t st, int32_t* ids, float* logits, int64_t rows, int64_t vocab, const SampleRow* params,
                 const PenaltyEntry* penalties, int64_t entries) {
  if (rows == 0) return;
  static const bool configured = [] {
    check_cuda(cudaFuncSetAttribute(sample_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(sizeof(Shared))),
               "sample_rows: shared memory");
    return true;
  }();
  (void)configured;
  sample_kernel<<<unsigned(rows), kThreads, sizeof(Shared), st>>>(ids, logits, int(vocab), params, penalties,
                                                                   int(entries));
  check_launch("sample_rows");
}

}  // namespace rill::cuda
