/*
 * benchlib.c — see benchlib.h.
 */
#include "benchlib.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "candex/client.h"
#include "common/common.h"

void
bench_lat_add(struct bench_lat *l, uint64_t us)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 4096;
		l->v = realloc(l->v, l->cap * sizeof(*l->v));
		if (l->v == NULL)
			abort();
	}
	l->v[l->n++] = us;
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
	return x < y ? -1 : x > y;
}

void
bench_lat_sort(struct bench_lat *l)
{
	if (l->n > 0)
		qsort(l->v, l->n, sizeof(*l->v), cmp_u64);
}

double
bench_lat_pct(const struct bench_lat *l, double p)
{
	if (l->n == 0)
		return 0;
	size_t i = (size_t) (p * (double) (l->n - 1) + 0.5);
	return (double) l->v[i] / 1000.0;
}

void
bench_lat_fini(struct bench_lat *l)
{
	free(l->v);
	memset(l, 0, sizeof(*l));
}

void
bench_sleep_until(uint64_t t_us)
{
	uint64_t now = cdx_now_us();
	if (t_us <= now)
		return;
	struct timespec ts = { .tv_sec = (time_t) ((t_us - now) / 1000000),
		.tv_nsec = (long) ((t_us - now) % 1000000) * 1000 };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

double
bench_process_cpu_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double) ts.tv_sec * 1e6 + (double) ts.tv_nsec / 1e3;
}

static size_t
read_small(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return 0;
	size_t n = fread(buf, 1, len - 1, f);
	fclose(f);
	buf[n] = '\0';
	return n;
}

double
bench_child_cpu_us(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
	if (read_small(path, buf, sizeof(buf)) == 0)
		return 0;
	/* fields 14 and 15 (utime, stime), counted after the ")" of the name */
	const char *p = strrchr(buf, ')');
	unsigned long ut = 0, st = 0;
	if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
		return 0;
	return (double) (ut + st) * 1e6 / (double) sysconf(_SC_CLK_TCK);
}

static uint64_t
status_field(const char *path, const char *field)
{
	char buf[8192];
	if (read_small(path, buf, sizeof(buf)) == 0)
		return 0;
	const char *p = strstr(buf, field);
	return p != NULL ? strtoull(p + strlen(field), NULL, 10) : 0;
}

uint64_t
bench_self_rss_bytes(void)
{
	return status_field("/proc/self/status", "VmRSS:") * 1024;
}

uint64_t
bench_child_rss_bytes(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/status", (int) pid);
	return status_field(path, "VmRSS:") * 1024;
}

uint64_t
bench_child_ctxsw(pid_t pid)
{
	char dir[64];
	snprintf(dir, sizeof(dir), "/proc/%d/task", (int) pid);
	DIR *d = opendir(dir);
	if (d == NULL)
		return 0;
	uint64_t n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		char path[400];
		snprintf(path, sizeof(path), "%s/%.256s/status", dir, e->d_name);
		n += status_field(path, "voluntary_ctxt_switches:")
		    + status_field(path, "nonvoluntary_ctxt_switches:");
	}
	closedir(d);
	return n;
}

int
bench_free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	if (fd < 0)
		return 0;
	int port = bind(fd, (struct sockaddr *) &a, sizeof(a)) == 0
	        && getsockname(fd, (struct sockaddr *) &a, &len) == 0
	    ? ntohs(a.sin_port)
	    : 0;
	close(fd);
	return port;
}

int
bench_parse_cpus(const char *arg, cpu_set_t *set)
{
	CPU_ZERO(set);
	const char *p = arg;
	while (*p) {
		char *e;
		long a = strtol(p, &e, 10), z = a;
		if (e == p || a < 0 || a >= CPU_SETSIZE)
			return -1;
		if (*e == '-') {
			p = e + 1;
			z = strtol(p, &e, 10);
			if (e == p || z < a || z >= CPU_SETSIZE)
				return -1;
		}
		for (long c = a; c <= z; c++)
			CPU_SET((int) c, set);
		p = *e == ',' ? e + 1 : e;
		if (*e != ',' && *e != '\0')
			return -1;
	}
	return CPU_COUNT(set) > 0 ? 0 : -1;
}

int
bench_candex_path(char *out, size_t len)
{
	ssize_t n = readlink("/proc/self/exe", out, len - 1);
	if (n <= 0)
		return -1;
	out[n] = '\0';
	char *slash = strrchr(out, '/');
	if (slash == NULL || (size_t) (slash - out) + 8 > len)
		return -1;
	strcpy(slash + 1, "candex");
	return 0;
}

pid_t
bench_serve_start(const struct bench_serve *o)
{
	char threads[16], queue[16], maxk[16], maxb[16];
	snprintf(threads, sizeof(threads), "%u", o->threads);
	snprintf(queue, sizeof(queue), "%u", o->queue_max);
	snprintf(maxk, sizeof(maxk), "%u", o->max_k);
	snprintf(maxb, sizeof(maxb), "%u", o->max_batch);
	const char *argv[48];
	int a = 0;
	argv[a++] = o->candex;
	argv[a++] = "serve";
	argv[a++] = "--index-dir";
	argv[a++] = o->index_dir;
	for (unsigned i = 0; i < o->nurls && i < 4; i++) {
		argv[a++] = "--listen";
		argv[a++] = o->urls[i];
	}
	argv[a++] = "--threads";
	argv[a++] = threads;
	argv[a++] = "--queue-max";
	argv[a++] = queue;
	argv[a++] = "--max-k";
	argv[a++] = maxk;
	if (o->max_batch > 0) {
		argv[a++] = "--max-batch";
		argv[a++] = maxb;
	}
	argv[a++] = "--log-level";
	argv[a++] = "warn";
	for (int i = 0; o->extra != NULL && o->extra[i] != NULL && a < 47; i++)
		argv[a++] = o->extra[i];
	argv[a] = NULL;
	pid_t pid = fork();
	if (pid == 0) {
		if (o->cpus != NULL)
			sched_setaffinity(0, sizeof(cpu_set_t), o->cpus);
		execv(o->candex, (char *const *) argv);
		fprintf(stderr, "bench: cannot run %s: %s\n", o->candex, strerror(errno));
		_exit(127);
	}
	if (pid < 0)
		return -1;
	struct cdx_client_options co = { .timeout_ms = 1000 };
	struct cdx_client_error err;
	for (int i = 0; i < 300; i++) {
		cdx_client *c;
		if (cdx_client_open(&c, o->urls[0], &co, &err) == CDX_OK) {
			int rc = cdx_client_health(c, &err);
			cdx_client_close(c);
			if (rc == CDX_OK)
				return pid;
		}
		if (waitpid(pid, NULL, WNOHANG) == pid)
			return -1;
		usleep(100000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -1;
}

void
bench_serve_stop(pid_t pid)
{
	if (pid <= 0)
		return;
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
}
