"""Device-side services of the reference IP camera: management plane, streaming, OTA installer."""
