/*
 * progress_test.c — cdx_progress: on a terminal a bar redrawn in place with
 * rate and ETA; elsewhere plain log lines at most every 5 s (and a closing
 * one for long phases); nothing when quiet. Elapsed time is simulated by
 * moving the start and last-draw times back.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <pty.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "builder/build.h"

/* capture: stderr goes to fd until release() gives it back. */
static int saved_stderr = -1;

static void
capture(int fd)
{
	fflush(stderr);
	saved_stderr = dup(2);
	assert_true(saved_stderr >= 0);
	assert_int_equal(dup2(fd, 2), 2);
}

static void
release(void)
{
	fflush(stderr);
	assert_int_equal(dup2(saved_stderr, 2), 2);
	close(saved_stderr);
	saved_stderr = -1;
}

/* drain reads what is available on fd (non-blocking) into a string. */
static char *
drain(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	cdx_buf b = { 0 };
	char chunk[4096];
	ssize_t n;
	while ((n = read(fd, chunk, sizeof(chunk))) > 0)
		cdx_buf_append(&b, chunk, (size_t) n);
	cdx_buf_append(&b, "", 1);
	fcntl(fd, F_SETFL, fl);
	return b.data;
}

/* age pretends the phase started secs ago and was last drawn then too. */
static void
age(struct cdx_progress *pr, double secs)
{
	pr->t0 -= (uint64_t) (secs * 1e6);
	pr->last -= (uint64_t) (secs * 1e6);
}

static void
test_plain_log_lines(void **state)
{
	(void) state;
	int fds[2];
	assert_int_equal(pipe(fds), 0);
	cdx_log_set_level(CDX_LOG_INFO);
	capture(fds[1]);
	struct cdx_progress pr;
	cdx_progress_begin(&pr, "encode", 1000000, 0);
	int tty = pr.tty;
	cdx_progress_update(&pr, 1000); /* too soon: nothing */
	char *soon = NULL;
	fflush(stderr);
	soon = drain(fds[0]);
	age(&pr, 6);
	cdx_progress_update(&pr, 500000);
	cdx_progress_update(&pr, 500001); /* again too soon */
	age(&pr, 6);
	cdx_progress_end(&pr);
	release();
	close(fds[1]);
	char *out = drain(fds[0]);
	close(fds[0]);
	assert_false(tty);
	assert_string_equal(soon, "");
	/* one line for the update after 6 s, one closing line, each a log line */
	assert_non_null(strstr(out, "INFO BLD-PROGRESS: encode: 500.0k/1.00M rows (50%), "));
	assert_non_null(strstr(out, "rows/s, ETA 0:"));
	assert_non_null(strstr(out, "took 0:12"));
	int lines = 0;
	for (const char *p = out; *p; p++)
		lines += *p == '\n';
	assert_int_equal(lines, 2);
	assert_null(strchr(out, '\r'));
	assert_null(strchr(out, '#'));
	free(soon);
	free(out);

	/* a short phase logs nothing at its end; quiet logs nothing at all */
	assert_int_equal(pipe(fds), 0);
	capture(fds[1]);
	cdx_progress_begin(&pr, "short", 10, 0);
	cdx_progress_update(&pr, 10);
	cdx_progress_end(&pr);
	cdx_progress_begin(&pr, "quiet", 10, 1);
	age(&pr, 60);
	cdx_progress_update(&pr, 5);
	cdx_progress_end(&pr);
	release();
	close(fds[1]);
	out = drain(fds[0]);
	close(fds[0]);
	assert_string_equal(out, "");
	free(out);
}

static void
test_terminal_bar(void **state)
{
	(void) state;
	int master, slave;
	assert_int_equal(openpty(&master, &slave, NULL, NULL, NULL), 0);
	capture(slave);
	struct cdx_progress pr;
	cdx_progress_begin(&pr, "encode 1/2", 200000, 0);
	int tty = pr.tty;
	age(&pr, 1);
	cdx_progress_update(&pr, 50000);
	age(&pr, 1);
	cdx_progress_end(&pr);
	/* quiet: no bar even on a terminal */
	struct cdx_progress q;
	cdx_progress_begin(&q, "quiet", 10, 1);
	age(&q, 1);
	cdx_progress_update(&q, 5);
	cdx_progress_end(&q);
	release();
	close(slave);
	char *out = drain(master);
	close(master);
	assert_true(tty);
	/* redrawn in place: carriage return, 30-column bar, counts, rate, ETA */
	assert_non_null(
	    strstr(out, "\rencode 1/2     [#######.......................]  25% 50.0k/200.0k rows  "));
	assert_non_null(strstr(out, "rows/s  ETA 0:0"));
	/* the closing draw: full bar (the done count is the last update's), time taken, newline */
	assert_non_null(strstr(out, "took 0:02"));
	assert_non_null(strchr(out, '\n'));
	assert_null(strstr(out, "quiet"));
	assert_null(strstr(out, "BLD-PROGRESS")); /* no log lines on a terminal */
	free(out);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_plain_log_lines),
		cmocka_unit_test(test_terminal_bar),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
