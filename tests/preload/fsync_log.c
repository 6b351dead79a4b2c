/*
 * fsync_log.c — an LD_PRELOAD library for tests: appends one line per
 * fsync, fdatasync, rename and symlink call of the process to the file named
 * by $CANDEX_FSYNC_LOG ("fsync PATH", "rename OLD NEW", "symlink TARGET
 * PATH"), then does the call. build_test checks with it that a version is
 * durable before it becomes visible: every file and directory fsynced
 * before the rename that publishes it, CURRENT swapped last.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void
log_line(const char *what, const char *a, const char *b)
{
	const char *path = getenv("CANDEX_FSYNC_LOG");
	if (path == NULL)
		return;
	char line[3 * PATH_MAX];
	int n = snprintf(line, sizeof(line), "%s %s%s%s\n", what, a, b ? " " : "", b ? b : "");
	if (n <= 0 || (size_t) n >= sizeof(line))
		return;
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	ssize_t w = write(fd, line, (size_t) n); /* O_APPEND: one line per write, whole */
	(void) w;
	close(fd);
}

static void
log_fd(const char *what, int fd)
{
	char link[64], path[PATH_MAX];
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, path, sizeof(path) - 1);
	path[n > 0 ? n : 0] = 0;
	log_line(what, path, NULL);
}

int
fsync(int fd)
{
	static int (*real)(int);
	if (real == NULL)
		real = (int (*)(int)) dlsym(RTLD_NEXT, "fsync");
	int rc = real(fd);
	if (rc == 0)
		log_fd("fsync", fd);
	return rc;
}

int
fdatasync(int fd)
{
	static int (*real)(int);
	if (real == NULL)
		real = (int (*)(int)) dlsym(RTLD_NEXT, "fdatasync");
	int rc = real(fd);
	if (rc == 0)
		log_fd("fsync", fd);
	return rc;
}

int
rename(const char *from, const char *to)
{
	static int (*real)(const char *, const char *);
	if (real == NULL)
		real = (int (*)(const char *, const char *)) dlsym(RTLD_NEXT, "rename");
	int rc = real(from, to);
	if (rc == 0)
		log_line("rename", from, to);
	return rc;
}

int
symlink(const char *target, const char *path)
{
	static int (*real)(const char *, const char *);
	if (real == NULL)
		real = (int (*)(const char *, const char *)) dlsym(RTLD_NEXT, "symlink");
	int rc = real(target, path);
	if (rc == 0)
		log_line("symlink", target, path);
	return rc;
}
