/*
 * signals.h — how `candex serve` and `candex route` receive SIGHUP, SIGTERM
 * and SIGINT: handlers write to a self-pipe, the main thread waits on it.
 */
#ifndef CANDEX_SIGNALS_H
#define CANDEX_SIGNALS_H

#include <signal.h>

/* cdx_signals_open installs the handlers, ignores SIGPIPE and blocks the
 * three signals in the calling thread until cdx_signals_started(), so that
 * the threads it starts meanwhile never take them. *saved gets the mask to
 * restore. */
int cdx_signals_open(sigset_t *saved);
/* cdx_signals_started restores the calling thread's mask. */
void cdx_signals_started(const sigset_t *saved);
/* cdx_signals_wait blocks until a signal arrives and returns its number,
 * or -1 (with cdx_error() set) if the pipe failed. */
int cdx_signals_wait(void);
/* cdx_signals_close restores the default actions and closes the pipe. */
void cdx_signals_close(void);

#endif
