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
	int again = 0;
	const char *core = openblas_coretype();
	if (getenv("OPENBLAS_CORETYPE") == NULL && core != NULL) {
		setenv("OPENBLAS_CORETYPE", core, 1);
		again = 1;
	}
	/* OpenMP workers must sleep, not spin, while they wait: Faiss
	 * alternates OpenMP regions with serial code and single-threaded
	 * sgemm, and spinning workers steal the cores those need (and, on a
	 * shared machine, everyone else's). A 60k x 784 self-tuning build: 26.4 s
	 * of CPU spinning, 14.1 s passive (2026-12-04). */
	if (getenv("OMP_WAIT_POLICY") == NULL) {
		setenv("OMP_WAIT_POLICY", "passive", 1);
		again = 1;
	}
	if (!again)
		return;
	/* OpenBLAS and libgomp read these in their constructors, before
	 * main(): start this program again so that they take effect. */
	execv("/proc/self/exe", argv);
	/* exec failed: carry on (slower kernels, spinning waits) rather than fail. */
	cdx_warn("PROC-REEXEC", "could not re-exec with OPENBLAS_CORETYPE and OMP_WAIT_POLICY set: %s",
	    strerror(errno));
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
