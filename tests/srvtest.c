/*
 * srvtest.c — the server test helpers declared in srvtest.h.
 */
#define _GNU_SOURCE
#include "srvtest.h"

#include <math.h>

float *
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

const char *
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

int
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

int
st_log_count(const struct st_server *s, const char *what)
{
	char *text = NULL;
	size_t len;
	int n = 0;
	if (cdx_read_file(s->log, &text, &len) != CDX_OK)
		return 0;
	for (const char *p = strstr(text, what); p != NULL; p = strstr(p + 1, what))
		n++;
	free(text);
	return n;
}

void
st_dump_log(const struct st_server *s)
{
	char *text = NULL;
	size_t len;
	if (cdx_read_file(s->log, &text, &len) == CDX_OK)
		fprintf(stderr, "---- server log %s ----\n%s\n----\n", s->log, text);
	free(text);
}

void
st_sleep_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long) (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* st_start_cmd runs `candex <command> <args>` (stdout+stderr to a log in
 * dir) and waits for the log line ready. Returns 0, or -1 if the process
 * exited (its log is printed). s->url and s->admin are left for the caller. */
int
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

int
st_start_args(struct st_server *s, const char *dir, const char *tag, const char *args)
{
	return st_start_cmd(s, dir, tag, "serve", args, "SRV-READY");
}

int
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

int
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

cdx_client *
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

int
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

int
st_http(int port, const char *method, const char *path, const char *headers, const char *body, char **resp)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET,
		.sin_port = htons((uint16_t) port),
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	cdx_buf b = { 0 };
	*resp = NULL;
	if (fd < 0 || connect(fd, (struct sockaddr *) &a, sizeof(a)) != 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	size_t blen = body != NULL ? strlen(body) : 0;
	cdx_buf_printf(&b, "%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\n%s", method, path, headers ? headers : "");
	if (body != NULL)
		cdx_buf_printf(&b, "Content-Type: application/json\r\nContent-Length: %zu\r\n", blen);
	cdx_buf_append(&b, "\r\n", 2);
	if (body != NULL)
		cdx_buf_append(&b, body, blen);
	ssize_t sent = send(fd, b.data, b.len, MSG_NOSIGNAL);
	int complete = sent == (ssize_t) b.len;
	cdx_buf_fini(&b);
	if (!complete) {
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
	*resp = strdup(sep ? sep + 4 : "");
	cdx_buf_fini(&b);
	return code;
}

int
st_http_get(int port, const char *path, char **body)
{
	return st_http(port, "GET", path, NULL, NULL, body);
}

double
st_metric_in(const char *body, const char *series)
{
	size_t n = strlen(series);
	for (const char *p = body; p != NULL && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
		if (strncmp(p, series, n) == 0 && p[n] == ' ')
			return strtod(p + n + 1, NULL);
	return -1;
}

double
st_metric_or(int http_port, const char *name, double dflt)
{
	char *body = NULL;
	assert_int_equal(st_http_get(http_port, "/metrics", &body), 200);
	double v = st_metric_in(body, name);
	free(body);
	return v < 0 ? dflt : v;
}

double
st_metric(int http_port, const char *name)
{
	double v = st_metric_or(http_port, name, NAN);
	if (isnan(v))
		fail_msg("no %s in /metrics", name);
	return v;
}

int
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

int
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

Candex__V1__Response *
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

Candex__V1__Response *
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

struct cdx_result *
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
