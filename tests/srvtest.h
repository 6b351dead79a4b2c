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

#endif
