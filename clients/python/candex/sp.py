"""The transport of docs/protocol.md, section 1: nng's SP framing for a REQ
peer over tcp://, ipc:// and tls+tcp://, written out with the socket
module, so that no nng binding is needed.

A Connection is one stream to the server. It sends the 8-byte handshake,
checks the server's, and then carries frames: an 8-byte big-endian length
(preceded by a type byte 0x01 on ipc://), a 4-byte request id with the
high bit set, and the protobuf payload. Replies whose id is not the one
awaited (late answers to requests given up on) are dropped.
"""

import socket
import ssl
import struct
import time

HANDSHAKE_REQ = b"\x00SP\x00\x00\x30\x00\x00"  # protocol REQ0 (48)
HANDSHAKE_REP = b"\x00SP\x00\x00\x31\x00\x00"  # protocol REP0 (49)
IPC_MESSAGE = 0x01
ID_HIGH_BIT = 0x80000000


class TransportError(Exception):
    """The connection failed or closed; the caller may reconnect."""


class TlsError(TransportError):
    """The TLS handshake failed: the server's certificate is not trusted or
    names another host, or the server refused this client's certificate.
    Trying again will not help."""


class Timeout(Exception):
    """No reply before the deadline; the connection is still usable."""


def parse_url(url):
    """Split a candex URL into (scheme, address)."""
    for scheme in ("tcp", "ipc", "tls+tcp"):
        prefix = scheme + "://"
        if url.startswith(prefix):
            rest = url[len(prefix):]
            if scheme == "ipc":
                if not rest:
                    raise ValueError("ipc:// URL without a path: %r" % url)
                return scheme, rest
            host, sep, port = rest.rpartition(":")
            if not sep or not port.isdigit() or not host:
                raise ValueError("expected %sHOST:PORT, not %r" % (prefix, url))
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
            return scheme, (host, int(port))
    raise ValueError("unsupported URL %r (tcp://, ipc://, tls+tcp://)" % url)


class Connection:
    """One SP connection to a REP socket."""

    def __init__(self, url, connect_timeout, tls_context=None, server_name=None):
        self.url = url
        self.scheme, address = parse_url(url)
        self.ipc = self.scheme == "ipc"
        self.sock = None
        self._buf = bytearray()
        deadline = time.monotonic() + connect_timeout
        try:
            if self.ipc:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(connect_timeout)
                self.sock.connect(address)
            else:
                self.sock = socket.create_connection(address, timeout=connect_timeout)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.scheme == "tls+tcp":
                    ctx = tls_context or ssl.create_default_context()
                    self.sock = ctx.wrap_socket(self.sock, server_hostname=server_name or address[0])
            self._send_all(HANDSHAKE_REQ, deadline)
            peer = self._recv_exact(8, deadline)
        except TlsError as e:
            self.close()
            raise TlsError("TLS handshake with %s failed: %s" % (url, e)) from None
        except ssl.SSLError as e:  # an OSError: caught first
            self.close()
            raise TlsError("TLS handshake with %s failed: %s" % (url, e)) from None
        except TransportError as e:
            self.close()
            if self.scheme == "tls+tcp":
                # a TLS 1.3 server checks the client's certificate after
                # the client's side of the handshake is done, and closes
                # the connection if it refuses it
                raise TlsError("%s closed the TLS connection before the SP handshake (does it "
                               "want a client certificate signed by its CA?): %s" % (url, e)) from None
            raise TransportError("cannot connect to %s: %s" % (url, e)) from None
        except (OSError, Timeout) as e:
            self.close()
            raise TransportError("cannot connect to %s: %s" % (url, e)) from None
        if peer != HANDSHAKE_REP:
            self.close()
            raise TransportError("%s is not a candex server (SP handshake %s)" % (url, peer.hex()))

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def _send_all(self, data, deadline):
        # a frame sent in part cannot be taken back: a timeout here breaks
        # the connection, unlike one while waiting for a reply
        view = memoryview(data)
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransportError("timed out sending to %s" % self.url)
            self.sock.settimeout(left)
            try:
                n = self.sock.send(view)
            except (socket.timeout, ssl.SSLWantWriteError):
                continue
            except ssl.SSLError as e:
                raise TlsError("send to %s: %s" % (self.url, e)) from None
            except OSError as e:
                raise TransportError("send to %s: %s" % (self.url, e)) from None
            view = view[n:]

    def _fill(self, n, deadline):
        """Read until the buffer holds at least n bytes. Nothing is consumed,
        so a timeout leaves the stream where it was."""
        while len(self._buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout()
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(max(65536, n - len(self._buf)))
            except socket.timeout:
                raise Timeout() from None
            except ssl.SSLError as e:
                raise TlsError("receive from %s: %s" % (self.url, e)) from None
            except OSError as e:
                raise TransportError("receive from %s: %s" % (self.url, e)) from None
            if not chunk:
                raise TransportError("%s closed the connection" % self.url)
            self._buf += chunk

    def _recv_exact(self, n, deadline):
        self._fill(n, deadline)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def send(self, request_id, payload, deadline):
        """Send one request: frame header, request id, payload."""
        if not request_id & ID_HIGH_BIT:
            raise ValueError("request ids have the high bit set")
        head = bytes([IPC_MESSAGE]) if self.ipc else b""
        head += struct.pack(">QI", 4 + len(payload), request_id)
        self._send_all(head + payload, deadline)

    def recv(self, request_id, deadline, max_message):
        """Receive frames until the reply to request_id; return its payload.
        Replies to other ids (late answers to attempts given up on) are
        dropped."""
        head = 9 if self.ipc else 8
        while True:
            self._fill(head, deadline)
            if self.ipc and self._buf[0] != IPC_MESSAGE:
                raise TransportError("%s sent message type %d" % (self.url, self._buf[0]))
            (length,) = struct.unpack(">Q", bytes(self._buf[head - 8:head]))
            if length < 4 or length > max_message:
                raise TransportError("%s sent a %d-byte message" % (self.url, length))
            self._fill(head + length, deadline)
            frame = self._recv_exact(head + length, deadline)
            (got_id,) = struct.unpack(">I", frame[head:head + 4])
            if got_id == request_id:
                return frame[head + 4:]
