"""The generated protobuf module, candex_pb2 (never committed): from this
package's directory if it was generated there, else from sys.path."""

try:
    from . import candex_pb2 as pb  # noqa: F401
except ImportError:
    try:
        import candex_pb2 as pb  # noqa: F401
    except ImportError:
        raise ImportError(
            "candex_pb2 is missing: generate it from the repository root with\n"
            "  protoc -Iproto --python_out=clients/python/candex proto/candex.proto"
        ) from None
