/*
 * util.c — clocks, files, vectors, buffers and process set-up.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/common.h"

uint64_t
cdx_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

uint64_t
cdx_wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}

void
cdx_iso8601_utc(char out[32], uint64_t wall_ms)
{
	time_t secs = (time_t) (wall_ms / 1000);
	struct tm tm;
	gmtime_r(&secs, &tm);
	/* strftime keeps the compiler from assuming a 10-digit year */
	size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out + n, 32 - n, ".%03uZ", (unsigned) (wall_ms % 1000));
}

double
cdx_rng_normal(cdx_rng *r)
{
	/* Box-Muller; one value per call keeps the stream simple to reason about. */
	double u1 = cdx_rng_uniform(r), u2 = cdx_rng_uniform(r);
	if (u1 < 1e-300)
		u1 = 1e-300;
	return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

int
cdx_write_all(int fd, const void *buf, size_t len, const char *path)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return cdx_error_errno(CDX_EIO, "write %s", path);
		}
		p += n;
		len -= (size_t) n;
	}
	return CDX_OK;
}

int
cdx_pwrite_all(int fd, const void *buf, size_t len, uint64_t off, const char *path)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = pwrite(fd, p, len, (off_t) off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return cdx_error_errno(CDX_EIO, "write %s", path);
		}
		p += n;
		off += (uint64_t) n;
		len -= (size_t) n;
	}
	return CDX_OK;
}

int
cdx_read_all(int fd, void *buf, size_t len, uint64_t off, const char *path)
{
	char *p = buf;
	while (len > 0) {
		ssize_t n = pread(fd, p, len, (off_t) off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return cdx_error_errno(CDX_EIO, "read %s", path);
		}
		if (n == 0)
			return cdx_error(CDX_ECORRUPT, "%s: unexpected end of file at byte %llu", path,
			    (unsigned long long) off);
		p += n;
		off += (uint64_t) n;
		len -= (size_t) n;
	}
	return CDX_OK;
}

int
cdx_fsync_path(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return cdx_error_errno(CDX_EIO, "open %s for fsync", path);
	int rc = CDX_OK;
	if (fsync(fd) != 0)
		rc = cdx_error_errno(CDX_EIO, "fsync %s", path);
	close(fd);
	return rc;
}

int
cdx_mkdir_p(const char *path, int mode)
{
	char tmp[PATH_MAX];
	if (snprintf(tmp, sizeof(tmp), "%s", path) >= (int) sizeof(tmp))
		return cdx_error(CDX_EINVAL, "path too long: %s", path);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(tmp, (mode_t) mode) != 0 && errno != EEXIST)
			return cdx_error_errno(CDX_EIO, "mkdir %s", tmp);
		*p = '/';
	}
	if (mkdir(tmp, (mode_t) mode) != 0 && errno != EEXIST)
		return cdx_error_errno(CDX_EIO, "mkdir %s", tmp);
	return CDX_OK;
}

int
cdx_rm_rf(const char *path)
{
	struct stat st;
	if (lstat(path, &st) != 0)
		return errno == ENOENT ? CDX_OK : cdx_error_errno(CDX_EIO, "stat %s", path);
	if (S_ISDIR(st.st_mode)) {
		DIR *d = opendir(path);
		if (d == NULL)
			return cdx_error_errno(CDX_EIO, "opendir %s", path);
		struct dirent *e;
		int rc = CDX_OK;
		while ((e = readdir(d)) != NULL) {
			if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
				continue;
			char child[PATH_MAX];
			snprintf(child, sizeof(child), "%s/%s", path, e->d_name);
			int r = cdx_rm_rf(child);
			if (r != CDX_OK)
				rc = r;
		}
		closedir(d);
		if (rmdir(path) != 0 && rc == CDX_OK)
			rc = cdx_error_errno(CDX_EIO, "rmdir %s", path);
		return rc;
	}
	if (unlink(path) != 0)
		return cdx_error_errno(CDX_EIO, "unlink %s", path);
	return CDX_OK;
}

int
cdx_pathf(char *out, size_t size, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(out, size, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t) n >= size)
		return cdx_error(CDX_EINVAL, "path too long: %.*s...", (int) cdx_utf8_cut(out, 64), out);
	return CDX_OK;
}

int
cdx_read_file(const char *path, char **data, size_t *len)
{
	*data = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return cdx_error_errno(errno == ENOENT ? CDX_ENOTFOUND : CDX_EIO, "open %s", path);
	struct stat st;
	if (fstat(fd, &st) != 0) {
		close(fd);
		return cdx_error_errno(CDX_EIO, "stat %s", path);
	}
	char *buf = malloc((size_t) st.st_size + 1);
	if (buf == NULL) {
		close(fd);
		return cdx_error(CDX_ENOMEM, "reading %s", path);
	}
	int rc = cdx_read_all(fd, buf, (size_t) st.st_size, 0, path);
	close(fd);
	if (rc != CDX_OK) {
		free(buf);
		return rc;
	}
	buf[st.st_size] = 0;
	*data = buf;
	if (len != NULL)
		*len = (size_t) st.st_size;
	return CDX_OK;
}

