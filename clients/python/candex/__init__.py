"""candex: a pure-Python client for the candex candidate-retrieval server.

    import candex
    with candex.Client("tcp://127.0.0.1:7700", timeout=2.0, retries=2) as c:
        r = c.search("tracks", keys=["spotify:track:42"], k=10)
        for hit in r.results[0].hits:
            print(hit.id, hit.key, hit.score)

It implements docs/protocol.md itself (SP framing over tcp://, ipc:// and
tls+tcp://) and needs only the protobuf package (Debian: python3-protobuf)
and candex_pb2, generated from proto/candex.proto by protoc.
"""

from ._pb import pb
from .client import Client, Error, RETRYABLE, PROTOCOL_VERSION

__all__ = ["Client", "Error", "RETRYABLE", "PROTOCOL_VERSION", "pb"]
