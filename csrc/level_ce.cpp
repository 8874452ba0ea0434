// Torch glue for the fused level cross-entropy op: schema, input checks, CPU dispatch and (with
// -DWITH_CUDA) the CUDA dispatch. Kernels live in level_ce_cpu.h (CPU) and level_ce_cuda.cu (CUDA).
//
// Ops (namespace iqa_vlm; the Python face is iqa_vlm/level_ce.py, which adds autograd and fake kernels):
//   level_ce_fwd(Tensor logits, Tensor target, Tensor level_ids, float label_smoothing,
//                bool smooth_levels, int ignore_index, bool inplace_backward=False)
//       -> (Tensor loss, Tensor probs, Tensor lse)
//     logits [N, V] fp32/bf16/fp16 contiguous; target [N] int64; level_ids [K] int64 (K may be 0:
//     no closed set, probs is then [N, 0]); loss [N] fp32 (0 on ignored rows); probs [N, K] fp32;
//     lse [N] fp32 (saved for the backward). inplace_backward is not used by the forward itself:
//     iqa_vlm/level_ce.py's autograd formula reads it to pick level_ce_bwd_ over level_ce_bwd.
//   level_ce_bwd(Tensor grad_loss, Tensor logits, Tensor target, Tensor level_ids, Tensor lse,
//                float label_smoothing, bool smooth_levels, int ignore_index) -> Tensor
//     gradient w.r.t. logits, in the logits' dtype, 0 on ignored rows.
//   level_ce_bwd_(Tensor grad_loss, Tensor(a!) logits, ...same...) -> ()
//     the same gradient, written over `logits` (saves one [N, V] buffer).
//   Each takes a last optional `Tensor? target_probs` [N, K] (any float dtype, used as fp32; finite, >= 0):
//   soft targets for the rows whose target is a level id (KL to the closed set, level_ce.h). It cannot be
//   combined with smooth_levels, and needs K >= 1.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <unordered_set>
#include <vector>

#include "level_ce.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

#ifdef WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace iqa_vlm {
namespace {

// Error messages are built here as one std::string (std::to_string, snprintf; no std::ostream) and handed to TORCH_CHECK
// whole, which passes a lone string through c10::str untouched. c10::str streams every other argument through an
// ostringstream, and one torch build (2.11 + cu130, extension built with g++ 13.3) crashed with SIGSEGV there while
// formatting an int64 into an out-of-range message.
std::string S(int64_t v) { return std::to_string(v); }
std::string S(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}
std::string S(at::IntArrayRef sizes) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + std::to_string(sizes[i]);
  return out + "]";
}
std::string S(at::ScalarType t) { return c10::toString(t); }
std::string S(const at::Device& d) { return d.str(); }

// ----------------------------------------------------------------------------- input checks

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::F32;
    case at::kBFloat16: return DType::BF16;
    case at::kHalf: return DType::F16;
    default:
      TORCH_CHECK_TYPE(false, "level_ce: logits must be float32, bfloat16 or float16, got " + S(t.scalar_type()));
  }
  return DType::F32;
}

// Metadata checks (shape, dtype, device, contiguity) for every op.
void check_meta(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& level_ids,
                double label_smoothing) {
  TORCH_CHECK(logits.dim() == 2, "level_ce: logits must be 2-D [N, V], got shape " + S(logits.sizes()));
  dtype_of(logits);
  TORCH_CHECK(logits.is_contiguous(), "level_ce: logits must be contiguous");
  TORCH_CHECK(logits.size(1) >= 1, "level_ce: logits must have at least one column (V >= 1)");
  TORCH_CHECK(target.dim() == 1 && target.size(0) == logits.size(0),
              "level_ce: target must be 1-D of length N=" + S(logits.size(0)) + ", got shape " + S(target.sizes()));
  TORCH_CHECK_TYPE(target.scalar_type() == at::kLong, "level_ce: target must be int64, got " + S(target.scalar_type()));
  TORCH_CHECK(target.device() == logits.device(), "level_ce: target must be on the logits' device " +
              S(logits.device()) + ", got " + S(target.device()));
  TORCH_CHECK(level_ids.dim() == 1, "level_ce: level_ids must be 1-D [K], got shape " + S(level_ids.sizes()));
  TORCH_CHECK_TYPE(level_ids.scalar_type() == at::kLong, "level_ce: level_ids must be int64, got " +
                   S(level_ids.scalar_type()));
  TORCH_CHECK(level_ids.numel() == 0 || level_ids.device() == logits.device(),
              "level_ce: level_ids must be on the logits' device " + S(logits.device()) + ", got " +
              S(level_ids.device()));
  TORCH_CHECK_VALUE(label_smoothing >= 0.0 && label_smoothing < 1.0,
                    "level_ce: label_smoothing must be in [0, 1), got " + S(label_smoothing));
}

