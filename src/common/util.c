/*
 * util.c — clocks, files and growable buffers: what every part of candex,
 * the client library included, needs from libc.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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

int
cdx_cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *) a, y = *(const int64_t *) b;
	return x < y ? -1 : x > y;
}

int
cdx_cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}
