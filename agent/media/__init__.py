"""Media capability: camera sources, encoders, stream hubs for RTSP, two-way audio output."""
