/*
 * watchdog.c — keeps the tcp:// and ipc:// listeners accepting, without
 * ever touching one that is.
 *
 * DESIGN
 * nng 1.5 (what Debian ships) has a bug, nanomsg/nng#1518 (fixed in 1.6):
 * every error of a connection's SP handshake is handed to the listener's
 * accept loop (tcptran_pipe_nego_cb, ipctran_pipe_nego_cb), and the loop
 * (listener_accept_cb in core/listener.c) takes NNG_ECLOSED and
 * NNG_ECANCELED for "listener closed" and stops accepting for good. A write
 * of the server's SP header to a peer that already left fails with EPIPE,
 * which nng maps to NNG_ECLOSED: over ipc:// one client that connects,
 * writes and exits at once is enough. The transport goes on accepting and
 * handshaking, but the new connections wait in its list forever and are
 * never handed to the socket.
 *
 * Two facts make an exact check possible. First, the loop only stops after
 * counting the error in the listener's statistics ("other" for
 * NNG_ECLOSED, "canceled"), so a listener whose two counters have not moved
 * since it was last seen accepting cannot have stopped: it is not probed.
 * Second, a stopped listener still completes the handshake, so a probe
 * that finished its handshake and whose connection never reaches the
 * socket's pipe notification (conns.c hands it to
 * cdx__srv_watchdog_claim) has met the bug, however busy the server is: the
 * probe sends no request, so neither the contexts nor the workers are
 * involved. A probe that cannot connect or handshake proves nothing and
 * changes nothing. Only two such findings in a row make the watchdog close
 * the listener (which also closes its connections; nng clients redial at
 * once) and create it again on the same socket and URL. tls+tcp://
 * listeners are not probed (the handshake would need TLS).
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

#define PROBE_CONNECT_MS 1000 /* connect + SP handshake; slower proves nothing */
#define PROBE_ATTACH_MS  2000 /* handshake done -> the socket's pipe notification */
#define PROBE_FAILURES   2    /* findings in a row before a restart */

enum { PROBE_UNKNOWN, PROBE_ACCEPTING, PROBE_STOPPED };

/* The probe in progress, for cdx__srv_watchdog_claim. */
struct srv_probe {
	uint32_t listener; /* nng listener id */
	int ipc;
	uint16_t port; /* tcp: the probe's own port, network order */
	int seen;
};

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

int
cdx__srv_watchdog_claim(cdx_server *s, nng_pipe p)
{
	int mine = 0;
	pthread_mutex_lock(&s->w_mu);
	struct srv_probe *pr = s->probe;
	if (pr != NULL && !pr->seen && (uint32_t) nng_listener_id(nng_pipe_listener(p)) == pr->listener) {
		if (pr->ipc) {
			uint64_t pid = 0; /* nng wants the exact type: uint64 */
			mine = nng_pipe_get_uint64(p, NNG_OPT_IPC_PEER_PID, &pid) == 0
			    && pid == (uint64_t) getpid();
		} else {
			nng_sockaddr sa;
			if (nng_pipe_get_addr(p, NNG_OPT_REMADDR, &sa) == 0)
				mine = (sa.s_family == NNG_AF_INET && sa.s_in.sa_port == pr->port)
				    || (sa.s_family == NNG_AF_INET6 && sa.s_in6.sa_port == pr->port);
		}
		if (mine) {
			pr->seen = 1;
			pthread_cond_broadcast(&s->w_cv);
		}
	}
	pthread_mutex_unlock(&s->w_mu);
	return mine;
}

/* accept_errors returns the listener's count of the accept errors that can
 * stop its loop, or UINT64_MAX if nng keeps no statistics. */
static uint64_t
accept_errors(nng_listener l)
{
	nng_stat *all = NULL, *ls;
	uint64_t n = UINT64_MAX;
	if (nng_stats_get(&all) != 0)
		return n;
	if ((ls = nng_stat_find_listener(all, l)) != NULL) {
		nng_stat *other = nng_stat_find(ls, "other"), *canceled = nng_stat_find(ls, "canceled");
		if (other != NULL && canceled != NULL)
			n = nng_stat_value(other) + nng_stat_value(canceled);
	}
	nng_stats_free(all);
	return n;
}

