// CUDA kernels for the fused level cross-entropy op (semantics in level_ce.h / DESIGN.md).
// Only CUDA headers here, so `nvcc -c -arch=sm_80 csrc/level_ce_cuda.cu` works without torch or a GPU;
// the torch glue (level_ce.cpp) passes raw pointers and the stream.
//
// One block per row. Rows are read with 16-byte loads (a scalar head until the row pointer is
// 16-byte aligned, a scalar tail), four loads in flight per thread. Forward: per-thread online
// max / sum-of-exp / sum in fp32, combined with warp shuffles, then across warps in shared memory;
// warp 0 then does the closed-set softmax and the loss (a soft row's KL too). Backward: one read and
// one write per element (g * exp(z - lse) - g * eps/|S|, or g * mass * exp(z - lse) on a soft row);
// the target / level entries are computed first (so the gradient may overwrite the logits in place)
// and written last. All indexing into the [N, V] buffer is int64 (N * V exceeds 2^31 at N=16384,
// V=151936).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "level_ce.h"

namespace iqa_vlm {
namespace {

constexpr int kUnroll = 4;

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// ---------------------------------------------------------------------------- element types
template <typename T> struct Elt;
template <> struct Elt<float> {
  static constexpr int kPerVec = 4;  // per 16-byte vector
  __device__ static float load(const float* p) { return *p; }
  __device__ static float cvt(float x) { return x; }
  __device__ static void unpack(const uint4& v, float* f) {
    f[0] = __uint_as_float(v.x); f[1] = __uint_as_float(v.y);
    f[2] = __uint_as_float(v.z); f[3] = __uint_as_float(v.w);
  }
  __device__ static uint4 pack(const float* f) {
    return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
  }
};
template <> struct Elt<__nv_bfloat16> {
  static constexpr int kPerVec = 8;
  __device__ static float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
  __device__ static __nv_bfloat16 cvt(float x) { return __float2bfloat16_rn(x); }
  __device__ static void unpack(const uint4& v, float* f) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {  // bf16 -> fp32 is a 16-bit shift
      f[2 * k] = __uint_as_float(w[k] << 16);
      f[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    }
  }
  __device__ static uint32_t pack2(float a, float b) {
    __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  __device__ static uint4 pack(const float* f) {
    return make_uint4(pack2(f[0], f[1]), pack2(f[2], f[3]), pack2(f[4], f[5]), pack2(f[6], f[7]));
  }
};
template <> struct Elt<__half> {
  static constexpr int kPerVec = 8;
  __device__ static float load(const __half* p) { return __half2float(*p); }
  __device__ static __half cvt(float x) { return __float2half_rn(x); }
  __device__ static void unpack(const uint4& v, float* f) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 t = __half22float2(*reinterpret_cast<const __half2*>(&w[k]));
      f[2 * k] = t.x;
      f[2 * k + 1] = t.y;
    }
  }
  __device__ static uint32_t pack2(float a, float b) {
    __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  __device__ static uint4 pack(const float* f) {
    return make_uint4(pack2(f[0], f[1]), pack2(f[2], f[3]), pack2(f[4], f[5]), pack2(f[6], f[7]));
  }
};

// Split a row into [0, head) scalar, `nvec` 16-byte vectors, [tail_begin, V) scalar.
struct RowSplit {
  int64_t head, nvec, tail_begin;
};
template <typename T>
__device__ __forceinline__ RowSplit split_row(const T* row, int64_t V, bool vec_ok) {
  constexpr int n = Elt<T>::kPerVec;
  RowSplit r{V, 0, V};
  if (!vec_ok) return r;
  const uint32_t mis = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(row) & 15u);
  int64_t head = mis ? static_cast<int64_t>((16u - mis) / sizeof(T)) : 0;
  head = head < V ? head : V;
  r.head = head;
  r.nvec = (V - head) / n;
  r.tail_begin = head + r.nvec * n;
  return r;
}

// ---------------------------------------------------------------------------- reductions
struct Stats {
  float m, s, sz;  // running max, sum of exp(z - m), sum of z
};

template <int CNT>
__device__ __forceinline__ void stats_add(Stats& a, const float (&v)[CNT]) {
  float gm = v[0];
#pragma unroll
  for (int k = 1; k < CNT; ++k) gm = fmaxf(gm, v[k]);
  if (gm > a.m) {
    a.s *= __expf(a.m - gm);  // a.m == -inf: a.s is 0 and stays 0
    a.m = gm;
  }
  const bool live = a.m != neg_inf();  // NaN inputs propagate through the sums below
#pragma unroll
  for (int k = 0; k < CNT; ++k) {
    a.sz += v[k];
    if (live) a.s += __expf(v[k] - a.m);
  }
}

__device__ __forceinline__ void stats_merge(Stats& a, const Stats& b) {
  const float m = fmaxf(a.m, b.m);
  a.sz += b.sz;
  if (m == neg_inf()) return;  // both empty / all -inf
  a.s = a.s * __expf(a.m - m) + b.s * __expf(b.m - m);
  a.m = m;
}

__device__ __forceinline__ Stats warp_merge(Stats a) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    Stats b{__shfl_xor_sync(0xffffffffu, a.m, off), __shfl_xor_sync(0xffffffffu, a.s, off),
            __shfl_xor_sync(0xffffffffu, a.sz, off)};
    stats_merge(a, b);
  }
  return a;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

