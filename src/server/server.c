/*
 * server.c — start, graceful stop, and `candex serve`'s main loop (signals
 * arrive through a self-pipe: the handler only writes a byte).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>

#include "server/server.h"

#include "recall/online.h"

static char *
dup_or_null(const char *s)
{
	return s != NULL ? strdup(s) : NULL;
}

static void
config_copy(struct cdx_server_config *dst, const struct cdx_server_config *src)
{
	*dst = *src;
	dst->index_dir = dup_or_null(src->index_dir);
	for (unsigned i = 0; i < src->nlisten; i++)
		dst->listen[i] = dup_or_null(src->listen[i]);
	dst->admin_listen = dup_or_null(src->admin_listen);
	dst->http_listen = dup_or_null(src->http_listen);
	dst->http_search_listen = dup_or_null(src->http_search_listen);
	dst->tls_cert = dup_or_null(src->tls_cert);
	dst->tls_key = dup_or_null(src->tls_key);
	dst->tls_ca = dup_or_null(src->tls_ca);
	dst->ipc_mode = dup_or_null(src->ipc_mode);
	dst->query_ipc_mode = dup_or_null(src->query_ipc_mode);
	dst->config_file = dup_or_null(src->config_file);
}

static void
sleep_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long) (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void
server_free(cdx_server *s)
{
	cdx__srv_set_free(s->set);
	cdx__srv_adapt_free(s->adapt); /* after the online checker, its caller, stopped */
	pthread_mutex_destroy(&s->set_mu);
	pthread_mutex_destroy(&s->cm_mu);
	pthread_mutex_destroy(&s->q_mu);
	pthread_cond_destroy(&s->q_cv);
	pthread_mutex_destroy(&s->r_mu);
	pthread_cond_destroy(&s->r_cv);
	pthread_mutex_destroy(&s->w_mu);
	pthread_cond_destroy(&s->w_cv);
	cdx_server_config_fini(&s->cfg);
	free(s);
}

/* teardown stops everything that start got going, in dependency order. */
static void
teardown(cdx_server *s)
{
	cdx__srv_http_search_stop(s); /* answers its open requests through sock */
	cdx__srv_http_stop(s);
	cdx__srv_watchdog_stop(s);
	cdx__srv_reloader_stop(s);
	cdx__srv_workers_stop(s); /* before the contexts go: a worker may hold one */
	cdx__srv_sockets_close(s);
	cdx_online_recall_stop(s->online);
	s->online = NULL;
	server_free(s);
}

int
cdx_server_start(cdx_server **sp, const struct cdx_server_config *cfg)
{
	cdx_server *s;
	int rc;

	*sp = NULL;
	if ((s = calloc(1, sizeof(*s))) == NULL)
		return cdx_error(CDX_ENOMEM, "out of memory");
	config_copy(&s->cfg, cfg);
	s->nworkers = cfg->threads ? cfg->threads : (uint32_t) cdx_cpu_count();
	if (s->cfg.queue_max == 0)
		s->cfg.queue_max = 16 * s->nworkers;
	s->start_ms = cdx_wall_ms();
	pthread_mutex_init(&s->set_mu, NULL);
	pthread_mutex_init(&s->cm_mu, NULL);
	pthread_mutex_init(&s->q_mu, NULL);
	pthread_cond_init(&s->q_cv, NULL);
	pthread_mutex_init(&s->r_mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->r_cv, &ca);
	pthread_mutex_init(&s->w_mu, NULL);
	pthread_cond_init(&s->w_cv, &ca);
	pthread_condattr_destroy(&ca);

	/* Workers use every core already; OpenBLAS's own pool would only
	 * compete with them (refine and coarse assignment call BLAS). */
	cdx_blas_set_threads(1);

	if ((rc = cdx__srv_adapt_alloc(&s->adapt, &s->cfg)) != CDX_OK
	    || (rc = cdx__srv_load_initial(s)) != CDX_OK) {
		server_free(s);
		return rc;
	}
	if (s->cfg.online_recall_fraction > 0) {
		struct cdx_online_recall_config oc = {
			.sample_fraction = s->cfg.online_recall_fraction,
			.cpu_budget = s->cfg.online_recall_cpu,
			.queue_max = 256,
			.on_check = s->adapt != NULL ? cdx__srv_adapt_check : NULL,
			.on_check_arg = s->adapt,
		};
		cdx_online_recall *o = NULL;
		if ((rc = cdx_online_recall_start(&o, &oc)) != CDX_OK) {
			teardown(s);
			return rc;
		}
		s->online = o;
		cdx_info("SRV-RECALL",
		    "online recall: re-running %.3g%% of queries exactly within %.3g of a core",
		    100.0 * s->cfg.online_recall_fraction, s->cfg.online_recall_cpu);
	}
	if ((rc = cdx__srv_workers_start(s)) != CDX_OK || (rc = cdx__srv_reloader_start(s)) != CDX_OK
	    || (rc = cdx__srv_sockets_open(s)) != CDX_OK || (rc = cdx__srv_watchdog_start(s)) != CDX_OK
	    || (rc = cdx__srv_http_start(s)) != CDX_OK || (rc = cdx__srv_http_search_start(s)) != CDX_OK) {
		char msg[1024];
		snprintf(msg, sizeof(msg), "%s", cdx_last_error());
		atomic_store(&s->stopping, 1);
		teardown(s);
		return cdx_error(rc, "%s", msg);
	}
	cdx_info("SRV-READY", "candex %s serving %s with %u workers, queue %u, %zu contexts", CANDEX_VERSION,
	    s->cfg.index_dir, s->nworkers, s->cfg.queue_max, s->nctxs);
	*sp = s;
	return CDX_OK;
}

