/*
 * wire.c — shared by the client library and the server (see wire.h).
 */
#include <stdlib.h>
#include <string.h>

#include "wire/wire.h"
#include "common/common.h"

int
cdx__wire_pack(const ProtobufCMessage *pb, nng_msg **mp)
{
	*mp = NULL;
	size_t len = protobuf_c_message_get_packed_size(pb);
	nng_msg *m;
	if (nng_msg_alloc(&m, len) != 0)
		return cdx_error(CDX_ENOMEM, "cannot allocate a %zu-byte message", len);
	if (protobuf_c_message_pack(pb, nng_msg_body(m)) != len) {
		nng_msg_free(m);
		return cdx_error(CDX_EINTERNAL, "protobuf packing size mismatch");
	}
	*mp = m;
	return CDX_OK;
}

int
cdx__nng_code(int rv)
{
	switch (rv) {
	case 0:
		return CDX_OK;
	case NNG_ENOMEM:
		return CDX_ENOMEM;
	case NNG_ETIMEDOUT:
		return CDX_ETIMEDOUT;
	case NNG_ECLOSED:
		return CDX_ECLOSED;
	case NNG_ECANCELED:
	case NNG_EINTR:
		return CDX_EINTERRUPTED;
	case NNG_EMSGSIZE:
		return CDX_ELIMIT;
	case NNG_EPROTO:
		return CDX_EPROTO;
	case NNG_EINVAL:
	case NNG_EADDRINVAL:
	case NNG_ENOTSUP:
	case NNG_EBADTYPE:
		return CDX_EINVAL;
	case NNG_EPERM:
		return CDX_EPERM;
	case NNG_EPEERAUTH:
		return CDX_ETLS;
	case NNG_ENOFILES:
	case NNG_ENOSPC:
		return CDX_ENOSPC;
	case NNG_ECRYPTO:
		return CDX_ETLS;
	case NNG_ECONNREFUSED:
	case NNG_ECONNRESET:
	case NNG_ECONNSHUT:
	case NNG_ECONNABORTED:
	case NNG_EUNREACHABLE:
	case NNG_EADDRINUSE:
	case NNG_EAGAIN:
	case NNG_ESTATE:
		return CDX_EUNAVAIL;
	default:
		return CDX_EINTERNAL;
	}
}

int
cdx_wire_http_status(int code)
{
	switch (code) {
	case CDX_OK:
		return 200;
	case CDX_ENOTFOUND:
		return 404;
	case CDX_EPERM:
		return 403;
	case CDX_EMODEL:
		return 409;
	case CDX_ELIMIT:
		return 413;
	case CDX_EOVERLOAD:
	case CDX_EUNAVAIL:
	case CDX_ECLOSED:
	case CDX_EINTERRUPTED:
		return 503;
	case CDX_ETIMEDOUT:
		return 504;
	case CDX_EINVAL:
	case CDX_EDIM:
	case CDX_ENONFINITE:
	case CDX_EDUP:
	case CDX_EEMPTY:
	case CDX_EVERSION:
	case CDX_EPROTO:
		return 400;
	default: /* ENOMEM, EIO, ENOSPC, ECORRUPT, EFAISS, EINTERNAL, ETLS */
		return 500;
	}
}

int
cdx__tls_config(nng_tls_config **cfgp, nng_tls_mode mode, const char *cert_file, const char *key_file,
    const char *ca_file, const char *server_name)
{
	nng_tls_config *cfg = NULL;
	char *cert = NULL, *key = NULL;
	int rv, rc = CDX_OK;

	*cfgp = NULL;
	if ((cert_file == NULL) != (key_file == NULL))
		return cdx_error(CDX_EINVAL, "TLS needs both a certificate and a key file (or neither)");
	if ((rv = nng_tls_config_alloc(&cfg, mode)) != 0)
		return cdx_error(cdx__nng_code(rv), "TLS unavailable: %s", nng_strerror(rv));
	if (cert_file != NULL) {
		size_t len;
		/* The key in its own file: nng_tls_config_cert_key_file wants one
		 * file with both, so read them and pass the PEM texts. */
		if ((rc = cdx_read_file(cert_file, &cert, &len)) != CDX_OK
		    || (rc = cdx_read_file(key_file, &key, &len)) != CDX_OK)
			goto fail;
		if ((rv = nng_tls_config_own_cert(cfg, cert, key, NULL)) != 0) {
			rc = cdx_error(CDX_EINVAL, "TLS certificate %s / key %s: %s", cert_file, key_file,
			    nng_strerror(rv));
			goto fail;
		}
	}
	if (ca_file != NULL) {
		if ((rv = nng_tls_config_ca_file(cfg, ca_file)) != 0) {
			rc = cdx_error(CDX_EINVAL, "TLS CA file %s: %s", ca_file, nng_strerror(rv));
			goto fail;
		}
		if ((rv = nng_tls_config_auth_mode(cfg, NNG_TLS_AUTH_MODE_REQUIRED)) != 0) {
			rc = cdx_error(CDX_EINVAL, "TLS auth mode: %s", nng_strerror(rv));
			goto fail;
		}
	} else if (mode == NNG_TLS_MODE_CLIENT) {
		/* No CA to check the server against: the caller asked for
		 * encryption without authentication. */
		nng_tls_config_auth_mode(cfg, NNG_TLS_AUTH_MODE_NONE);
	}
	if (server_name != NULL && (rv = nng_tls_config_server_name(cfg, server_name)) != 0) {
		rc = cdx_error(CDX_EINVAL, "TLS server name: %s", nng_strerror(rv));
		goto fail;
	}
	free(cert);
	free(key);
	*cfgp = cfg;
	return CDX_OK;
fail:
	free(cert);
	free(key);
	nng_tls_config_free(cfg);
	return rc;
}
