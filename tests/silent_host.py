"""A local TCP port that accepts no connection and refuses none: connects hang like a black-holed host."""

import contextlib
import socket


@contextlib.contextmanager
def silent_host():
    """Yields "http://127.0.0.1:PORT". A listening socket with a zero backlog holds one queued connection;
    with that slot taken, further connection attempts get no answer until their own timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=1.0)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        filler.close()
        server.close()