void
cdx_server_stop(cdx_server *s)
{
	if (s == NULL)
		return;
	/* New requests are answered UNAVAILABLE from now on; the listeners stay
	 * open until the end because closing one also closes its connections. */
	atomic_store(&s->stopping, 1);
	int pending = atomic_load(&s->in_flight);
	cdx_info("SRV-STOP", "stopping: draining %d in-flight request(s)", pending);
	uint64_t until = cdx_now_us() + (uint64_t) s->cfg.drain_ms * 1000u;
	while (atomic_load(&s->in_flight) > 0 && cdx_now_us() < until)
		sleep_ms(2);
	if (atomic_load(&s->in_flight) > 0)
		cdx_warn("SRV-DRAIN", "%d request(s) still in flight after %u ms; closing anyway",
		    atomic_load(&s->in_flight), s->cfg.drain_ms);
	/* A reply handed to nng is queued on its connection, not yet written:
	 * give the transports a moment before the sockets close. */
	sleep_ms(50);
	teardown(s);
	cdx_info("SRV-STOPPED", "stopped");
}

/* The self-pipe: a signal handler only writes the signal number into it.
 * (signalfd would need the signals blocked in every thread, and OpenBLAS
 * starts its pool threads before main() runs, with nothing blocked.) */
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

int
cdx_server_run(const struct cdx_server_config *cfg)
{
	cdx_server *s;
	struct sigaction sa;

	cdx_log_set_level(cfg->log_level);
	if (pipe2(sig_pipe, O_CLOEXEC) != 0) {
		cdx_err("SRV-START-FAIL", "pipe: %s", strerror(errno));
		return 1;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGHUP, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	/* The threads the server starts inherit a mask that blocks these
	 * signals, so they land on this thread (or on a thread that existed
	 * before, such as OpenBLAS's pool: the handler works anywhere). */
	sigset_t set, old;
	sigemptyset(&set);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, &old);
	int rc = 0;
	int started = cdx_server_start(&s, cfg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (started != CDX_OK) {
		cdx_err("SRV-START-FAIL", "%s", cdx_last_error());
		rc = 1;
		goto out;
	}
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
			cdx_err("SRV-SIGNAL", "signal pipe: %s", n < 0 ? strerror(errno) : "closed");
			break;
		}
		if (signo == SIGHUP) {
			cdx_info("SRV-SIGHUP", "SIGHUP: reloading changed collections");
			cdx_server_request_reload(s);
			continue;
		}
		cdx_info("SRV-SIGNAL", "%s: shutting down", signo == SIGINT ? "SIGINT" : "SIGTERM");
		break;
	}
	cdx_server_stop(s);
out:
	signal(SIGHUP, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	close(sig_pipe[0]);
	close(sig_pipe[1]);
	sig_pipe[0] = sig_pipe[1] = -1;
	return rc;
}
