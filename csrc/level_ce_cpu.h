// CPU row kernels for the level cross-entropy op, written once with at::vec::Vectorized<float> and
// compiled once per instruction set by level_ce_cpu_{default,avx2,avx512}.cpp, which define
// CPU_CAPABILITY / CPU_CAPABILITY_<ISA> / IQA_CPU_NS before including this file (the same scheme
// ATen uses for its own kernels). The glue (level_ce.cpp) picks one at run time.
//
// Forward, per row: one streaming read of the row, in L1-sized chunks; each chunk gives its max,
// sum(z) and sum(exp(z - m)) against the running max m of the chunks before it, and m is moved up
// once per chunk (online softmax at chunk granularity): one read and one exp per element.
// Backward, per row: one read of z, one write of g * exp(z - lse) - g * eps/|S| (g * mass * exp(z - lse)
// on a soft row); the few entries
// that also carry the target / level terms are computed before the sweep (so the gradient may
// overwrite the logits in place) and written after it. Everything accumulates in fp32
// (per-chunk partial sums are added in double).
#pragma once
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "level_ce.h"

#ifndef IQA_CPU_NS
#error "define IQA_CPU_NS (and CPU_CAPABILITY) before including level_ce_cpu.h"
#endif

namespace iqa_vlm {
namespace IQA_CPU_NS {
namespace {  // internal linkage: no symbol can clash between the per-ISA builds

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kVs = Vec::size();
constexpr int64_t kW = 2 * kVs;  // elements per step: two float vectors = one 16-bit vector
constexpr int64_t kChunk = 2048; // multiple of kW; 8 KiB of fp32: a chunk summed again is read from L1
static_assert(at::vec::Vectorized<c10::BFloat16>::size() == kW, "bf16 vector = 2 float vectors");
static_assert(kChunk % kW == 0, "chunk must be a multiple of the step");
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

template <typename T> inline void load2(const T* p, Vec& a, Vec& b);
template <> inline void load2<float>(const float* p, Vec& a, Vec& b) {
  a = Vec::loadu(p);
  b = Vec::loadu(p + kVs);
}
template <> inline void load2<c10::BFloat16>(const c10::BFloat16* p, Vec& a, Vec& b) {
  at::vec::load_to_float(p, a, b);
}
template <> inline void load2<c10::Half>(const c10::Half* p, Vec& a, Vec& b) {
  at::vec::load_to_float(p, a, b);
}

template <typename T> inline void store2(T* p, const Vec& a, const Vec& b);
template <> inline void store2<float>(float* p, const Vec& a, const Vec& b) {
  a.store(p);
  b.store(p + kVs);
}
template <> inline void store2<c10::BFloat16>(c10::BFloat16* p, const Vec& a, const Vec& b) {
  at::vec::convert_from_float<c10::BFloat16>(a, b).store(p);
}
template <> inline void store2<c10::Half>(c10::Half* p, const Vec& a, const Vec& b) {
  at::vec::convert_from_float<c10::Half>(a, b).store(p);
}

inline float hmax(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return at::vec::maximum(x, y); }, v);
}
inline float hsum(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, v);
}

// Is y one of the level ids?
inline bool in_levels(const LevelCEParams& p, int64_t y) {
  for (int64_t k = 0; k < p.K; ++k)
    if (p.level_ids[k] == y) return true;
  return false;
}

// Chunk max and sum of z (no exp).
template <typename T>
inline void chunk_max_sum(const T* zc, int64_t len, float& cmax, float& csum) {
  const int64_t lv = len - len % kW;
  Vec mx0(kNegInf), mx1(kNegInf), s0(0.f), s1(0.f);
  for (int64_t j = 0; j < lv; j += kW) {
    Vec a, b;
    load2(zc + j, a, b);
    mx0 = at::vec::maximum(mx0, a);
    mx1 = at::vec::maximum(mx1, b);
    s0 = s0 + a;
    s1 = s1 + b;
  }
  cmax = hmax(at::vec::maximum(mx0, mx1));
  csum = hsum(s0 + s1);
  for (int64_t j = lv; j < len; ++j) {
    const float x = static_cast<float>(zc[j]);
    cmax = std::isnan(x) ? x : std::max(cmax, x);
    csum += x;
  }
}

// Chunk sum of exp(z - ref).
template <typename T>
inline float chunk_sum_exp(const T* zc, int64_t len, float ref) {
  const int64_t lv = len - len % kW;
  const Vec vr(ref);
  Vec e0(0.f), e1(0.f);
  for (int64_t j = 0; j < lv; j += kW) {
    Vec a, b;
    load2(zc + j, a, b);
    e0 = e0 + (a - vr).exp_u20();
    e1 = e1 + (b - vr).exp_u20();
  }
  float ce = hsum(e0 + e1);
  for (int64_t j = lv; j < len; ++j) ce += std::exp(static_cast<float>(zc[j]) - ref);
  return ce;
}

