/*
 * signals.c — SIGHUP/SIGTERM/SIGINT for the long-running commands (serve,
 * route) through a self-pipe: the handler only writes the signal number,
 * and the main thread reads it.
 *
 * signalfd would need the signals blocked in every thread, and OpenBLAS
 * starts its pool threads before main() runs, with nothing blocked; a
 * handler works on whichever thread the kernel picks.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"
#include "common/signals.h"

static int sig_pipe[2] = { -1, -1 };

static void
on_signal(int signo)
{
	int saved = errno;
	unsigned char b = (unsigned char) signo;
	ssize_t ignored = write(sig_pipe[1], &b, 1);
	(void) ignored;
	errno = saved;
}

static void
blocked_set(sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGHUP);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGINT);
}

int
cdx_signals_open(sigset_t *saved)
{
	struct sigaction sa;
	if (pipe2(sig_pipe, O_CLOEXEC) != 0)
		return cdx_error_errno(CDX_EIO, "signal pipe");
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGHUP, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	/* a file size limit makes writes fail (EFBIG), as a full disk does: the
	 * impression log then drops records; the process must not die of it */
	signal(SIGXFSZ, SIG_IGN);
	/* threads started from now on inherit a mask that blocks these, so they
	 * land on the main thread (or on a thread that existed before) */
	sigset_t set;
	blocked_set(&set);
	pthread_sigmask(SIG_BLOCK, &set, saved);
	return CDX_OK;
}

void
cdx_signals_started(const sigset_t *saved)
{
	pthread_sigmask(SIG_SETMASK, saved, NULL);
}

int
cdx_signals_wait(void)
{
	for (;;) {
		unsigned char signo;
		/* Wake up now and then: sanitizer runtimes hold a signal back until
		 * the thread next enters the runtime, and a plain blocking read
		 * would never return to let them deliver it. */
		struct pollfd pfd = { .fd = sig_pipe[0], .events = POLLIN };
		if (poll(&pfd, 1, 200) <= 0)
			continue;
		ssize_t n = read(sig_pipe[0], &signo, 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n != 1) {
			cdx_error(CDX_EIO, "signal pipe: %s", n < 0 ? strerror(errno) : "closed");
			return -1;
		}
		return signo;
	}
}

void
cdx_signals_close(void)
{
	signal(SIGHUP, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	close(sig_pipe[0]);
	close(sig_pipe[1]);
	sig_pipe[0] = sig_pipe[1] = -1;
}