void check_level_values(const int64_t* ids, int64_t K, int64_t V) {
  std::unordered_set<int64_t> seen;
  for (int64_t k = 0; k < K; ++k) {
    TORCH_CHECK_VALUE(ids[k] >= 0 && ids[k] < V, "level_ce: level_ids[" + S(k) + "]=" + S(ids[k]) +
                      " is out of range [0, " + S(V) + ")");
    TORCH_CHECK_VALUE(seen.insert(ids[k]).second, "level_ce: level_ids has duplicate id " + S(ids[k]));
  }
}

void check_target_values(const int64_t* t, int64_t N, int64_t V, int64_t ignore_index) {
  for (int64_t i = 0; i < N; ++i)
    TORCH_CHECK_VALUE(t[i] == ignore_index || (t[i] >= 0 && t[i] < V), "level_ce: target[" + S(i) + "]=" + S(t[i]) +
                      " is out of range [0, " + S(V) + ") and is not ignore_index=" + S(ignore_index));
}

// Value checks. CPU: plain loops. CUDA: level ids and the count of bad targets come back in one
// small device-to-host copy (one sync per forward); the offending entry is looked up only on error.
void check_values(const at::Tensor& target, const at::Tensor& level_ids, int64_t V, int64_t ignore_index) {
  if (target.is_cpu()) {
    check_target_values(target.data_ptr<int64_t>(), target.numel(), V, ignore_index);
    check_level_values(level_ids.data_ptr<int64_t>(), level_ids.numel(), V);
    return;
  }
  auto bad = (target != ignore_index).logical_and((target < 0).logical_or(target >= V));
  auto host = at::cat({level_ids.to(target.device()), bad.sum().view({1})}).cpu();
  const int64_t* h = host.data_ptr<int64_t>();
  const int64_t K = level_ids.numel();
  if (h[K] > 0) {
    const int64_t i = bad.nonzero().select(1, 0)[0].item<int64_t>();
    const int64_t ti = target[i].item<int64_t>();
    TORCH_CHECK_VALUE(false, "level_ce: target[" + S(i) + "]=" + S(ti) + " is out of range [0, " + S(V) +
                      ") and is not ignore_index=" + S(ignore_index));
  }
  check_level_values(h, K, V);
}

// Soft targets: [N, K] floats on the logits' device -> contiguous fp32 (undefined when not given).
at::Tensor prep_target_probs(const c10::optional<at::Tensor>& tp, const at::Tensor& logits, int64_t K,
                             bool smooth_levels) {
  if (!tp.has_value() || !tp->defined()) return at::Tensor();
  const at::Tensor& P = *tp;
  TORCH_CHECK_VALUE(!smooth_levels, "level_ce: target_probs cannot be combined with smoothing over the levels");
  TORCH_CHECK_VALUE(K >= 1, "level_ce: target_probs needs level_ids (K >= 1)");
  TORCH_CHECK(P.dim() == 2 && P.size(0) == logits.size(0) && P.size(1) == K, "level_ce: target_probs must be [N, K] = [" +
              S(logits.size(0)) + ", " + S(K) + "], got shape " + S(P.sizes()));
  TORCH_CHECK_TYPE(at::isFloatingType(P.scalar_type()), "level_ce: target_probs must be floating point, got " +
                   S(P.scalar_type()));
  TORCH_CHECK(P.device() == logits.device(), "level_ce: target_probs must be on the logits' device " +
              S(logits.device()) + ", got " + S(P.device()));
  return P.to(at::kFloat).contiguous();
}