// ---------------------------------------------------------------------------- forward
template <typename T, int kThreads>
__global__ void __launch_bounds__(kThreads) fwd_kernel(const LevelCEParams p, const bool vec_ok) {
  constexpr int n = Elt<T>::kPerVec;
  const int64_t i = blockIdx.x;
  const int64_t V = p.V;
  const T* z = static_cast<const T*>(p.logits) + i * V;
  const RowSplit rs = split_row(z, V, vec_ok);

  Stats st{neg_inf(), 0.f, 0.f};
  const uint4* zv = reinterpret_cast<const uint4*>(z + rs.head);
  int64_t j = threadIdx.x;
  for (; j + (kUnroll - 1) * kThreads < rs.nvec; j += kUnroll * kThreads) {
    uint4 r[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) r[u] = zv[j + u * kThreads];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float f[n];
      Elt<T>::unpack(r[u], f);
      stats_add(st, f);
    }
  }
  for (; j < rs.nvec; j += kThreads) {
    float f[n];
    Elt<T>::unpack(zv[j], f);
    stats_add(st, f);
  }
  for (int64_t c = threadIdx.x; c < rs.head; c += kThreads) {
    const float f[1] = {Elt<T>::load(z + c)};
    stats_add(st, f);
  }
  for (int64_t c = rs.tail_begin + threadIdx.x; c < V; c += kThreads) {
    const float f[1] = {Elt<T>::load(z + c)};
    stats_add(st, f);
  }

  // block reduce
  constexpr int kWarps = kThreads / 32;
  __shared__ float sm_m[kWarps], sm_s[kWarps], sm_z[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  st = warp_merge(st);
  if (lane == 0) { sm_m[warp] = st.m; sm_s[warp] = st.s; sm_z[warp] = st.sz; }
  __syncthreads();
  if (warp != 0) return;
  st = lane < kWarps ? Stats{sm_m[lane], sm_s[lane], sm_z[lane]} : Stats{neg_inf(), 0.f, 0.f};
  st = warp_merge(st);
  const float lse = st.m + logf(st.s);

  // closed-set softmax over the level logits (warp 0, lanes stride over K)
  const int64_t K = p.K;
  float lm = neg_inf();
  for (int64_t k = lane; k < K; k += 32) lm = fmaxf(lm, Elt<T>::load(z + p.level_ids[k]));
  lm = warp_max(lm);
  float den = 0.f;
  for (int64_t k = lane; k < K; k += 32) den += __expf(Elt<T>::load(z + p.level_ids[k]) - lm);
  den = warp_sum(den);
  for (int64_t k = lane; k < K; k += 32)
    p.probs[i * K + k] = __expf(Elt<T>::load(z + p.level_ids[k]) - lm) / den;

  // loss (lanes help with the level sums when smoothing over the levels or on a soft row)
  const int64_t y = p.target[i];
  const bool ignored = y == p.ignore_index, bad = !ignored && (y < 0 || y >= V);
  const float* P = p.target_probs ? p.target_probs + i * K : nullptr;
  float zl = 0.f, mass = 0.f, ent = 0.f, pz = 0.f;
  bool hit = false;
  if ((p.smooth_levels || P) && !ignored && !bad) {
    for (int64_t k = lane; k < K; k += 32) {
      const int64_t c = p.level_ids[k];
      const float zc = Elt<T>::load(z + c);
      zl += zc;
      hit |= (c == y);
      if (P && P[k] > 0.f) mass += P[k], ent += P[k] * logf(P[k]), pz += P[k] * zc;
    }
    zl = warp_sum(zl);
    if (P) mass = warp_sum(mass), ent = warp_sum(ent), pz = warp_sum(pz);
    hit = __any_sync(0xffffffffu, hit);
  }
  if (lane != 0) return;
  p.lse[i] = lse;
  if (ignored) { p.loss[i] = 0.f; return; }
  if (bad) { p.loss[i] = __int_as_float(0x7fc00000); return; }  // the glue checks targets first
  if (P && hit) {  // soft row: KL(P || softmax(z)[L])
    p.loss[i] = static_cast<float>(static_cast<double>(ent) - pz + static_cast<double>(mass) * lse);
    return;
  }
  const double nll = static_cast<double>(lse) - Elt<T>::load(z + y);
  double eps = p.label_smoothing, mean_s = 0.0;
  if (!p.smooth_levels) mean_s = static_cast<double>(st.sz) / static_cast<double>(V);
  else if (hit) mean_s = static_cast<double>(zl) / static_cast<double>(K);
  else eps = 0.0;
  p.loss[i] = static_cast<float>(eps > 0.0 ? (1.0 - eps) * nll + eps * (lse - mean_s) : nll);
}

