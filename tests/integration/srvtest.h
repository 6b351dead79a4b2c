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
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>

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

/* st_start_cmd runs `candex <command> <args>` (stdout+stderr to a log in
 * dir) and waits for the log line ready. Returns 0, or -1 if the process
 * exited (its log is printed). s->url and s->admin are left for the caller. */
static inline int
st_start_cmd(struct st_server *s, const char *dir, const char *tag, const char *command, const char *args,
    const char *ready)
{
	char *cmd = NULL;
	snprintf(s->log, sizeof(s->log), "%.3800s/%s-%.100s.log", dir, command, tag);
	assert_true(asprintf(&cmd, "exec %s %s %s >%s 2>&1", CANDEX_BIN, command, args, s->log) > 0);
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
		if (st_log_has(s, ready))
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

/* st_start_args runs `candex serve <args>` and waits for SRV-READY. */
static inline int
st_start_args(struct st_server *s, const char *dir, const char *tag, const char *args)
{
	return st_start_cmd(s, dir, tag, "serve", args, "SRV-READY");
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

/* st_metric_in returns the value of the sample series (name and labels,
 * as printed) in a /metrics body, or -1 if there is none. */
static inline double
st_metric_in(const char *body, const char *series)
{
	size_t n = strlen(series);
	for (const char *p = body; p != NULL && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
		if (strncmp(p, series, n) == 0 && p[n] == ' ')
			return strtod(p + n + 1, NULL);
	return -1;
}

/* st_metric_or reads one sample (name with its labels, if any) from a
 * server's /metrics, or returns dflt when the series is absent. */
static inline double
st_metric_or(int http_port, const char *name, double dflt)
{
	char *body = NULL;
	assert_int_equal(st_http_get(http_port, "/metrics", &body), 200);
	double v = st_metric_in(body, name);
	free(body);
	return v < 0 ? dflt : v;
}

/* st_metric reads one sample that must be present. */
static inline double
st_metric(int http_port, const char *name)
{
	double v = st_metric_or(http_port, name, NAN);
	if (isnan(v))
		fail_msg("no %s in /metrics", name);
	return v;
}

/* st_sp_connect opens a plain socket to an ipc:// or tcp://127.0.0.1:PORT
 * URL (the tests' own addresses). Returns the fd or -1; *ipc says which. */
static inline int
st_sp_connect(const char *url, int *ipc)
{
	int fd;
	*ipc = strncmp(url, "ipc://", 6) == 0;
	if (*ipc) {
		struct sockaddr_un u = { .sun_family = AF_UNIX };
		snprintf(u.sun_path, sizeof(u.sun_path), "%.100s", url + 6);
		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		if (fd >= 0 && connect(fd, (struct sockaddr *) &u, sizeof(u)) != 0) {
			close(fd);
			return -1;
		}
		return fd;
	}
	const char *colon = strrchr(url, ':');
	if (strncmp(url, "tcp://", 6) != 0 || colon == NULL)
		return -1;
	struct sockaddr_in a = { .sin_family = AF_INET,
		.sin_port = htons((uint16_t) atoi(colon + 1)),
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd >= 0 && connect(fd, (struct sockaddr *) &a, sizeof(a)) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static inline int
st_recv_all(int fd, void *buf, size_t len, uint64_t until)
{
	size_t got = 0;
	while (got < len) {
		uint64_t now = cdx_now_us();
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (now >= until || poll(&p, 1, (int) ((until - now) / 1000) + 1) != 1)
			return -1;
		ssize_t n = recv(fd, (char *) buf + got, len - got, 0);
		if (n == 0 || (n < 0 && errno != EINTR))
			return -1;
		if (n > 0)
			got += (size_t) n;
	}
	return 0;
}

/* st_raw_call is a REQ peer written by hand (SP handshake, one framed
 * request with a request id, one framed reply): the raw bytes go to the
 * server as they are, and the test's side has no nng state that could hang
 * (nng 1.5 can hang closing a REQ socket, nanomsg/nng#1813). Returns the
 * decoded reply, or NULL if none came within timeout_ms. */
static inline Candex__V1__Response *
st_raw_call(const char *url, const void *data, size_t len, int timeout_ms)
{
	static const uint8_t hs[8] = { 0, 'S', 'P', 0, 0x00, 0x30, 0, 0 }; /* REQ0 */
	uint64_t until = cdx_now_us() + (uint64_t) timeout_ms * 1000u;
	Candex__V1__Response *resp = NULL;
	uint8_t head[9 + 4], peer[8];
	size_t h = 0;
	int ipc, fd = st_sp_connect(url, &ipc);
	if (fd < 0)
		return NULL;
	if (ipc)
		head[h++] = 1;
	uint64_t flen = 4 + (uint64_t) len;
	for (int b = 0; b < 8; b++)
		head[h++] = (uint8_t) (flen >> (56 - 8 * b));
	static const uint8_t reqid[4] = { 0x80, 0x12, 0x34, 0x56 };
	memcpy(head + h, reqid, 4);
	h += 4;
	if (send(fd, hs, 8, MSG_NOSIGNAL) != 8 || st_recv_all(fd, peer, 8, until) != 0
	    || send(fd, head, h, MSG_NOSIGNAL) != (ssize_t) h
	    || (len > 0 && send(fd, data, len, MSG_NOSIGNAL) != (ssize_t) len))
		goto done;
	uint8_t rh[9];
	size_t rhl = ipc ? 9 : 8;
	if (st_recv_all(fd, rh, rhl, until) != 0)
		goto done;
	uint64_t rlen = 0;
	for (size_t b = rhl - 8; b < rhl; b++)
		rlen = rlen << 8 | rh[b];
	if (rlen < 4 || rlen > (64u << 20))
		goto done;
	uint8_t *buf = malloc((size_t) rlen);
	if (buf != NULL && st_recv_all(fd, buf, (size_t) rlen, until) == 0 && memcmp(buf, reqid, 4) == 0)
		resp = candex__v1__response__unpack(NULL, (size_t) rlen - 4, buf + 4);
	free(buf);
done:
	close(fd);
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

/* ST_RSS_CHECKED: RSS bounds hold in this build (not under a sanitizer,
 * whose quarantine and shadow memory are RSS too); they are reported
 * either way. */
#ifdef CANDEX_SANITIZED
#define ST_RSS_CHECKED 0
#else
#define ST_RSS_CHECKED 1
#endif

/* ST_EXIT_MS: what a signal and a process exit may add to a server's own
 * shutdown time (a sanitizer's runtime does its own work at exit). */
#ifdef CANDEX_SANITIZED
#define ST_EXIT_MS 3000
#else
#define ST_EXIT_MS 400
#endif

/* st_proc_kb reads a "Vm..." field (VmRSS, VmHWM) of /proc/pid/status in KiB. */
static inline long
st_proc_kb(pid_t pid, const char *field)
{
	char path[64], line[256];
	long kb = -1;
	snprintf(path, sizeof(path), "/proc/%d/status", (int) pid);
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return -1;
	size_t fl = strlen(field);
	while (fgets(line, sizeof(line), f) != NULL)
		if (strncmp(line, field, fl) == 0 && line[fl] == ':')
			kb = strtol(line + fl + 1, NULL, 10);
	fclose(f);
	return kb;
}

/* st_peak_reset makes VmHWM start again from the current RSS (Linux
 * clear_refs 5), so that a later VmHWM is the peak of what came since. */
static inline void
st_peak_reset(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/clear_refs", (int) pid);
	FILE *f = fopen(path, "w");
	if (f != NULL) {
		fputs("5", f);
		fclose(f);
	}
}

/* st_fd_count counts the open file descriptors of pid. */
static inline int
st_fd_count(pid_t pid)
{
	char cmd[64];
	char *out = NULL;
	snprintf(cmd, sizeof(cmd), "ls /proc/%d/fd | wc -l", (int) pid);
	if (tu_run(&out, "%s", cmd) != 0) {
		free(out);
		return -1;
	}
	int n = atoi(out);
	free(out);
	return n;
}

/* st_sp_send connects a hand-written REQ peer to url and sends one framed
 * request (len bytes of data) without waiting for the reply. Returns the
 * connected fd (the caller closes it), or -1. */
static inline int
st_sp_send(const char *url, const void *data, size_t len)
{
	static const uint8_t hs[8] = { 0, 'S', 'P', 0, 0x00, 0x30, 0, 0 }; /* REQ0 */
	static const uint8_t reqid[4] = { 0x80, 0, 0, 7 };
	uint8_t head[9 + 4], peer[8];
	size_t h = 0;
	int ipc, fd = st_sp_connect(url, &ipc);
	if (fd < 0)
		return -1;
	if (ipc)
		head[h++] = 1;
	uint64_t flen = 4 + (uint64_t) len;
	for (int b = 0; b < 8; b++)
		head[h++] = (uint8_t) (flen >> (56 - 8 * b));
	memcpy(head + h, reqid, 4);
	h += 4;
	if (send(fd, hs, 8, MSG_NOSIGNAL) != 8 || st_recv_all(fd, peer, 8, cdx_now_us() + 5000000u) != 0
	    || send(fd, head, h, MSG_NOSIGNAL) != (ssize_t) h
	    || (len > 0 && send(fd, data, len, MSG_NOSIGNAL) != (ssize_t) len)) {
		close(fd);
		return -1;
	}
	return fd;
}

/* st_pack_search packs a search of nq vectors for coll with timeout_ms
 * (0 = server default). *len gets its size; the caller frees it. */
static inline uint8_t *
st_pack_search(const char *coll, const float *v, size_t nq, uint32_t dim, uint32_t k, uint32_t nprobe,
    float refine, uint32_t timeout_ms, size_t *len)
{
	Candex__V1__Request req = CANDEX__V1__REQUEST__INIT;
	Candex__V1__SearchRequest sr = CANDEX__V1__SEARCH_REQUEST__INIT;
	req.protocol_version = 1;
	req.timeout_ms = timeout_ms;
	req.body_case = CANDEX__V1__REQUEST__BODY_SEARCH;
	req.search = &sr;
	sr.collection = (char *) coll;
	sr.dim = dim;
	sr.k = k;
	sr.nprobe = nprobe;
	sr.refine_factor = refine;
	sr.vectors = (float *) v;
	sr.n_vectors = nq * dim;
	*len = candex__v1__request__get_packed_size(&req);
	uint8_t *buf = malloc(*len);
	assert_non_null(buf);
	candex__v1__request__pack(&req, buf);
	return buf;
}

/* st_vanish sends such a search (or half of it) on a raw connection and
 * closes the connection at once. */
static inline void
st_vanish(const char *url, const uint8_t *req, size_t len, int half)
{
	int fd = st_sp_send(url, req, half ? len / 2 : len);
	if (fd >= 0)
		close(fd);
}

/* st_slow_frame is the slow-frame attack on one connection: it connects to
 * url (tcp:// or ipc://), handshakes, sends a frame header announcing len
 * bytes and then all of them but the last, from payload (len bytes).
 * Returns the fd (the caller closes it), or -1. */
static inline int
st_slow_frame(const char *url, uint64_t len, const uint8_t *payload)
{
	static const uint8_t hs[8] = { 0, 'S', 'P', 0, 0x00, 0x30, 0, 0 };
	int ipc, fd = st_sp_connect(url, &ipc);
	if (fd < 0)
		return -1;
	struct timeval tv = { .tv_sec = 0, .tv_usec = 200000 }; /* a refused peer stops reading */
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	uint8_t peer[8], head[9];
	size_t h = 0;
	if (ipc)
		head[h++] = 1;
	for (int b = 0; b < 8; b++)
		head[h++] = (uint8_t) (len >> (56 - 8 * b));
	if (send(fd, hs, 8, MSG_NOSIGNAL) != 8 || st_recv_all(fd, peer, 8, cdx_now_us() + 1000000u) != 0
	    || send(fd, head, h, MSG_NOSIGNAL) != (ssize_t) h)
		return fd; /* refused: kept anyway, as an attacker would */
	size_t sent = 0;
	while (sent < len - 1) {
		ssize_t n = send(fd, payload + sent, (size_t) len - 1 - sent, MSG_NOSIGNAL);
		if (n <= 0)
			break;
		sent += (size_t) n;
	}
	return fd;
}

/* st_strings_request packs a Request for collection "tracks" whose
 * SearchRequest repeats field `field` (< 16) count times, each an empty
 * string (or an unknown field). *len gets its size; the caller frees it. */
static inline uint8_t *
st_strings_request(int field, size_t count, size_t *len)
{
	size_t inner = 2 + 6 + 2 + count * 2; /* collection, k, the repeats */
	uint8_t *b = malloc(inner + 32), *p = b;
	assert_non_null(b);
	*p++ = 0x08; /* protocol_version 1 */
	*p++ = 1;
	*p++ = 0x52; /* field 10: search */
	size_t v = inner;
	do {
		*p++ = (uint8_t) ((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
		v >>= 7;
	} while (v > 0);
	*p++ = 0x0a;
	*p++ = 6;
	memcpy(p, "tracks", 6);
	p += 6;
	*p++ = 0x28; /* k = 5 */
	*p++ = 5;
	for (size_t i = 0; i < count; i++) {
		*p++ = (uint8_t) (field << 3 | 2);
		*p++ = 0;
	}
	*len = (size_t) (p - b);
	return b;
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
