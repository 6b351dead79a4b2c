/*
 * watchdog.c — keeps the tcp:// and ipc:// listeners accepting.
 *
 * DESIGN
 * nng 1.5 (what Debian ships) has a bug, nanomsg/nng#1518 (fixed in 1.6):
 * when a peer goes away during the SP handshake and the server's write of
 * its own header fails with EPIPE, the transport reports NNG_ECLOSED to the
 * listener's accept loop, which takes it for "listener closed" and stops
 * accepting for good. Connections already made keep working; new ones are
 * never served. Over ipc:// one client that connects, writes and exits at
 * once is enough (badinput_test does exactly that).
 *
 * The transport goes on accepting and handshaking (so a connect, or even
 * an SP handshake, still succeeds), but the new connections are never
 * handed to the socket: requests on them go unanswered. The public API
 * cannot tell, so a thread probes each listener every --listener-check-ms:
 * it connects with a plain socket, does the SP handshake as a REQ peer and
 * sends a HealthRequest (request_id "candex-listener-probe", left out of
 * the metrics). Two probes in a row without an answer (1 s each) mean the
 * listener is dead: it is closed (which also closes its connections; nng
 * clients redial at once) and created again on the same socket and URL.
 * The probe reads the answer before it closes, so it never triggers the
 * bug itself. tls+tcp:// listeners are not probed (the probe would need a
 * client certificate).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "server/server.h"

#define PROBE_TIMEOUT_MS 1000
#define PROBE_FAILURES   2 /* in a row before a restart */

/* probe_connect opens a non-blocking socket to the listener's address.
 * Returns the fd, -1 on failure, -2 if this listener cannot be probed. */
static int
probe_connect(const struct srv_listener *sl)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int family;

	memset(&ss, 0, sizeof(ss));
	if (strncmp(sl->url, "ipc://", 6) == 0) {
		struct sockaddr_un *un = (struct sockaddr_un *) &ss;
		const char *path = sl->url + 6;
		if (strlen(path) >= sizeof(un->sun_path))
			return -2;
		un->sun_family = AF_UNIX;
		memcpy(un->sun_path, path, strlen(path) + 1);
		len = sizeof(*un);
		family = AF_UNIX;
	} else if (strncmp(sl->url, "tcp://", 6) == 0 && sl->port > 0) {
		/* host part: wildcard and empty mean loopback for the probe */
		char host[256];
		const char *h = sl->url + 6, *colon = strrchr(h, ':');
		size_t hl = colon ? (size_t) (colon - h) : strlen(h);
		if (hl >= sizeof(host))
			return -2;
		memcpy(host, h, hl);
		host[hl] = '\0';
		if (host[0] == '[' && hl >= 2 && host[hl - 1] == ']') {
			memmove(host, host + 1, hl - 2);
			host[hl - 2] = '\0';
		}
		if (host[0] == '\0' || strcmp(host, "*") == 0 || strcmp(host, "0.0.0.0") == 0)
			snprintf(host, sizeof(host), "127.0.0.1");
		else if (strcmp(host, "::") == 0)
			snprintf(host, sizeof(host), "::1");
		struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai = NULL;
		char port[16];
		snprintf(port, sizeof(port), "%d", sl->port);
		if (getaddrinfo(host, port, &hints, &ai) != 0 || ai == NULL)
			return -2;
		memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
		len = ai->ai_addrlen;
		family = ai->ai_family;
		freeaddrinfo(ai);
	} else {
		return -2;
	}
	int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *) &ss, len) != 0 && errno != EINPROGRESS) {
		close(fd);
		return -1;
	}
	return fd;
}

static int
wait_fd(int fd, short events, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = events };
	int n;
	while ((n = poll(&p, 1, timeout_ms)) < 0 && errno == EINTR)
		;
	return n == 1 && (p.revents & events) != 0;
}

/* recv_all reads len bytes before the deadline (monotonic µs). */
static int
recv_all(int fd, uint8_t *buf, size_t len, uint64_t until)
{
	size_t got = 0;
	while (got < len) {
		uint64_t now = cdx_now_us();
		if (now >= until || !wait_fd(fd, POLLIN, (int) ((until - now) / 1000) + 1))
			return -1;
		ssize_t n = recv(fd, buf + got, len - got, 0);
		if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
			return -1;
		if (n > 0)
			got += (size_t) n;
	}
	return 0;
}

/* probe returns 1 if the listener answered a health request, 0 if not, -1
 * if it cannot be probed. */