// All three in one read: max, sum of z and sum of exp(z - ref).
template <typename T>
inline void chunk_stats(const T* zc, int64_t len, float ref, float& cmax, float& csum, float& cexp) {
  const int64_t lv = len - len % kW;
  const Vec vr(ref);
  Vec mx0(kNegInf), mx1(kNegInf), s0(0.f), s1(0.f), e0(0.f), e1(0.f);
  for (int64_t j = 0; j < lv; j += kW) {
    Vec a, b;
    load2(zc + j, a, b);
    mx0 = at::vec::maximum(mx0, a);
    mx1 = at::vec::maximum(mx1, b);
    s0 = s0 + a;
    s1 = s1 + b;
    e0 = e0 + (a - vr).exp_u20();
    e1 = e1 + (b - vr).exp_u20();
  }
  cmax = hmax(at::vec::maximum(mx0, mx1));
  csum = hsum(s0 + s1);
  cexp = hsum(e0 + e1);
  for (int64_t j = lv; j < len; ++j) {
    const float x = static_cast<float>(zc[j]);
    cmax = std::isnan(x) ? x : std::max(cmax, x);
    csum += x;
    cexp += std::exp(x - ref);
  }
}

// exp(z - m) with z up to m + kSlack cannot overflow (e^40 * 2048 << FLT_MAX) and loses nothing
// in relative precision, so a chunk is summed against the running max m of the chunks before it,
// in the same read that finds its own max; only a chunk whose max exceeds m by more than kSlack
// (in practice: never after the first one) is summed again, from L1.
constexpr float kSlack = 40.f;

template <typename T>
void fwd_row(const LevelCEParams& p, int64_t i) {
  const int64_t V = p.V;
  const T* z = static_cast<const T*>(p.logits) + i * V;

  float m = kNegInf;  // running max
  double s = 0.0;     // running sum of exp(z - m)
  double sz = 0.0;    // sum of z (for vocab smoothing)
  for (int64_t c0 = 0; c0 < V; c0 += kChunk) {
    const T* zc = z + c0;
    const int64_t len = std::min(kChunk, V - c0);
    float cm, cs, ce = 0.f;
    const bool two_pass = m == kNegInf;  // no finite reference yet: find the max first
    if (two_pass) chunk_max_sum(zc, len, cm, cs);
    else chunk_stats(zc, len, m, cm, cs, ce);
    sz += cs;
    if (std::isnan(cm)) {
      m = cm;
      s = std::numeric_limits<double>::quiet_NaN();
      break;
    }
    if (two_pass || cm > m + kSlack) {  // sum this chunk (again, from L1) against the new max
      if (cm == kNegInf) continue;      // every logit so far is -inf
      const float nm = std::max(m, cm);
      s = s * std::exp(static_cast<double>(m) - nm) + chunk_sum_exp(zc, len, nm);
      m = nm;
    } else if (cm > m) {  // move the reference up to the running max
      s = (s + ce) * std::exp(static_cast<double>(m) - cm);
      m = cm;
    } else {
      s += ce;
    }
  }
  const double lse = static_cast<double>(m) + std::log(s);
  p.lse[i] = static_cast<float>(lse);

  // closed-set softmax over the level logits (every row, ignored or not)
  if (p.K > 0) {
    float* pr = p.probs + i * p.K;
    float lm = kNegInf;
    for (int64_t k = 0; k < p.K; ++k) lm = std::max(lm, static_cast<float>(z[p.level_ids[k]]));
    double den = 0.0;
    for (int64_t k = 0; k < p.K; ++k) {
      pr[k] = std::exp(static_cast<float>(z[p.level_ids[k]]) - lm);
      den += pr[k];
    }
    const float inv = static_cast<float>(1.0 / den);
    for (int64_t k = 0; k < p.K; ++k) pr[k] *= inv;
  }

  const int64_t y = p.target[i];
  if (y == p.ignore_index) { p.loss[i] = 0.f; return; }
  if (y < 0 || y >= V) { p.loss[i] = std::numeric_limits<float>::quiet_NaN(); return; }  // checked by the glue
  if (p.target_probs != nullptr && in_levels(p, y)) {  // soft row: KL(P || softmax(z)[L])
    const float* P = p.target_probs + i * p.K;
    double mass = 0.0, ent = 0.0, pz = 0.0;
    for (int64_t k = 0; k < p.K; ++k) {
      const double pk = P[k];
      mass += pk;
      if (pk > 0.0) ent += pk * std::log(pk), pz += pk * static_cast<float>(z[p.level_ids[k]]);
    }
    p.loss[i] = static_cast<float>(ent - pz + mass * lse);
    return;
  }
  const double nll = lse - static_cast<float>(z[y]);
  double eps = p.label_smoothing, mean_s = 0.0;
  if (!p.smooth_levels) {
    mean_s = sz / static_cast<double>(V);
  } else if (in_levels(p, y)) {
    for (int64_t k = 0; k < p.K; ++k) mean_s += static_cast<float>(z[p.level_ids[k]]);
    mean_s /= static_cast<double>(p.K);
  } else {
    eps = 0.0;  // target outside the closed set: plain NLL
  }
  p.loss[i] = static_cast<float>(eps > 0.0 ? (1.0 - eps) * nll + eps * (lse - mean_s) : nll);
}

