// AVX2+FMA build of the CPU row kernels. The glue calls it only on CPUs that have AVX2 and FMA
// (at::get_cpu_capability(), which also honours ATEN_CPU_CAPABILITY). setup.py compiles this file
// only for x86-64; the target pragma comes before every include but the standard library's.
#if defined(__x86_64__) || defined(_M_X64)
// The standard headers come first, outside the target pragma: GCC 13's libstdc++ declares std::allocator's
// members always_inline, and defined under the pragma they fail to inline ("target specific option mismatch").
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <utility>
#include <vector>
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt"))), apply_to = function)
#elif defined(__GNUC__)
// GCC 12's AVX-512 intrinsic headers trip -W(maybe-)uninitialized on _mm512_undefined_*()
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#endif
// g++ does not define the ISA macros for a target pragma (gcc does); sleef.h and ATen need them.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define IQA_CPU_NS cpu_avx2
#include "level_ce_cpu.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
