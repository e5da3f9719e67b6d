import socket
for host, port in [("127.0.0.1", @PORT@), ("8.8.8.8", 53), ("1.1.1.1", 443)]:
    try:
        socket.create_connection((host, port), timeout=2).close()
        raise SystemExit(0)  # connected: the network is reachable
    except OSError:
        pass
raise SystemExit(1)
