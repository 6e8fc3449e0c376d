"""RTSP over TLS streaming server: sans-I/O protocol core plus a thin asyncio TLS adapter."""
