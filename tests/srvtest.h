/*
 * srvtest.h — helpers for the server's integration tests (in the test
 * library with testutil.c): build a real index with `candex build`, run
 * `candex serve` as a child process, talk to it through the client library,
 * a hand-written SP peer or a raw HTTP request.
 */
#ifndef CANDEX_SRVTEST_H
#define CANDEX_SRVTEST_H

#define _GNU_SOURCE
#include "testutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
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
float *st_build(const char *dir, const char *coll, size_t n, size_t dim, uint64_t seed, const char *metric,
    const char *keyprefix, const char *extra);

/* st_current returns the version name CURRENT points at (static buffer). */
const char *st_current(const char *dir, const char *coll);

struct st_server {
	pid_t pid;
	char log[4096];
	char url[4200];   /* ipc:// query URL */
	char admin[4200]; /* ipc:// admin URL */
};

/* st_log_has: 1 if the server's log contains what. */
int st_log_has(const struct st_server *s, const char *what);
/* st_log_count: how many times the server's log contains what. */
int st_log_count(const struct st_server *s, const char *what);
/* st_dump_log prints the server's log on stderr (after a failure). */
void st_dump_log(const struct st_server *s);
/* st_sleep_ms sleeps, resuming after signals. */
void st_sleep_ms(unsigned ms);

/* st_start_args runs `candex serve <args>` (stdout+stderr to a log in dir)
 * and waits for SRV-READY. Returns 0, or -1 if the server exited (its log
 * is printed). s->url and s->admin are left for the caller to set. */
int st_start_args(struct st_server *s, const char *dir, const char *tag, const char *args);

/* st_start runs `candex serve --index-dir dir/index --listen ipc://dir/q.ipc
 * --admin-listen ipc://dir/admin.ipc <extra>` and waits for SRV-READY. */
int st_start(struct st_server *s, const char *dir, const char *tag, const char *extra);

/* st_stop sends sig and waits (up to 20 s). Returns the exit status, or
 * 128 + signal number if it was killed by a signal, or -1 on timeout. */
int st_stop(struct st_server *s, int sig);

/* st_client opens a client library connection and asserts success. */
cdx_client *st_client(const char *url, uint32_t timeout_ms, uint32_t retries);

/* st_free_port returns a TCP port on 127.0.0.1 that was free a moment ago. */
int st_free_port(void);

/* st_http sends a raw HTTP/1.0 request to 127.0.0.1:port (headers: extra
 * "Name: value\r\n" lines or NULL; body: a JSON text or NULL) and returns
 * the status code, or -1; *resp (malloc'd) gets the response after the
 * headers. */
int st_http(
    int port, const char *method, const char *path, const char *headers, const char *body, char **resp);
/* st_http_get is st_http for a GET. */
int st_http_get(int port, const char *path, char **body);
/* st_metric_in returns the value of the sample series (name and labels,
 * as printed) in a /metrics body, or -1 if there is none. */
double st_metric_in(const char *body, const char *series);
/* st_metric_or reads one sample (name with its labels, if any) from a
 * server's /metrics, or returns dflt when the series is absent. */
double st_metric_or(int http_port, const char *name, double dflt);
/* st_metric reads one sample that must be present. */
double st_metric(int http_port, const char *name);

/* st_sp_connect opens a plain socket to an ipc:// or tcp://127.0.0.1:PORT
 * URL (the tests' own addresses). Returns the fd or -1; *ipc says which. */
int st_sp_connect(const char *url, int *ipc);

/* st_recv_all reads exactly len bytes before the monotonic time until (us);
 * -1 on timeout, error or end of stream. */
int st_recv_all(int fd, void *buf, size_t len, uint64_t until);

/* st_raw_call is a REQ peer written by hand (SP handshake, one framed
 * request with a request id, one framed reply): the raw bytes go to the
 * server as they are, and the test's side has no nng state that could hang
 * (nng 1.5 can hang closing a REQ socket, nanomsg/nng#1813). Returns the
 * decoded reply, or NULL if none came within timeout_ms. */
Candex__V1__Response *st_raw_call(const char *url, const void *data, size_t len, int timeout_ms);

/* st_raw_request packs req and calls st_raw_call. */
Candex__V1__Response *st_raw_request(const char *url, Candex__V1__Request *req, int timeout_ms);

/* st_search is cdx_client_search that asserts success. */
struct cdx_result *st_search(cdx_client *c, const struct cdx_query *q);

/* st_start_cmd runs `candex <command> <args>` (stdout+stderr to a log in
 * dir) and waits for the log line ready. Returns 0, or -1 if the process
 * exited (its log is printed). s->url and s->admin are left for the caller. */
int st_start_cmd(struct st_server *s, const char *dir, const char *tag, const char *command, const char *args,
    const char *ready);

/* The hardening tests' helpers (limits, admission, watchdog, soak): header
 * inline, as they were written beside the test library's move. */
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
 * SearchRequest repeats field `field` count times, each an empty string
 * (or an unknown field). *len gets its size; the caller frees it. */
static inline uint8_t *
st_strings_request(int field, size_t count, size_t *len)
{
	uint8_t tag[4];
	size_t taglen = 0;
	for (uint64_t t = (uint64_t) field << 3 | 2; t > 0 || taglen == 0; t >>= 7)
		tag[taglen++] = (uint8_t) ((t & 0x7f) | (t > 0x7f ? 0x80 : 0));
	size_t inner = 2 + 6 + 2 + count * (taglen + 1); /* collection, k, the repeats */
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
		memcpy(p, tag, taglen);
		p += taglen;
		*p++ = 0;
	}
	*len = (size_t) (p - b);
	return b;
}

#endif