// Soft-target values: finite and >= 0 (one reduction; on CUDA one small copy to the host).
void check_probs_values(const at::Tensor& P) {
  if (!P.defined() || P.numel() == 0) return;
  const auto bad = P.isfinite().logical_not().logical_or(P < 0);
  if (bad.any().item<bool>()) {
    const auto at_ = bad.nonzero()[0].cpu();
    const int64_t i = at_[0].item<int64_t>(), k = at_[1].item<int64_t>();
    TORCH_CHECK_VALUE(false, "level_ce: target_probs[" + S(i) + ", " + S(k) + "]=" + S(P[i][k].item<double>()) +
                      " must be finite and >= 0");
  }
}

LevelCEParams make_params(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& level_ids,
                          double label_smoothing, bool smooth_levels, int64_t ignore_index) {
  LevelCEParams p;
  p.N = logits.size(0);
  p.V = logits.size(1);
  p.K = level_ids.numel();
  p.logits = logits.data_ptr();
  p.target = target.data_ptr<int64_t>();
  p.level_ids = p.K > 0 ? level_ids.data_ptr<int64_t>() : nullptr;
  p.label_smoothing = static_cast<float>(label_smoothing);
  p.smooth_levels = smooth_levels;
  p.ignore_index = ignore_index;
  p.dtype = dtype_of(logits);
  return p;
}

at::Tensor prep_grad_loss(const at::Tensor& grad_loss, const at::Tensor& logits) {
  TORCH_CHECK(grad_loss.numel() == logits.size(0), "level_ce: grad_loss must have N=" + S(logits.size(0)) +
              " elements, got shape " + S(grad_loss.sizes()));
  TORCH_CHECK(grad_loss.device() == logits.device(), "level_ce: grad_loss must be on the logits' device");
  return grad_loss.reshape({-1}).to(at::kFloat).contiguous();  // autograd may hand an expanded scalar
}

void check_lse(const at::Tensor& lse, const at::Tensor& logits) {
  TORCH_CHECK(lse.dim() == 1 && lse.size(0) == logits.size(0) && lse.scalar_type() == at::kFloat &&
                  lse.is_contiguous() && lse.device() == logits.device(),
              "level_ce: lse must be the contiguous float32 [N] tensor returned by level_ce_fwd");
}

// ----------------------------------------------------------------------------- CPU

struct CpuKernels {
  const char* name;
  RowFn fwd, bwd;
};

std::string& forced_cpu_kernel() {
  static std::string name;  // "" = automatic
  return name;
}

std::vector<CpuKernels> compiled_cpu_kernels() {
  std::vector<CpuKernels> ks{{"DEFAULT", cpu_default::fwd_rows, cpu_default::bwd_rows}};
#ifdef IQA_HAVE_AVX2
  ks.push_back({"AVX2", cpu_avx2::fwd_rows, cpu_avx2::bwd_rows});
#endif
#ifdef IQA_HAVE_AVX512
  ks.push_back({"AVX512", cpu_avx512::fwd_rows, cpu_avx512::bwd_rows});
#endif
  return ks;
}

// The best compiled kernel this CPU can run (as torch sees it: at::get_cpu_capability() honours
// ATEN_CPU_CAPABILITY), unless one was forced with iqa_vlm_ext.set_cpu_kernel().
CpuKernels pick_cpu_kernels() {
  static const std::vector<CpuKernels> ks = compiled_cpu_kernels();
  const std::string want = forced_cpu_kernel();
  if (!want.empty()) {
    for (const auto& k : ks)
      if (want == k.name) return k;
    TORCH_CHECK(false, "level_ce: CPU kernel " + want + " was not compiled");
  }
  static const std::string cap = at::get_cpu_capability();
  const int rank = cap == "AVX512" ? 2 : cap == "AVX2" ? 1 : 0;
  CpuKernels best = ks[0];
  for (const auto& k : ks) {
    const int r = std::string(k.name) == "AVX512" ? 2 : std::string(k.name) == "AVX2" ? 1 : 0;
    if (r <= rank) best = k;
  }
  return best;
}

