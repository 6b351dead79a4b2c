/*
 * progress.c — progress output and interrupt handling for builds.
 *
 * Interrupts: the SIGINT/SIGTERM handler only writes the signal number to
 * a pipe; a dedicated thread reads it, removes the registered staging
 * paths and exits. Nothing but write(2) runs in signal context, and the
 * main thread, which may be deep inside a Faiss call that cannot be
 * cancelled (training can take minutes), is never waited for. The publish critical section (rename + CURRENT
 * swap) holds a mutex the handler also takes, so an interrupt either happens before the new version is
 * visible (staging removed, old CURRENT kept) or after it is complete (nothing removed).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "builder/build.h"

#define MAX_CLEANUP 8

static pthread_mutex_t cleanup_mu = PTHREAD_MUTEX_INITIALIZER;
static char *cleanup_paths[MAX_CLEANUP];
static int published;

void
cdx_build_cleanup_add(const char *path)
{
	pthread_mutex_lock(&cleanup_mu);
	for (int i = 0; i < MAX_CLEANUP; i++) {
		if (cleanup_paths[i] == NULL) {
			cleanup_paths[i] = strdup(path);
			break;
		}
	}
	pthread_mutex_unlock(&cleanup_mu);
}

void
cdx_build_cleanup_remove(const char *path)
{
	pthread_mutex_lock(&cleanup_mu);
	for (int i = 0; i < MAX_CLEANUP; i++) {
		if (cleanup_paths[i] != NULL && strcmp(cleanup_paths[i], path) == 0) {
			free(cleanup_paths[i]);
			cleanup_paths[i] = NULL;
		}
	}
	pthread_mutex_unlock(&cleanup_mu);
}

void
cdx_build_publish_lock(void)
{
	pthread_mutex_lock(&cleanup_mu);
}

void
cdx_build_publish_unlock(void)
{
	pthread_mutex_unlock(&cleanup_mu);
}

/* Called with the publish lock held. */
void
cdx_build_mark_published(void)
{
	published = 1;
}

static int sig_pipe[2] = { -1, -1 };

/* The handler only forwards the signal number to the cleanup thread:
 * write(2) is async-signal-safe, removing directories is not. */
static void
on_signal(int sig)
{
	int saved = errno;
	unsigned char b = (unsigned char) sig;
	ssize_t ignored = write(sig_pipe[1], &b, 1);
	(void) ignored;
	errno = saved;
}

static void *
signal_thread(void *arg)
{
	(void) arg;
	unsigned char b;
	ssize_t n;
	do
		n = read(sig_pipe[0], &b, 1);
	while (n < 0 && errno == EINTR);
	if (n != 1)
		return NULL;
	int sig = b;
	pthread_mutex_lock(&cleanup_mu);
	if (!published) {
		for (int i = 0; i < MAX_CLEANUP; i++)
			if (cleanup_paths[i] != NULL)
				cdx_rm_rf(cleanup_paths[i]);
		cdx_err("BLD-INTERRUPT", "%s: build interrupted; staging removed, nothing published",
		    strsignal(sig));
	} else {
		cdx_err("BLD-INTERRUPT", "%s after the new version was published", strsignal(sig));
	}
	_exit(128 + sig);
}

int
cdx_build_signals_start(void)
{
	if (pipe2(sig_pipe, O_CLOEXEC) != 0)
		return cdx_error_errno(CDX_EINTERNAL, "pipe");
	pthread_t t;
	if (pthread_create(&t, NULL, signal_thread, NULL) != 0)
		return cdx_error(CDX_EINTERNAL, "cannot start the signal thread");
	pthread_detach(t);
	/* A handler rather than sigwait(): libraries (OpenBLAS) start threads
	 * before main(), and a blocked mask cannot be imposed on them. */
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0)
		return cdx_error_errno(CDX_EINTERNAL, "sigaction");
	/* A file size limit (RLIMIT_FSIZE, e.g. a shell's ulimit -f) would
	 * otherwise kill the build with SIGXFSZ and leave its staging behind:
	 * ignored, the write fails with EFBIG and is handled like a full disk. */
	signal(SIGXFSZ, SIG_IGN);
	return CDX_OK;
}

/* --- progress ------------------------------------------------------------ */

#define TTY_REDRAW_US 200000
#define LOG_EVERY_US  5000000

static void
fmt_count(char *out, size_t cap, double v)
{
	if (v >= 1e9)
		snprintf(out, cap, "%.2fG", v / 1e9);
	else if (v >= 1e6)
		snprintf(out, cap, "%.2fM", v / 1e6);
	else if (v >= 1e4)
		snprintf(out, cap, "%.1fk", v / 1e3);
	else
		snprintf(out, cap, "%.0f", v);
}

static void
fmt_dur(char *out, size_t cap, double s)
{
	if (s < 0 || s > 360000)
		snprintf(out, cap, "--:--");
	else if (s >= 3600)
		snprintf(out, cap, "%d:%02d:%02d", (int) s / 3600, ((int) s / 60) % 60, (int) s % 60);
	else
		snprintf(out, cap, "%d:%02d", (int) s / 60, (int) s % 60);
}

void
cdx_progress_begin(struct cdx_progress *pr, const char *what, uint64_t total, int quiet)
{
	memset(pr, 0, sizeof(*pr));
	snprintf(pr->what, sizeof(pr->what), "%s", what);
	pr->total = total;
	pr->quiet = quiet;
	pr->tty = isatty(STDERR_FILENO);
	pr->t0 = pr->last = cdx_now_us();
}

static void
progress_draw(struct cdx_progress *pr, uint64_t now, int final)
{
	double el = (double) (now - pr->t0) / 1e6;
	double rate = el > 0 ? (double) pr->done / el : 0;
	double eta = rate > 0 ? (double) (pr->total - pr->done) / rate : -1;
	double frac = pr->total ? (double) pr->done / (double) pr->total : 1;
	char done[16], total[16], rs[16], es[16];
	fmt_count(done, sizeof(done), (double) pr->done);
	fmt_count(total, sizeof(total), (double) pr->total);
	fmt_count(rs, sizeof(rs), rate);
	fmt_dur(es, sizeof(es), final ? el : eta);
	if (pr->tty) {
		char bar[31];
		int fill = (int) (frac * 30);
		for (int i = 0; i < 30; i++)
			bar[i] = i < fill ? '#' : '.';
		bar[30] = 0;
		fprintf(stderr, "\r%-14s [%s] %3.0f%% %s/%s rows  %s rows/s  %s %s   ", pr->what, bar,
		    frac * 100, done, total, rs, final ? "took" : "ETA", es);
		if (final)
			fputc('\n', stderr);
		fflush(stderr);
		pr->drawn = 1;
	} else {
		cdx_info("BLD-PROGRESS", "%s: %s/%s rows (%.0f%%), %s rows/s, %s %s", pr->what, done, total,
		    frac * 100, rs, final ? "took" : "ETA", es);
	}
}

void
cdx_progress_update(struct cdx_progress *pr, uint64_t done)
{
	pr->done = done;
	if (pr->quiet)
		return;
	uint64_t now = cdx_now_us();
	if (now - pr->last < (pr->tty ? TTY_REDRAW_US : LOG_EVERY_US))
		return;
	pr->last = now;
	progress_draw(pr, now, 0);
}

void
cdx_progress_end(struct cdx_progress *pr)
{
	if (pr->quiet)
		return;
	/* plain logs: only long phases get a closing line */
	uint64_t now = cdx_now_us();
	if (pr->tty || now - pr->t0 >= LOG_EVERY_US)
		progress_draw(pr, now, 1);
}
