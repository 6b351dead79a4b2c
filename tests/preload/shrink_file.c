/*
 * shrink_file.c — an LD_PRELOAD library for tests: the first time the
 * process fstat()s the file named by $CANDEX_SHRINK_PATH, the file is
 * truncated to $CANDEX_SHRINK_TO bytes right after the stat, which still
 * reports the old size. The reader then meets a file that shrank between
 * sizing it and reading it, deterministically, as when a shard is
 * truncated while a server loads it (a mapped reader dies of SIGBUS there).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static atomic_int done;

static void
maybe_shrink(int fd)
{
	const char *target = getenv("CANDEX_SHRINK_PATH"), *to = getenv("CANDEX_SHRINK_TO");
	if (target == NULL || to == NULL || atomic_load(&done))
		return;
	char link[64], path[PATH_MAX];
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, path, sizeof(path) - 1);
	if (n <= 0)
		return;
	path[n] = '\0';
	if (strcmp(path, target) != 0 || atomic_exchange(&done, 1))
		return;
	if (truncate(path, atoll(to)) != 0)
		perror("shrink_file: truncate");
}

int
fstat(int fd, struct stat *st)
{
	static int (*real)(int, struct stat *);
	if (real == NULL)
		real = (int (*)(int, struct stat *)) dlsym(RTLD_NEXT, "fstat");
	int rv = real(fd, st);
	if (rv == 0)
		maybe_shrink(fd);
	return rv;
}

int
fstat64(int fd, struct stat64 *st)
{
	static int (*real)(int, struct stat64 *);
	if (real == NULL)
		real = (int (*)(int, struct stat64 *)) dlsym(RTLD_NEXT, "fstat64");
	int rv = real(fd, st);
	if (rv == 0)
		maybe_shrink(fd);
	return rv;
}
