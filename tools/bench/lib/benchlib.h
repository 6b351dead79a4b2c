/*
 * benchlib.h — what the benchmarks in tools/bench share: latency samples,
 * CPU time and memory of this process and of a child, a `candex serve`
 * child, CPU lists. Benchmarks only; nothing in src/ uses it.
 */
#ifndef CANDEX_BENCHLIB_H
#define CANDEX_BENCHLIB_H

#define _GNU_SOURCE
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Latency samples in microseconds (grown with realloc; abort on OOM). */
struct bench_lat {
	uint64_t *v;
	size_t n, cap;
};
void bench_lat_add(struct bench_lat *l, uint64_t us);
void bench_lat_sort(struct bench_lat *l);
/* bench_lat_pct: the p quantile (0..1) of sorted samples, in milliseconds. */
double bench_lat_pct(const struct bench_lat *l, double p);
void bench_lat_fini(struct bench_lat *l);

/* bench_sleep_until sleeps until cdx_now_us() reaches t_us. */
void bench_sleep_until(uint64_t t_us);

/* CPU time (user + system) of this process, and of process pid so far. */
double bench_process_cpu_us(void);
double bench_child_cpu_us(pid_t pid);
/* Resident memory (VmRSS) of this process, and of process pid; 0 if unknown. */
uint64_t bench_self_rss_bytes(void);
uint64_t bench_child_rss_bytes(pid_t pid);
/* Voluntary + involuntary context switches of every thread of pid so far. */
uint64_t bench_child_ctxsw(pid_t pid);

/* bench_free_port: a free TCP port on loopback (0 on failure). */
int bench_free_port(void);

/* bench_parse_cpus reads a CPU list like "0", "1-3" or "0,2". */
int bench_parse_cpus(const char *arg, cpu_set_t *set);

/* bench_candex_path writes the candex binary next to this program's
 * executable (the build directory) into out. */
int bench_candex_path(char *out, size_t len);

/* A `candex serve` child. */
struct bench_serve {
	const char *candex;    /* the binary */
	const char *index_dir; /* --index-dir */
	const char *urls[4];   /* --listen each; urls[0] is health-checked */
	unsigned nurls;
	unsigned threads;         /* --threads */
	unsigned queue_max;       /* --queue-max */
	unsigned max_k;           /* --max-k */
	unsigned max_batch;       /* --max-batch, 0 = the server's default */
	const cpu_set_t *cpus;    /* pin the server to these CPUs, or NULL */
	const char *const *extra; /* more arguments, NULL-terminated, or NULL */
};

/* bench_serve_start starts the server and waits until it answers a health
 * check on urls[0] (up to 30 s). Returns its pid, or -1. */
pid_t bench_serve_start(const struct bench_serve *o);
/* bench_serve_stop sends SIGTERM and reaps it. */
void bench_serve_stop(pid_t pid);

#endif
