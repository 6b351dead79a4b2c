/*
 * process.c — process set-up: the OpenBLAS kernel choice, its thread pool,
 * and the CPUs this process may use.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"

/* The OpenBLAS kernel for this CPU, by the features the kernels need. */
static const char *
openblas_coretype(void)
{
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
	    && __builtin_cpu_supports("avx512vl"))
		return "SkylakeX";
	if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
		return "Haswell";
	if (__builtin_cpu_supports("avx"))
		return "Sandybridge";
	return NULL;
}

void
cdx_process_init(int argc, char **argv)
{
	(void) argc;
	if (getenv("OPENBLAS_CORETYPE") != NULL)
		return;
	const char *core = openblas_coretype();
	if (core == NULL)
		return;
	/* OpenBLAS read the variable in its constructor, before main(): set it
	 * and start this program again so that it takes effect. */
	setenv("OPENBLAS_CORETYPE", core, 1);
	execv("/proc/self/exe", argv);
	/* exec failed: carry on with the slower kernels rather than fail. */
	cdx_warn("BLAS-CORETYPE", "could not re-exec with OPENBLAS_CORETYPE=%s: %s", core, strerror(errno));
}

void
cdx_blas_set_threads(int n)
{
	void (*set)(int) = (void (*)(int)) dlsym(RTLD_DEFAULT, "openblas_set_num_threads");
	if (set != NULL)
		set(n);
}

int
cdx_cpu_count(void)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
		return CPU_COUNT(&set);
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (int) n : 1;
}
