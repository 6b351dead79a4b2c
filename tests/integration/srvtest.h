/*
 * srvtest.h — helpers for the server's integration tests (header-only, one
 * copy per test executable): build a real index with `candex build`, run
 * `candex serve` as a child process, talk to it through the client library,
 * a raw nng socket or a raw HTTP GET.
 */
#ifndef CANDEX_SRVTEST_H
#define CANDEX_SRVTEST_H

#define _GNU_SOURCE
#include "testutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "candex.pb-c.h"
#include "candex/client.h"
#include "common/common.h"

/* st_build writes n x dim clustered vectors (seeded) and keys
 * "<prefix><row>" into dir and builds collection coll into dir/index with
 * the extra build options. Returns the vectors (caller frees). */
static inline float *
st_build(const char *dir, const char *coll, size_t n, size_t dim, uint64_t seed, const char *metric,
    const char *keyprefix, const char *extra)
{
	char fv[4096], keys[4096];
	float *x = malloc(n * dim * sizeof(float));
	assert_non_null(x);
	tu_clustered(x, n, dim, 16, seed);
	snprintf(fv, sizeof(fv), "%s/%s-%llu.fvecs", dir, coll, (unsigned long long) seed);
	snprintf(keys, sizeof(keys), "%s/%s-keys.txt", dir, coll);
	assert_int_equal(tu_write_fvecs(fv, x, n, dim), 0);
	assert_int_equal(tu_write_keys(keys, keyprefix, n), 0);
	char *out = NULL;
	int rc = tu_run(&out,
	    "%s build --quiet --input %s --collection %s --metric %s --out %s/index --keys %s %s", CANDEX_BIN,
	    fv, coll, metric, dir, keys, extra ? extra : "");
	if (rc != 0)
		fprintf(stderr, "candex build failed (%d): %s\n", rc, out);
	assert_int_equal(rc, 0);
	free(out);
	return x;
}

/* st_current returns the version name CURRENT points at (static buffer). */
static inline const char *
st_current(const char *dir, const char *coll)
{
	static char buf[4096];
	char link[4096];
	snprintf(link, sizeof(link), "%s/index/%s/CURRENT", dir, coll);
	ssize_t n = readlink(link, buf, sizeof(buf) - 1);
	assert_true(n > 0);
	buf[n] = '\0';
	char *slash = strrchr(buf, '/');
	return slash ? slash + 1 : buf;
}

struct st_server {
	pid_t pid;
	char log[4096];
	char url[4200];   /* ipc:// query URL */
	char admin[4200]; /* ipc:// admin URL */
};

static inline int
st_log_has(const struct st_server *s, const char *what)
{
	char *text = NULL;
	size_t len;
	if (cdx_read_file(s->log, &text, &len) != CDX_OK)
		return 0;
	int has = strstr(text, what) != NULL;
	free(text);
	return has;
}

static inline void
st_dump_log(const struct st_server *s)
{
	char *text = NULL;
	size_t len;
	if (cdx_read_file(s->log, &text, &len) == CDX_OK)
		fprintf(stderr, "---- server log %s ----\n%s\n----\n", s->log, text);
	free(text);
}

static inline void
st_sleep_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long) (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* st_start_args runs `candex serve <args>` (stdout+stderr to a log in dir)
 * and waits for SRV-READY. Returns 0, or -1 if the server exited (its log
 * is printed). s->url and s->admin are left for the caller to set. */
static inline int
st_start_args(struct st_server *s, const char *dir, const char *tag, const char *args)
{
	char *cmd = NULL;
	snprintf(s->log, sizeof(s->log), "%.3800s/serve-%.100s.log", dir, tag);
	assert_true(asprintf(&cmd, "exec %s serve %s >%s 2>&1", CANDEX_BIN, args, s->log) > 0);
	unlink(s->log);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		setenv("CANDEX_LOG_LEVEL", "info", 1);
		execl("/bin/sh", "sh", "-c", cmd, (char *) NULL);
		_exit(127);
	}
	free(cmd);
	s->pid = pid;
	for (int i = 0; i < 3000; i++) {
		if (st_log_has(s, "SRV-READY"))
			return 0;
		int status;
		if (waitpid(pid, &status, WNOHANG) == pid) {
			s->pid = 0;
			st_dump_log(s);
			return -1;
		}
		st_sleep_ms(10);
	}
	st_dump_log(s);
	return -1;
}

/* st_start runs `candex serve --index-dir dir/index --listen ipc://dir/q.ipc
 * --admin-listen ipc://dir/admin.ipc <extra>` and waits for SRV-READY. */
static inline int
st_start(struct st_server *s, const char *dir, const char *tag, const char *extra)
{
	char *args = NULL;
	memset(s, 0, sizeof(*s));
	snprintf(s->url, sizeof(s->url), "ipc://%.3800s/q-%.100s.ipc", dir, tag);
	snprintf(s->admin, sizeof(s->admin), "ipc://%.3800s/admin-%.100s.ipc", dir, tag);
	assert_true(asprintf(&args, "--index-dir %s/index --listen %s --admin-listen %s %s", dir, s->url,
	                s->admin, extra ? extra : "")
	    > 0);
	int rc = st_start_args(s, dir, tag, args);
	free(args);
	return rc;
}