// The CPU gradient buffer is [N, V]: hundreds of MB that the allocator maps fresh on every call,
// so first-touch page faults cost more than the kernel itself (measured: ~75 ms of ~95 ms at
// 2048 x 32000 fp32 with 4 KiB pages). Asking for transparent huge pages before the first touch
// (Linux, THP in "madvise" or "always" mode) makes that ~512x fewer faults. Purely advisory.
void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t b = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t e = b + static_cast<uintptr_t>(t.nbytes());
  const uintptr_t ab = (b + kHuge - 1) & ~(kHuge - 1), ae = e & ~(kHuge - 1);
  if (t.nbytes() >= (size_t(8) << 20) && ae > ab)
    (void)madvise(reinterpret_cast<void*>(ab), ae - ab, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

int64_t grain_rows(int64_t V) { return std::max<int64_t>(1, at::internal::GRAIN_SIZE / V); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> fwd_cpu(const at::Tensor& logits, const at::Tensor& target_,
                                                       const at::Tensor& level_ids_, double label_smoothing,
                                                       bool smooth_levels, int64_t ignore_index,
                                                       bool /*inplace_backward*/,
                                                       const c10::optional<at::Tensor>& target_probs) {
  check_meta(logits, target_, level_ids_, label_smoothing);
  const auto target = target_.contiguous();
  const auto level_ids = level_ids_.to(at::kCPU).contiguous();
  const int64_t N = logits.size(0), V = logits.size(1), K = level_ids.numel();
  check_values(target, level_ids, V, ignore_index);
  const auto P = prep_target_probs(target_probs, logits, K, smooth_levels);
  check_probs_values(P);
  auto f32 = logits.options().dtype(at::kFloat);
  auto loss = at::empty({N}, f32), probs = at::empty({N, K}, f32), lse = at::empty({N}, f32);
  LevelCEParams p = make_params(logits, target, level_ids, label_smoothing, smooth_levels, ignore_index);
  p.loss = loss.data_ptr<float>();
  p.probs = probs.data_ptr<float>();
  p.lse = lse.data_ptr<float>();
  p.target_probs = P.defined() ? P.data_ptr<float>() : nullptr;
  const RowFn fn = pick_cpu_kernels().fwd;
  at::parallel_for(0, N, grain_rows(V), [&](int64_t b, int64_t e) { fn(p, b, e); });
  return {loss, probs, lse};
}

void bwd_cpu_into(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target_,
                  const at::Tensor& level_ids_, const at::Tensor& lse, double label_smoothing, bool smooth_levels,
                  int64_t ignore_index, const c10::optional<at::Tensor>& target_probs,
                  const at::Tensor& out) {
  check_meta(logits, target_, level_ids_, label_smoothing);
  check_lse(lse, logits);
  const auto g = prep_grad_loss(grad_loss, logits);
  const auto target = target_.contiguous();
  const auto level_ids = level_ids_.to(at::kCPU).contiguous();
  const int64_t N = logits.size(0), V = logits.size(1);
  check_values(target, level_ids, V, ignore_index);
  LevelCEParams p = make_params(logits, target, level_ids, label_smoothing, smooth_levels, ignore_index);
  const auto P = prep_target_probs(target_probs, logits, p.K, smooth_levels);  // values checked by the forward
  p.target_probs = P.defined() ? P.data_ptr<float>() : nullptr;
  p.grad_loss = g.data_ptr<float>();
  p.lse_in = lse.data_ptr<float>();
  p.grad = out.data_ptr();
  const RowFn fn = pick_cpu_kernels().bwd;
  at::parallel_for(0, N, grain_rows(V), [&](int64_t b, int64_t e) { fn(p, b, e); });
}

at::Tensor bwd_cpu(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
                   const at::Tensor& level_ids, const at::Tensor& lse, double label_smoothing, bool smooth_levels,
                   int64_t ignore_index, const c10::optional<at::Tensor>& target_probs) {
  auto out = at::empty_like(logits, at::MemoryFormat::Contiguous);
  advise_huge_pages(out);
  bwd_cpu_into(grad_loss, logits, target, level_ids, lse, label_smoothing, smooth_levels, ignore_index, target_probs, out);
  return out;
}

void bwd_inplace_cpu(const at::Tensor& grad_loss, at::Tensor& logits, const at::Tensor& target,
                     const at::Tensor& level_ids, const at::Tensor& lse, double label_smoothing, bool smooth_levels,
                     int64_t ignore_index, const c10::optional<at::Tensor>& target_probs) {
  bwd_cpu_into(grad_loss, logits, target, level_ids, lse, label_smoothing, smooth_levels, ignore_index, target_probs, logits);
}

// ----------------------------------------------------------------------------- CUDA
#ifdef WITH_CUDA

void check_cuda_launch(int err, const char* what) {
  TORCH_CHECK(err == 0, std::string("level_ce: CUDA ") + what + " kernel launch failed: " +
              cudaGetErrorString(static_cast<cudaError_t>(err)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fwd_cuda(const at::Tensor& logits, const at::Tensor& target_,
                                                        const at::Tensor& level_ids_, double label_smoothing,
                                                        bool smooth_levels, int64_t ignore_index,
                                                        bool /*inplace_backward*/,
                                                        const c10::optional<at::Tensor>& target_probs) {
  check_meta(logits, target_, level_ids_, label_smoothing);
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto target = target_.contiguous();
  const auto level_ids = level_ids_.to(logits.device()).contiguous();
  const int64_t N = logits.size(0), V = logits.size(1), K = level_ids.numel();
  check_values(target, level_ids, V, ignore_index);
  const auto P = prep_target_probs(target_probs, logits, K, smooth_levels);
  check_probs_values(P);
  auto f32 = logits.options().dtype(at::kFloat);
  auto loss = at::empty({N}, f32), probs = at::empty({N, K}, f32), lse = at::empty({N}, f32);
  if (N == 0) return {loss, probs, lse};
  LevelCEParams p = make_params(logits, target, level_ids, label_smoothing, smooth_levels, ignore_index);
  p.loss = loss.data_ptr<float>();
  p.probs = probs.data_ptr<float>();
  p.lse = lse.data_ptr<float>();
  p.target_probs = P.defined() ? P.data_ptr<float>() : nullptr;
  check_cuda_launch(level_ce_fwd_cuda(p, c10::cuda::getCurrentCUDAStream().stream()), "forward");
  return {loss, probs, lse};
}

// The backward trusts target/level_ids (checked by the forward that produced lse): no sync.
// The kernel still never indexes out of bounds (a bad target gives a NaN row).
void bwd_cuda_into(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target_,
                   const at::Tensor& level_ids_, const at::Tensor& lse, double label_smoothing, bool smooth_levels,
                   int64_t ignore_index, const c10::optional<at::Tensor>& target_probs,
                  const at::Tensor& out) {
  check_meta(logits, target_, level_ids_, label_smoothing);
  check_lse(lse, logits);
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto g = prep_grad_loss(grad_loss, logits);
  const auto target = target_.contiguous();
  const auto level_ids = level_ids_.to(logits.device()).contiguous();
  TORCH_CHECK(level_ids.numel() <= 8192, "level_ce: the CUDA backward supports at most 8192 level_ids, got " +
              S(level_ids.numel()));
  if (logits.size(0) == 0) return;
  LevelCEParams p = make_params(logits, target, level_ids, label_smoothing, smooth_levels, ignore_index);
  const auto P = prep_target_probs(target_probs, logits, p.K, smooth_levels);  // values checked by the forward
  p.target_probs = P.defined() ? P.data_ptr<float>() : nullptr;
  p.grad_loss = g.data_ptr<float>();
  p.lse_in = lse.data_ptr<float>();
  p.grad = out.data_ptr();
  check_cuda_launch(level_ce_bwd_cuda(p, c10::cuda::getCurrentCUDAStream().stream()), "backward");
}

at::Tensor bwd_cuda(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
                    const at::Tensor& level_ids, const at::Tensor& lse, double label_smoothing, bool smooth_levels,
                    int64_t ignore_index, const c10::optional<at::Tensor>& target_probs) {
  auto out = at::empty_like(logits, at::MemoryFormat::Contiguous);
  bwd_cuda_into(grad_loss, logits, target, level_ids, lse, label_smoothing, smooth_levels, ignore_index, target_probs, out);
  return out;
}

void bwd_inplace_cuda(const at::Tensor& grad_loss, at::Tensor& logits, const at::Tensor& target,
                      const at::Tensor& level_ids, const at::Tensor& lse, double label_smoothing, bool smooth_levels,
                      int64_t ignore_index, const c10::optional<at::Tensor>& target_probs) {
  bwd_cuda_into(grad_loss, logits, target, level_ids, lse, label_smoothing, smooth_levels, ignore_index, target_probs, logits);
}
#endif  // WITH_CUDA

}  // namespace
}  // namespace iqa_vlm

// ----------------------------------------------------------------------------- registration

TORCH_LIBRARY(iqa_vlm, m) {
  // iqa_vlm/level_ce.py registers the fake (meta) kernels and the autograd formula.
  m.set_python_module("iqa_vlm.level_ce");
  m.def(
      "level_ce_fwd(Tensor logits, Tensor target, Tensor level_ids, float label_smoothing, "
      "bool smooth_levels, int ignore_index, bool inplace_backward=False, Tensor? target_probs=None) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "level_ce_bwd(Tensor grad_loss, Tensor logits, Tensor target, Tensor level_ids, Tensor lse, "
      "float label_smoothing, bool smooth_levels, int ignore_index, Tensor? target_probs=None) -> Tensor");
  m.def(
      "level_ce_bwd_(Tensor grad_loss, Tensor(a!) logits, Tensor target, Tensor level_ids, Tensor lse, "
      "float label_smoothing, bool smooth_levels, int ignore_index, Tensor? target_probs=None) -> ()");
}

TORCH_LIBRARY_IMPL(iqa_vlm, CPU, m) {
  m.impl("level_ce_fwd", &iqa_vlm::fwd_cpu);
  m.impl("level_ce_bwd", &iqa_vlm::bwd_cpu);
  m.impl("level_ce_bwd_", &iqa_vlm::bwd_inplace_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(iqa_vlm, CUDA, m) {
  m.impl("level_ce_fwd", &iqa_vlm::fwd_cuda);
  m.impl("level_ce_bwd", &iqa_vlm::bwd_cuda);
  m.impl("level_ce_bwd_", &iqa_vlm::bwd_inplace_cuda);
}
#endif

// The Python module only carries a few introspection helpers; importing it registers the ops.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "iqa_vlm fused level cross-entropy op (torch.ops.iqa_vlm.*); use iqa_vlm.level_ce";
  m.attr("with_cuda") =
#ifdef WITH_CUDA
      true;
#else
      false;
#endif
  m.def("cpu_kernels", [] {
    std::vector<std::string> names;
    for (const auto& k : iqa_vlm::compiled_cpu_kernels()) names.push_back(k.name);
    return names;
  }, "CPU kernel builds compiled into this extension");
  m.def("cpu_kernel", [] { return std::string(iqa_vlm::pick_cpu_kernels().name); },
        "the CPU kernel build the ops use now");
  m.def("set_cpu_kernel", [](const std::string& name) { iqa_vlm::forced_cpu_kernel() = name; },
        "force a CPU kernel build by name ('' = automatic); for tests");
}