// ---------------------------------------------------------------------------- backward
// Dynamic shared memory: max(K, 1) floats for the special entries.
template <typename T, int kThreads>
__global__ void __launch_bounds__(kThreads) bwd_kernel(const LevelCEParams p, const bool vec_ok) {
  constexpr int n = Elt<T>::kPerVec;
  extern __shared__ float fix_val[];
  __shared__ int s_hit;
  const int64_t i = blockIdx.x;
  const int64_t V = p.V, K = p.K;
  const T* z = static_cast<const T*>(p.logits) + i * V;
  T* out = static_cast<T*>(p.grad) + i * V;
  const RowSplit rs = split_row(z, V, vec_ok);
  const int64_t y = p.target[i];
  const bool ignored = y == p.ignore_index, bad = !ignored && (y < 0 || y >= V);

  if (ignored || bad) {  // zeros (or NaN for a target the glue should have rejected)
    const T fill = Elt<T>::cvt(ignored ? 0.f : __int_as_float(0x7fc00000));
    for (int64_t c = threadIdx.x; c < V; c += kThreads) out[c] = fill;
    return;
  }
  const float g = p.grad_loss[i], lse = p.lse_in[i];

  // mode: 0 = smooth over vocab, 1 = over the levels (y is a level), 2 = plain NLL (y not a level),
  // 3 = soft row (target_probs given, y is a level)
  const float* P = p.target_probs ? p.target_probs + i * K : nullptr;
  __shared__ float s_mass;
  if (threadIdx.x == 0) {
    s_hit = 0;
    float m = 0.f;  // K is small (5 levels): one thread sums the soft row's mass
    if (P)
      for (int64_t k = 0; k < K; ++k) m += P[k];
    s_mass = m;
  }
  __syncthreads();
  if (p.smooth_levels || P)
    for (int64_t k = threadIdx.x; k < K; k += kThreads)
      if (p.level_ids[k] == y) s_hit = 1;
  __syncthreads();
  const int mode = P ? (s_hit ? 3 : 0) : !p.smooth_levels ? 0 : (s_hit ? 1 : 2);
  // special entries: g * (p_c - corr_c), corr_c = (1-eps)[c == y] + eps/|S| [c in S] formed in double;
  // soft row: g * (mass * p_c - P_k)
  const double e = mode == 3 ? 0.0 : p.label_smoothing;
  const float b_all = mode == 0 ? static_cast<float>(e / static_cast<double>(V)) : 0.f;
  const float mass = mode == 3 ? s_mass : 1.f;
  const int64_t nfix = (mode == 1 || mode == 3) ? K : 1;
  for (int64_t k = threadIdx.x; k < nfix; k += kThreads) {
    const int64_t c = (mode == 1 || mode == 3) ? p.level_ids[k] : y;
    const float pc = __expf(Elt<T>::load(z + c) - lse);
    if (mode == 3) {
      fix_val[k] = g * (mass * pc - P[k]);
      continue;
    }
    double corr;
    if (mode == 0) corr = 1.0 - e + e / static_cast<double>(V);
    else if (mode == 1) corr = (c == y ? 1.0 - e : 0.0) + e / static_cast<double>(K);
    else corr = 1.0;
    fix_val[k] = g * (pc - static_cast<float>(corr));
  }
  __syncthreads();  // every special entry is read before any write below

  const float gb = g * b_all;
  const float gs = g * mass;  // the factor on softmax(z)
  const uint4* zv = reinterpret_cast<const uint4*>(z + rs.head);
  uint4* ov = reinterpret_cast<uint4*>(out + rs.head);
  int64_t j = threadIdx.x;
  for (; j + (kUnroll - 1) * kThreads < rs.nvec; j += kUnroll * kThreads) {
    uint4 r[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) r[u] = zv[j + u * kThreads];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float f[n];
      Elt<T>::unpack(r[u], f);
#pragma unroll
      for (int k = 0; k < n; ++k) f[k] = gs * __expf(f[k] - lse) - gb;
      ov[j + u * kThreads] = Elt<T>::pack(f);
    }
  }
  for (; j < rs.nvec; j += kThreads) {
    float f[n];
    Elt<T>::unpack(zv[j], f);
#pragma unroll
    for (int k = 0; k < n; ++k) f[k] = gs * __expf(f[k] - lse) - gb;
    ov[j] = Elt<T>::pack(f);
  }
  for (int64_t c = threadIdx.x; c < rs.head; c += kThreads)
    out[c] = Elt<T>::cvt(gs * __expf(Elt<T>::load(z + c) - lse) - gb);
  for (int64_t c = rs.tail_begin + threadIdx.x; c < V; c += kThreads)
    out[c] = Elt<T>::cvt(gs * __expf(Elt<T>::load(z + c) - lse) - gb);
  __syncthreads();
  for (int64_t k = threadIdx.x; k < nfix; k += kThreads)
    out[(mode == 1 || mode == 3) ? p.level_ids[k] : y] = Elt<T>::cvt(fix_val[k]);
}

