"""Default addresses, kept in a module of their own so that the command line can show them in
its help without importing the servers (and asyncio) on every start."""

#: icecream's scheduler port (what ``icetools record`` connects to, and the stand-in's default).
SCHEDULER_PORT = 8765
#: ``icetools serve`` / ``replay --serve``.
SERVE_PORT = 8770
SERVE_LISTEN = f"127.0.0.1:{SERVE_PORT}"
#: ``replay --as-scheduler``: where monitors look for a scheduler.
STANDIN_LISTEN = f"127.0.0.1:{SCHEDULER_PORT}"
#: Websocket clients (browsers) a web server serves at once (--max-clients).
SERVE_MAX_CLIENTS = 100
