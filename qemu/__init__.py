"""Build and run the camera reference board image in QEMU (aarch64 virt)."""