// ---------------------------------------------------------------------------- launchers
template <typename T>
bool vectorizable(const void* a, const void* b) {
  const uintptr_t x = reinterpret_cast<uintptr_t>(a), y = reinterpret_cast<uintptr_t>(b);
  // rows of both buffers then share the same offset modulo 16 bytes
  return (x % sizeof(T)) == 0 && (x & 15u) == (y & 15u);
}

template <typename T>
cudaError_t launch_fwd(const LevelCEParams& p, cudaStream_t stream) {
  const int64_t nvec = p.V / Elt<T>::kPerVec;
  const bool vec_ok = vectorizable<T>(p.logits, p.logits);
  const dim3 grid(static_cast<unsigned>(p.N));
  if (nvec >= 8192) fwd_kernel<T, 512><<<grid, 512, 0, stream>>>(p, vec_ok);
  else if (nvec >= 1024) fwd_kernel<T, 256><<<grid, 256, 0, stream>>>(p, vec_ok);
  else fwd_kernel<T, 128><<<grid, 128, 0, stream>>>(p, vec_ok);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bwd(const LevelCEParams& p, cudaStream_t stream) {
  const int64_t nvec = p.V / Elt<T>::kPerVec;
  const bool vec_ok = vectorizable<T>(p.logits, p.grad);
  const dim3 grid(static_cast<unsigned>(p.N));
  const size_t smem = sizeof(float) * static_cast<size_t>(p.K > 1 ? p.K : 1);
  if (nvec >= 8192) bwd_kernel<T, 512><<<grid, 512, smem, stream>>>(p, vec_ok);
  else if (nvec >= 1024) bwd_kernel<T, 256><<<grid, 256, smem, stream>>>(p, vec_ok);
  else bwd_kernel<T, 128><<<grid, 128, smem, stream>>>(p, vec_ok);
  return cudaGetLastError();
}

constexpr int64_t kMaxGridX = 2147483647;
constexpr int64_t kMaxLevelsCuda = 8192;  // backward keeps the level entries in shared memory

}  // namespace

int level_ce_fwd_cuda(const LevelCEParams& p, void* stream) {
  if (p.N == 0) return 0;
  if (p.N > kMaxGridX) return static_cast<int>(cudaErrorInvalidConfiguration);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case DType::F32: return static_cast<int>(launch_fwd<float>(p, s));
    case DType::BF16: return static_cast<int>(launch_fwd<__nv_bfloat16>(p, s));
    case DType::F16: return static_cast<int>(launch_fwd<__half>(p, s));
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int level_ce_bwd_cuda(const LevelCEParams& p, void* stream) {
  if (p.N == 0) return 0;
  if (p.N > kMaxGridX || p.K > kMaxLevelsCuda) return static_cast<int>(cudaErrorInvalidConfiguration);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case DType::F32: return static_cast<int>(launch_bwd<float>(p, s));
    case DType::BF16: return static_cast<int>(launch_bwd<__nv_bfloat16>(p, s));
    case DType::F16: return static_cast<int>(launch_bwd<__half>(p, s));
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace iqa_vlm