static void
deadline_after(struct timespec *ts, unsigned ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (long) (ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

static int
stopping(cdx_server *s)
{
	pthread_mutex_lock(&s->w_mu);
	int stop = s->w_stop;
	pthread_mutex_unlock(&s->w_mu);
	return stop;
}

/* probe connects to the listener, does the SP handshake as a REQ peer and
 * waits for the connection to reach the socket. */
static int
probe(cdx_server *s, const struct srv_listener *sl)
{
	static const uint8_t req_hdr[8] = { 0, 'S', 'P', 0, 0x00, 0x30, 0, 0 }; /* REQ0 */
	struct srv_probe pr
	    = { .listener = (uint32_t) nng_listener_id(sl->l), .ipc = strncmp(sl->url, "ipc://", 6) == 0 };
	int fd = probe_connect(sl);
	if (fd < 0)
		return PROBE_UNKNOWN;
	int err = 0, verdict = PROBE_UNKNOWN, connected = 0, got_hdr = 0;
	socklen_t elen = sizeof(err);
	uint64_t until = cdx_now_us() + PROBE_CONNECT_MS * 1000u;
	uint8_t hdr[8];
	if (!wait_fd(fd, POLLOUT, PROBE_CONNECT_MS) || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0
	    || err != 0)
		goto out;
	connected = 1;
	if (!pr.ipc) {
		struct sockaddr_storage me;
		socklen_t mlen = sizeof(me);
		if (getsockname(fd, (struct sockaddr *) &me, &mlen) != 0)
			goto out;
		pr.port = me.ss_family == AF_INET6 ? ((struct sockaddr_in6 *) &me)->sin6_port
		                                   : ((struct sockaddr_in *) &me)->sin_port;
	}
	pthread_mutex_lock(&s->w_mu);
	s->probe = &pr;
	pthread_mutex_unlock(&s->w_mu);
	if (send(fd, req_hdr, sizeof(req_hdr), MSG_NOSIGNAL) == (ssize_t) sizeof(req_hdr)
	    && (got_hdr = recv_all(fd, hdr, 8, until) == 0) && hdr[0] == 0 && hdr[1] == 'S'
	    && hdr[2] == 'P') {
		/* both headers are through: the transport hands the connection
		 * to the listener's accept loop, if that still runs */
		struct timespec ts;
		deadline_after(&ts, PROBE_ATTACH_MS);
		pthread_mutex_lock(&s->w_mu);
		while (!pr.seen && !s->w_stop && pthread_cond_timedwait(&s->w_cv, &s->w_mu, &ts) == 0)
			;
		verdict = pr.seen ? PROBE_ACCEPTING : s->w_stop ? PROBE_UNKNOWN : PROBE_STOPPED;
		pthread_mutex_unlock(&s->w_mu);
	}
	pthread_mutex_lock(&s->w_mu);
	s->probe = NULL;
	pthread_mutex_unlock(&s->w_mu);
out:
	/* Over ipc:// the server's write of its header to a peer that has
	 * closed fails with EPIPE, the very bug: never leave before it. (Over
	 * tcp:// a close with nothing unread sends FIN, and the server's write
	 * still succeeds.) */
	for (int i = 0; pr.ipc && connected && !got_hdr && i < 50 && !stopping(s); i++)
		got_hdr = recv_all(fd, hdr, 8, cdx_now_us() + 100000u) == 0;
	close(fd);
	return verdict;
}

static void
restart(cdx_server *s, struct srv_listener *sl)
{
	cdx_warn("SRV-LISTEN-RESTART",
	    "%s listener %s stopped accepting connections (nng 1.5 bug after a peer vanished during the "
	    "handshake: handshakes complete, connections never reach the socket); recreating it",
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
	sl->errors_seen = UINT64_MAX;
}

/* check looks at one listener (see DESIGN). */
static void
check(cdx_server *s, struct srv_listener *sl)
{
	uint64_t errors = accept_errors(sl->l);
	if (errors != UINT64_MAX && errors == sl->errors_seen)
		return; /* no error that could stop it since it last accepted */
	cdx_debug("SRV-LISTEN", "listener %s: %llu accept error(s) since it last accepted; probing", sl->url,
	    (unsigned long long) (errors - sl->errors_seen));
	switch (probe(s, sl)) {
	case PROBE_ACCEPTING:
		sl->failed = 0;
		sl->errors_seen = errors;
		return;
	case PROBE_UNKNOWN:
		return;
	case PROBE_STOPPED:
		if (++sl->failed < PROBE_FAILURES) {
			cdx_debug("SRV-LISTEN",
			    "listener %s handshook a probe but did not accept it (%u in a row)", sl->url,
			    sl->failed);
			return;
		}
		restart(s, sl);
		return;
	}
}

static void *
watchdog_main(void *arg)
{
	cdx_server *s = arg;
	pthread_mutex_lock(&s->w_mu);
	while (!s->w_stop) {
		struct timespec ts;
		deadline_after(&ts, s->cfg.listener_check_ms);
		pthread_cond_timedwait(&s->w_cv, &s->w_mu, &ts);
		if (s->w_stop)
			break;
		pthread_mutex_unlock(&s->w_mu);
		for (unsigned i = 0; i < s->nlisteners && !atomic_load(&s->stopping); i++)
			check(s, &s->listeners[i]);
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
	pthread_cond_broadcast(&s->w_cv);
	pthread_mutex_unlock(&s->w_mu);
	pthread_join(s->watchdog, NULL);
	s->watchdog_started = 0;
}