// fix: scratch for the (index, gradient) pairs of the target / level entries.
template <typename T>
void bwd_row(const LevelCEParams& p, int64_t i, std::vector<std::pair<int64_t, float>>& fix) {
  const int64_t V = p.V;
  const T* z = static_cast<const T*>(p.logits) + i * V;
  T* out = static_cast<T*>(p.grad) + i * V;
  const int64_t y = p.target[i];
  if (y == p.ignore_index) {
    std::fill(out, out + V, T(0.f));
    return;
  }
  if (y < 0 || y >= V) {  // checked by the glue; never index out of bounds
    std::fill(out, out + V, T(std::numeric_limits<float>::quiet_NaN()));
    return;
  }
  const float g = p.grad_loss[i], lse = p.lse_in[i];
  if (std::isnan(lse)) {  // NaN logits: keep the NaN (the clamped vector exp would hide it)
    std::fill(out, out + V, T(lse));
    return;
  }
  auto prob = [&](int64_t c) { return std::exp(static_cast<float>(z[c]) - lse); };

  // Special entries first (read before the sweep, which may overwrite z in place). Each gets
  // g * (p_c - corr_c), corr_c = (1-eps)[c == y] + eps/|S| [c in S] formed in double (one rounding,
  // so e.g. V=1 gives exactly 0); a soft row's level entries get g * (mass * p_c - P_k).
  fix.clear();
  const double e = p.label_smoothing;
  auto corr = [](double x) { return static_cast<float>(x); };
  float b_all = 0.f;  // eps/|S| when S is the whole vocab
  float gs = g;       // the sweep's factor on softmax(z): g, or g * mass on a soft row
  if (p.target_probs != nullptr && in_levels(p, y)) {
    const float* P = p.target_probs + i * p.K;
    double mass = 0.0;
    for (int64_t k = 0; k < p.K; ++k) mass += P[k];
    gs = static_cast<float>(g * mass);
    for (int64_t k = 0; k < p.K; ++k)
      fix.emplace_back(p.level_ids[k], static_cast<float>(g * (mass * prob(p.level_ids[k]) - P[k])));
  } else if (!p.smooth_levels) {
    b_all = corr(e / static_cast<double>(V));
    fix.emplace_back(y, g * (prob(y) - corr(1.0 - e + e / static_cast<double>(V))));
  } else if (in_levels(p, y)) {
    const double b = e / static_cast<double>(p.K);
    for (int64_t k = 0; k < p.K; ++k) {
      const int64_t c = p.level_ids[k];
      fix.emplace_back(c, g * (prob(c) - corr(c == y ? 1.0 - e + b : b)));
    }
  } else {
    fix.emplace_back(y, g * (prob(y) - 1.f));
  }

  // Sweep: out = gs * exp(z - lse) - g * b_all
  const int64_t lv = V - V % kW;
  const Vec vg(gs), vl(lse), vb(g * b_all);
  for (int64_t j = 0; j < lv; j += kW) {
    Vec a, b;
    load2(z + j, a, b);
    a = (a - vl).exp_u20() * vg - vb;
    b = (b - vl).exp_u20() * vg - vb;
    store2(out + j, a, b);
  }
  for (int64_t j = lv; j < V; ++j) out[j] = T(gs * prob(j) - g * b_all);
  for (const auto& f : fix) out[f.first] = T(f.second);
}

template <typename T>
void fwd_rows_t(const LevelCEParams& p, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) fwd_row<T>(p, i);
}
template <typename T>
void bwd_rows_t(const LevelCEParams& p, int64_t begin, int64_t end) {
  std::vector<std::pair<int64_t, float>> fix;
  fix.reserve(static_cast<size_t>(std::max<int64_t>(p.K, 1)));
  for (int64_t i = begin; i < end; ++i) bwd_row<T>(p, i, fix);
}

}  // namespace

void fwd_rows(const LevelCEParams& p, int64_t begin, int64_t end) {
  switch (p.dtype) {
    case DType::F32: return fwd_rows_t<float>(p, begin, end);
    case DType::BF16: return fwd_rows_t<c10::BFloat16>(p, begin, end);
    case DType::F16: return fwd_rows_t<c10::Half>(p, begin, end);
  }
}
void bwd_rows(const LevelCEParams& p, int64_t begin, int64_t end) {
  switch (p.dtype) {
    case DType::F32: return bwd_rows_t<float>(p, begin, end);
    case DType::BF16: return bwd_rows_t<c10::BFloat16>(p, begin, end);
    case DType::F16: return bwd_rows_t<c10::Half>(p, begin, end);
  }
}

}  // namespace IQA_CPU_NS
}  // namespace iqa_vlm
