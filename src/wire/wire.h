/*
 * wire.h — pieces of the wire protocol that the client library and the
 * server share: protobuf <-> nng_msg, nng error codes -> candex codes, and
 * mutual-TLS configuration from PEM files. Internal (cdx__ prefix).
 */
#ifndef CANDEX_WIRE_H
#define CANDEX_WIRE_H

#include <stddef.h>

#include <nng/nng.h>
#include <nng/supplemental/tls/tls.h>
#include <protobuf-c/protobuf-c.h>

#include "candex.pb-c.h"

#define CDX_PROTOCOL_VERSION 1

/* cdx__wire_pack serializes a protobuf message into a new nng_msg. On
 * success *mp is set and the caller owns it (nng owns it once a send succeeds). */
int cdx__wire_pack(const ProtobufCMessage *pb, nng_msg **mp);

/* cdx__nng_code maps an nng error to the closest candex code. */
int cdx__nng_code(int nng_rv);

/* cdx_wire_http_status is the HTTP status that stands for a candex status
 * code on the HTTP/JSON gateway (docs/protocol.md lists them). */
int cdx_wire_http_status(int code);

/* cdx__tls_config builds an nng TLS configuration for mode (client or
 * server) with our certificate + key (both or neither) and the CA that peers
 * must be signed by; with a CA, peers must present a certificate (mutual
 * TLS). server_name (client only, may be NULL) is checked against the
 * server's certificate. On success *cfgp holds one reference the caller
 * drops with nng_tls_config_free(); on failure cdx_error() says which file. */
int cdx__tls_config(nng_tls_config **cfgp, nng_tls_mode mode, const char *cert_file, const char *key_file,
    const char *ca_file, const char *server_name);

#endif
