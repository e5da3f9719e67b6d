/* cpu_arm.c - which AArch64 SIMD extensions this CPU runs.
 *
 * Compiled on every host (generic flags, no SIMD of its own); it only does
 * work on AArch64.  Linux: the kernel publishes the features it enabled in
 * the auxiliary vector, so getauxval(AT_HWCAP) is the authoritative answer
 * (reading ID registers directly would need the kernel's trap-and-emulate
 * and says nothing about what the OS allows).  macOS: every Apple arm64
 * chip has NEON; dotprod is reported by sysctl. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "backends/cpu/kernels.h"

#if defined(__aarch64__) && defined(__linux__)

#include <sys/auxv.h>

/* Bit numbers from the kernel ABI (asm/hwcap.h), spelled out for libcs
 * whose headers predate dotprod (Linux 4.15). */
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1UL << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif

int cm_arm_features(int *neon, int *dotprod)
{
    unsigned long hw = getauxval(AT_HWCAP);
    *neon = (hw & HWCAP_ASIMD) != 0;
    *dotprod = *neon && (hw & HWCAP_ASIMDDP) != 0;
    return 0;
}

#elif defined(__aarch64__) && defined(__APPLE__)

#include <sys/sysctl.h>

int cm_arm_features(int *neon, int *dotprod)
{
    int v = 0;
    size_t len = sizeof v;
    *neon = 1;
    *dotprod = sysctlbyname("hw.optional.arm.FEAT_DotProd", &v, &len, NULL, 0) == 0 && v;
    return 0;
}

#elif defined(__aarch64__)

/* NEON is mandatory on AArch64; without an OS query, assume no dotprod. */
int cm_arm_features(int *neon, int *dotprod)
{
    *neon = 1;
    *dotprod = 0;
    return 0;
}

#else /* not AArch64 */

int cm_arm_features(int *neon, int *dotprod)
{
    *neon = 0;
    *dotprod = 0;
    return -1;
}

#endif