static int
probe(const struct srv_listener *sl)
{
	static const uint8_t req_hdr[8] = { 0, 'S', 'P', 0, 0x00, 0x30, 0, 0 }; /* REQ0 */
	/* Request{protocol_version: 1, request_id: "candex-listener-probe", health {}} */
	static const char id[] = CDX_PROBE_REQUEST_ID;
	uint8_t frame[1 + 8 + 4 + 4 + sizeof(id) + 2];
	size_t body = 2 + 2 + (sizeof(id) - 1) + 2, off = 0;
	int ipc = strncmp(sl->url, "ipc://", 6) == 0;

	if (ipc)
		frame[off++] = 1; /* ipc: message type */
	uint64_t flen = 4 + body;
	for (int b = 0; b < 8; b++)
		frame[off++] = (uint8_t) (flen >> (56 - 8 * b));
	frame[off++] = 0x80; /* REQ request id, high bit set */
	frame[off++] = 0;
	frame[off++] = 0;
	frame[off++] = 1;
	frame[off++] = 0x08; /* field 1, varint */
	frame[off++] = 1;
	frame[off++] = 0x12; /* field 2, bytes */
	frame[off++] = (uint8_t) (sizeof(id) - 1);
	memcpy(frame + off, id, sizeof(id) - 1);
	off += sizeof(id) - 1;
	frame[off++] = 0x62; /* field 12, bytes: empty HealthRequest */
	frame[off++] = 0;

	int fd = probe_connect(sl);
	if (fd == -2)
		return -1;
	if (fd < 0)
		return 0;
	int ok = 0, err = 0;
	socklen_t elen = sizeof(err);
	uint64_t until = cdx_now_us() + PROBE_TIMEOUT_MS * 1000u;
	uint8_t hdr[9];
	if (wait_fd(fd, POLLOUT, PROBE_TIMEOUT_MS) && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) == 0
	    && err == 0 && send(fd, req_hdr, sizeof(req_hdr), MSG_NOSIGNAL) == (ssize_t) sizeof(req_hdr)
	    && recv_all(fd, hdr, 8, until) == 0 && hdr[0] == 0 && hdr[1] == 'S' && hdr[2] == 'P'
	    && send(fd, frame, off, MSG_NOSIGNAL) == (ssize_t) off)
		ok = recv_all(fd, hdr, ipc ? 9 : 8, until) == 0; /* the reply's frame header */
	close(fd);
	return ok;
}

static void
restart(cdx_server *s, struct srv_listener *sl)
{
	cdx_warn("SRV-LISTEN-RESTART",
	    "%s listener %s stopped accepting connections (nng 1.5 bug after a peer vanished during the "
	    "handshake); recreating it",
	    sl->admin ? "admin" : "query", sl->url);
	struct srv_listener old = *sl;
	nng_listener_close(old.l);
	for (int attempt = 0; attempt < 50; attempt++) {
		if (cdx__srv_listen(s, old.sock, old.url, old.admin, sl) == CDX_OK) {
			atomic_fetch_add(&s->m.listener_restarts, 1);
			return;
		}
		/* ipc: nng may still be removing the old socket file */
		struct timespec ts = { .tv_sec = 0, .tv_nsec = 20 * 1000000L };
		nanosleep(&ts, NULL);
	}
	cdx_err("SRV-LISTEN-RESTART", "cannot listen on %s again: %s", old.url, cdx_last_error());
	*sl = old;
	sl->failed = 0;
}

static void *
watchdog_main(void *arg)
{
	cdx_server *s = arg;
	pthread_mutex_lock(&s->w_mu);
	while (!s->w_stop) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += s->cfg.listener_check_ms / 1000;
		ts.tv_nsec += (long) (s->cfg.listener_check_ms % 1000) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&s->w_cv, &s->w_mu, &ts);
		if (s->w_stop)
			break;
		pthread_mutex_unlock(&s->w_mu);
		for (unsigned i = 0; i < s->nlisteners && !atomic_load(&s->stopping); i++) {
			struct srv_listener *sl = &s->listeners[i];
			int r = probe(sl);
			if (r != 0) {
				sl->failed = 0;
				continue;
			}
			if (++sl->failed < PROBE_FAILURES) {
				cdx_debug("SRV-LISTEN", "listener %s did not answer a probe (%u in a row)",
				    sl->url, sl->failed);
				continue;
			}
			restart(s, sl);
		}
		pthread_mutex_lock(&s->w_mu);
	}
	pthread_mutex_unlock(&s->w_mu);
	return NULL;
}

int
cdx__srv_watchdog_start(cdx_server *s)
{
	if (s->cfg.listener_check_ms == 0)
		return CDX_OK;
	if (pthread_create(&s->watchdog, NULL, watchdog_main, s) != 0)
		return cdx_error(CDX_ENOMEM, "cannot start the listener watchdog thread");
	s->watchdog_started = 1;
	return CDX_OK;
}

void
cdx__srv_watchdog_stop(cdx_server *s)
{
	if (!s->watchdog_started)
		return;
	pthread_mutex_lock(&s->w_mu);
	s->w_stop = 1;
	pthread_cond_signal(&s->w_cv);
	pthread_mutex_unlock(&s->w_mu);
	pthread_join(s->watchdog, NULL);
	s->watchdog_started = 0;
}
