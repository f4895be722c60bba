#include "model/rope.h"

#include <algorithm>
#include <cmath>

namespace rill {

namespace {

std::vector<double> base_inv_freq(double theta, int dim) {
  std::vector<double> f(size_t(dim / 2));
  for (int i = 0; i < dim / 2; ++i) f[size_t(i)] = 1.0 / std::pow(theta, double(2 * i) / dim);
  return f;
}

double yarn_mscale(double scale, double mscale) { return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0; }

}  // namespace

std::vector<double> rope_inv_freq(const ModelConfig& c, int seq_len) {
  const RopeConfig& r = c.rope;
  const int dim = c.head_dim;
  switch (r.type) {
    case RopeType::Default:
      return base_inv_freq(r.theta, dim);
    case RopeType::Linear: {
      auto f = base_inv_freq(r.theta, dim);
      for (double& v : f) v /= r.factor;
      return f;
    }
    case RopeType::Dynamic: {
      const int original = r.original_max_position_embeddings > 0 ? r.original_max_position_embeddings
                                                                  : c.max_position_embeddings;
      if (seq_len <= original) return base_inv_freq(r.theta, dim);
      const double base =
          r.theta * std::pow(r.factor * seq_len / original - (r.factor - 1.0), double(dim) / (dim - 2));
      return base_inv_freq(base, dim);
    }
    case RopeType::Llama3: {
      auto f = base_inv_freq(r.theta, dim);
      const double old_ctx = r.original_max_position_embeddings;
      const double low_wavelen = old_ctx / r.low_freq_factor, high_wavelen = old_ctx / r.high_freq_factor;
      for (double& v : f) {
        const double wavelen = 2.0 * M_PI / v;
        if (wavelen < high_wavelen) continue;  // high frequency: unchanged
        if (wavelen > low_wavelen) {
          v /= r.factor;  // low frequency: interpolated
        } else {
          const double smooth = (old_ctx / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
          v = (1.0 - smooth) * v / r.factor + smooth * v;
        }
      }
      return f;
    }
    case RopeType::Yarn: {
      const double original = r.original_max_position_embeddings > 0 ? r.original_max_position_embeddings
                                                                      : c.max_position_embeddings;
      auto correction_dim = [&](double rotations) {
        return dim * std::log(original / (rotations * 2.0 * M_PI)) / (2.0 * std::log(r.theta));
      };
      double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
      if (r.truncate) {
        low = std::floor(low);
        high = std::ceil(high);
      }
      low = std::max(low, 0.0);
      high = std::min(high, double(dim - 1));
      if (low == high) high += 0.001;  // avoid a zero-width ramp
      std::vector<double> f(size_t(dim / 2));
      for (int i = 0; i < dim / 2; ++i) {
        const double pos_freq = std::pow(r.theta, double(2 * i) / dim);
        const double extrapolation = 1.0 / pos_freq, interpolation = 1.0 / (r.factor * pos_freq);
        const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
        const double extrapolation_weight = 1.0 - ramp;
        f[size_t(i)] = interpolation * (1.0 - extrapolation_weight) + extrapolation * extrapolation_weight;
      }
      return f;
    }
  }
  return base_inv_freq(r.theta, dim);
}

double rope_attention_factor(const ModelConfig& c) {
  const RopeConfig& r = c.rope;
  if (r.type != RopeType::Yarn) return 1.0;
  if (r.attention_factor > 0) return r.attention_factor;
  if (r.mscale != 0 && r.mscale_all_dim != 0)
    return yarn_mscale(r.factor, r.mscale) / yarn_mscale(r.factor, r.mscale_all_dim);
  return yarn_mscale(r.factor, 1.0);
}

}  // namespace rill
