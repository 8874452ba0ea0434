// Plain-C++ interface shared by the torch glue (level_ce.cpp), the CPU row kernels
// (level_ce_cpu_*.cpp) and the CUDA kernels (level_ce_cuda.cu). No torch or CUDA headers here,
// so nvcc can compile the .cu without a torch install.
//
// Semantics (see docs/DESIGN.md, "The op"), per row i with z = logits[i], y = target[i]:
//   lse     = logsumexp(z)
//   loss    = (1-eps)(lse - z_y) + eps(lse - mean_{c in S} z_c)      (0 when y == ignore_index)
//             S = whole vocab (smooth_levels=false), or the level ids when smooth_levels=true and
//             y is a level id; smooth_levels=true with y not a level id: plain NLL (eps ignored).
//   probs   = softmax(z[level_ids])                                  (fp32, every row)
//   dz      = g (softmax(z) - (1-eps) onehot(y) - eps u_S)           (0 when y == ignore_index)
// Soft targets (target_probs P [N, K] given; DeQA-Score's soft level labels): a row whose y is a level
// id is a soft row, with S = sum_k P_k (DeQA's mean-preserving labels need not sum to exactly 1):
//   loss    = KL(P || softmax(z)[L]) = sum_k P_k log P_k - sum_k P_k z_{L_k} + S lse   (0 log 0 = 0)
//   dz      = g (S softmax(z) - scatter_L(P))
// Other rows keep the hard-target formulas above (eps applies to them); P's rows for them are not read.
#pragma once
#include <cstdint>

namespace iqa_vlm {

enum class DType : int { F32 = 0, BF16 = 1, F16 = 2 };

struct LevelCEParams {
  int64_t N = 0, V = 0, K = 0;
  const void* logits = nullptr;       // [N, V] row-major, dtype `dtype`
  const int64_t* target = nullptr;    // [N]
  const int64_t* level_ids = nullptr; // [K] (nullptr when K == 0)
  float label_smoothing = 0.f;
  bool smooth_levels = false;
  int64_t ignore_index = -100;
  DType dtype = DType::F32;
  const float* target_probs = nullptr;  // [N, K] fp32, finite and >= 0; nullptr = hard targets only
  // forward outputs (fp32)
  float* loss = nullptr;   // [N]
  float* probs = nullptr;  // [N, K]
  float* lse = nullptr;    // [N]
  // backward
  const float* grad_loss = nullptr;  // [N]
  const float* lse_in = nullptr;     // [N] saved by the forward
  void* grad = nullptr;              // [N, V], dtype `dtype`; may equal `logits` (in place)
};

// Row-range CPU kernels, one set per instruction set (DEFAULT / AVX2 / AVX512). The glue runs
// them under at::parallel_for; rows [begin, end).
using RowFn = void (*)(const LevelCEParams&, int64_t begin, int64_t end);

namespace cpu_default { void fwd_rows(const LevelCEParams&, int64_t, int64_t);
                        void bwd_rows(const LevelCEParams&, int64_t, int64_t); }
namespace cpu_avx2    { void fwd_rows(const LevelCEParams&, int64_t, int64_t);
                        void bwd_rows(const LevelCEParams&, int64_t, int64_t); }
namespace cpu_avx512  { void fwd_rows(const LevelCEParams&, int64_t, int64_t);
                        void bwd_rows(const LevelCEParams&, int64_t, int64_t); }

// CUDA launchers (level_ce_cuda.cu). `stream` is a cudaStream_t passed as void* so this header stays
// free of CUDA includes. They return a cudaError_t value (0 = success) from the launch.
int level_ce_fwd_cuda(const LevelCEParams& p, void* stream);
int level_ce_bwd_cuda(const LevelCEParams& p, void* stream);

}  // namespace iqa_vlm
