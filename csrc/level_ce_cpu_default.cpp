// Portable build of the CPU row kernels (generic at::vec, whatever the compiler's base flags allow).
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT
#define IQA_CPU_NS cpu_default
#include "level_ce_cpu.h"
