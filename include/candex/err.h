/*
 * candex/err.h — error codes shared by the library, the server and the client.
 *
 * Every candex function that can fail returns an int: 0 (CDX_OK) on success,
 * or one of the positive codes below. cdx_strerror() names a code. Codes are
 * part of the wire protocol (Response.status) and are never renumbered: new
 * ones are appended.
 */
#ifndef CANDEX_ERR_H
#define CANDEX_ERR_H

#ifdef __cplusplus
extern "C" {
#endif

/* X(name, number, description) */
#define CDX_ERRORS(X)                                             \
	X(OK, 0, "success")                                       \
	X(ENOMEM, 1, "out of memory")                             \
	X(EINVAL, 2, "invalid argument")                          \
	X(EIO, 3, "I/O error")                                    \
	X(ENOSPC, 4, "no space left on device")                   \
	X(ECORRUPT, 5, "corrupt or truncated file")               \
	X(EFAISS, 6, "faiss error")                               \
	X(ENOTFOUND, 7, "not found")                              \
	X(EDIM, 8, "dimension mismatch")                          \
	X(ENONFINITE, 9, "non-finite value (NaN or Inf)")         \
	X(EDUP, 10, "duplicate id or key")                        \
	X(EEMPTY, 11, "empty input")                              \
	X(EVERSION, 12, "unsupported format or protocol version") \
	X(EPROTO, 13, "malformed message")                        \
	X(ETIMEDOUT, 14, "deadline exceeded")                     \
	X(EOVERLOAD, 15, "server overloaded")                     \
	X(EMODEL, 16, "embedding model version mismatch")         \
	X(EPERM, 17, "permission denied")                         \
	X(EUNAVAIL, 18, "unavailable")                            \
	X(ELIMIT, 19, "request exceeds a configured limit")       \
	X(ECLOSED, 20, "closed")                                  \
	X(EINTERNAL, 21, "internal error")                        \
	X(EINTERRUPTED, 22, "interrupted")                        \
	X(ETLS, 23, "TLS handshake or certificate failure")

enum cdx_err {
#define CDX__ERR_ENUM(name, num, desc) CDX_##name = num,
	CDX_ERRORS(CDX__ERR_ENUM)
#undef CDX__ERR_ENUM
};

/* cdx_strerror returns a static description of code; never NULL. */
const char *cdx_strerror(int code);

/* cdx_errname returns the code's symbolic name ("EDIM"); never NULL. */
const char *cdx_errname(int code);

#ifdef __cplusplus
}
#endif
#endif