int
cdx_write_file_atomic(const char *path, const void *data, size_t len)
{
	char tmp[PATH_MAX], dir[PATH_MAX];
	if (snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int) getpid()) >= (int) sizeof(tmp))
		return cdx_error(CDX_EINVAL, "path too long: %s", path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return cdx_error_errno(CDX_EIO, "create %s", tmp);
	int rc = cdx_write_all(fd, data, len, tmp);
	if (rc == CDX_OK && fsync(fd) != 0)
		rc = cdx_error_errno(CDX_EIO, "fsync %s", tmp);
	if (close(fd) != 0 && rc == CDX_OK)
		rc = cdx_error_errno(CDX_EIO, "close %s", tmp);
	if (rc == CDX_OK && rename(tmp, path) != 0)
		rc = cdx_error_errno(CDX_EIO, "rename %s -> %s", tmp, path);
	if (rc != CDX_OK) {
		unlink(tmp);
		return rc;
	}
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash == NULL)
		snprintf(dir, sizeof(dir), ".");
	else if (slash == dir)
		slash[1] = 0;
	else
		*slash = 0;
	return cdx_fsync_path(dir);
}

long
cdx_find_nonfinite(const float *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!isfinite(v[i]))
			return (long) i;
	return -1;
}

void
cdx_normalize_rows(float *v, size_t n, size_t dim)
{
	for (size_t i = 0; i < n; i++) {
		float *row = v + i * dim;
		double s = 0;
		for (size_t j = 0; j < dim; j++)
			s += (double) row[j] * row[j];
		if (s <= 0)
			continue;
		float inv = (float) (1.0 / sqrt(s));
		for (size_t j = 0; j < dim; j++)
			row[j] *= inv;
	}
}

uint16_t
cdx_f32_to_f16(float f)
{
	uint32_t x;
	memcpy(&x, &f, 4);
	uint32_t sign = (x >> 16) & 0x8000u;
	int32_t exp = (int32_t) ((x >> 23) & 0xff) - 127 + 15;
	uint32_t mant = x & 0x7fffffu;
	if (((x >> 23) & 0xff) == 0xff) /* inf / nan */
		return (uint16_t) (sign | 0x7c00u | (mant ? 0x200u : 0));
	if (exp >= 31)
		return (uint16_t) (sign | 0x7c00u); /* overflow -> inf */
	if (exp <= 0) {
		if (exp < -10)
			return (uint16_t) sign; /* underflow -> 0 */
		mant |= 0x800000u;
		uint32_t shift = (uint32_t) (14 - exp);
		uint32_t half = mant >> shift;
		uint32_t rem = mant & ((1u << shift) - 1);
		uint32_t mid = 1u << (shift - 1);
		if (rem > mid || (rem == mid && (half & 1)))
			half++;
		return (uint16_t) (sign | half);
	}
	uint32_t half = sign | ((uint32_t) exp << 10) | (mant >> 13);
	uint32_t rem = mant & 0x1fffu;
	if (rem > 0x1000u || (rem == 0x1000u && (half & 1)))
		half++; /* may carry into the exponent, which is the right result */
	return (uint16_t) half;
}

float
cdx_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t) (h & 0x8000u) << 16;
	uint32_t exp = (h >> 10) & 0x1f;
	uint32_t mant = h & 0x3ffu;
	uint32_t x;
	if (exp == 0) {
		if (mant == 0) {
			x = sign;
		} else {
			int e = -1;
			do {
				e++;
				mant <<= 1;
			} while ((mant & 0x400u) == 0);
			x = sign | ((uint32_t) (127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
		}
	} else if (exp == 31) {
		x = sign | 0x7f800000u | (mant << 13);
	} else {
		x = sign | ((exp - 15 + 127) << 23) | (mant << 13);
	}
	float f;
	memcpy(&f, &x, 4);
	return f;
}

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

int
cdx_buf_reserve(cdx_buf *b, size_t extra)
{
	if (b->len + extra <= b->cap)
		return CDX_OK;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + extra)
		cap *= 2;
	char *p = realloc(b->data, cap);
	if (p == NULL)
		return cdx_error(CDX_ENOMEM, "buffer of %zu bytes", cap);
	b->data = p;
	b->cap = cap;
	return CDX_OK;
}

int
cdx_buf_append(cdx_buf *b, const void *p, size_t n)
{
	int rc = cdx_buf_reserve(b, n);
	if (rc != CDX_OK)
		return rc;
	if (n > 0)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	return CDX_OK;
}

int
cdx_buf_printf(cdx_buf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return cdx_error(CDX_EINVAL, "format error");
	int rc = cdx_buf_reserve(b, (size_t) n + 1);
	if (rc != CDX_OK)
		return rc;
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, (size_t) n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t) n;
	return CDX_OK;
}

void
cdx_buf_fini(cdx_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}