/* st_stop sends sig and waits (up to 20 s). Returns the exit status, or
 * 128 + signal number if it was killed by a signal, or -1 on timeout. */
static inline int
st_stop(struct st_server *s, int sig)
{
	int status;
	if (s->pid <= 0)
		return -1;
	kill(s->pid, sig);
	for (int i = 0; i < 2000; i++) {
		if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
			s->pid = 0;
			if (WIFEXITED(status))
				return WEXITSTATUS(status);
			return 128 + WTERMSIG(status);
		}
		st_sleep_ms(10);
	}
	kill(s->pid, SIGKILL);
	waitpid(s->pid, &status, 0);
	s->pid = 0;
	st_dump_log(s);
	return -1;
}

static inline cdx_client *
st_client(const char *url, uint32_t timeout_ms, uint32_t retries)
{
	struct cdx_client_options o = { .timeout_ms = timeout_ms, .retries = retries };
	struct cdx_client_error err;
	cdx_client *c = NULL;
	int rc = cdx_client_open(&c, url, &o, &err);
	if (rc != CDX_OK)
		fprintf(stderr, "client open %s: %s\n", url, err.message);
	assert_int_equal(rc, CDX_OK);
	return c;
}

/* st_free_port returns a TCP port on 127.0.0.1 that was free a moment ago. */
static inline int
st_free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *) &a, sizeof(a)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *) &a, &len), 0);
	close(fd);
	return ntohs(a.sin_port);
}

/* st_http_get does a raw HTTP/1.0 GET on 127.0.0.1:port and returns the
 * status code; *body (malloc'd) gets the whole response after the headers. */
static inline int
st_http_get(int port, const char *path, char **body)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET,
		.sin_port = htons((uint16_t) port),
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	char req[512];
	cdx_buf b = { 0 };
	*body = NULL;
	if (fd < 0 || connect(fd, (struct sockaddr *) &a, sizeof(a)) != 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
	if (write(fd, req, (size_t) n) != n) {
		close(fd);
		return -1;
	}
	char chunk[4096];
	ssize_t got;
	while ((got = read(fd, chunk, sizeof(chunk))) > 0)
		cdx_buf_append(&b, chunk, (size_t) got);
	close(fd);
	cdx_buf_append(&b, "", 1);
	int code = -1;
	if (b.data == NULL || sscanf(b.data, "HTTP/1.%*d %d", &code) != 1) {
		cdx_buf_fini(&b);
		return -1;
	}
	const char *sep = strstr(b.data, "\r\n\r\n");
	*body = strdup(sep ? sep + 4 : "");
	cdx_buf_fini(&b);
	return code;
}

/* st_raw_call sends raw bytes on a fresh REQ socket and decodes the reply.
 * Returns NULL if no (decodable) reply came within timeout_ms. */
static inline Candex__V1__Response *
st_raw_call(const char *url, const void *data, size_t len, int timeout_ms)
{
	nng_socket s;
	nng_msg *m;
	Candex__V1__Response *resp = NULL;
	assert_int_equal(nng_req0_open(&s), 0);
	nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, timeout_ms);
	nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, timeout_ms);
	nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, 0);
	if (nng_dial(s, url, NULL, 0) != 0) {
		nng_close(s);
		return NULL;
	}
	assert_int_equal(nng_msg_alloc(&m, len), 0);
	memcpy(nng_msg_body(m), data, len);
	if (nng_sendmsg(s, m, 0) != 0) {
		nng_msg_free(m);
		nng_close(s);
		return NULL;
	}
	if (nng_recvmsg(s, &m, 0) == 0) {
		resp = candex__v1__response__unpack(NULL, nng_msg_len(m), nng_msg_body(m));
		nng_msg_free(m);
	}
	nng_close(s);
	return resp;
}

/* st_raw_request packs req and calls st_raw_call. */
static inline Candex__V1__Response *
st_raw_request(const char *url, Candex__V1__Request *req, int timeout_ms)
{
	size_t len = candex__v1__request__get_packed_size(req);
	uint8_t *buf = malloc(len ? len : 1);
	assert_non_null(buf);
	candex__v1__request__pack(req, buf);
	Candex__V1__Response *resp = st_raw_call(url, buf, len, timeout_ms);
	free(buf);
	return resp;
}

/* st_search is cdx_client_search that asserts success. */
static inline struct cdx_result *
st_search(cdx_client *c, const struct cdx_query *q)
{
	struct cdx_result *r = NULL;
	struct cdx_client_error err;
	int rc = cdx_client_search(c, q, &r, &err);
	if (rc != CDX_OK)
		fprintf(stderr, "search: %s: %s\n", cdx_errname(rc), err.message);
	assert_int_equal(rc, CDX_OK);
	return r;
}

#endif
