#!/bin/sh
# Buildroot post-build: the rootfs policy of the camera (same as qemu/build_image.py).
# $1 = TARGET_DIR. Environment: CAMERA_PROFILE (release|dev), CAMERA_FACTORY_CA (PEM path),
# CAMERA_OTA_KEYRING (root certificate of the release OTA PKI, `camera-ota pki init`).
set -eu
T=$1
PROFILE=${CAMERA_PROFILE:-release}
mkdir -p "$T/data" "$T/boot-env" "$T/etc/camera"
echo "$PROFILE" > "$T/etc/camera/profile"
echo "root:x:0:0:root:/root:/bin/false" > "$T/etc/passwd"
echo "root:!*:19000::::::" > "$T/etc/shadow"; chmod 600 "$T/etc/shadow"
ln -sf /run/resolv.conf "$T/etc/resolv.conf"
[ -n "${CAMERA_FACTORY_CA:-}" ] && install -m 0644 "$CAMERA_FACTORY_CA" "$T/etc/camera/factory-ca.pem"
[ -n "${CAMERA_OTA_KEYRING:-}" ] && install -m 0644 "$CAMERA_OTA_KEYRING" "$T/etc/camera/ota-keyring.pem"
echo "${CAMERA_CONFIRM_DEADLINE:-180}" > "$T/etc/camera/confirm-deadline"
# No getty in release: camera-init is PID 1 (kernel cmdline init=/sbin/camera-init via the initramfs).
rm -f "$T/etc/inittab"
