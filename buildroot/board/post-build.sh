#!/bin/sh
# Buildroot post-build: the rootfs policy of the camera (same as qemu/build_image.py).
# $1 = TARGET_DIR. Environment: CAMERA_PROFILE (release|dev), CAMERA_FACTORY_CA (PEM path),
# CAMERA_OTA_KEYRING (root certificate of the release OTA PKI, `camera-ota pki init`).
set -eu
T=$1
PROFILE=${CAMERA_PROFILE:-release}
mkdir -p "$T/data" "$T/boot-env" "$T/etc/camera"
echo "$PROFILE" > "$T/etc/camera/profile"
# camera: the unprivileged user the agent runs as (agent/privileges.py, camera-init); no account
# has a password hash.
printf 'root:x:0:0:root:/root:/bin/false\ncamera:x:1000:1000:camera services:/nonexistent:/bin/false\n' > "$T/etc/passwd"
printf 'root:x:0:\ncamera:x:1000:\n' > "$T/etc/group"
printf 'root:!*:19000::::::\ncamera:!*:19000::::::\n' > "$T/etc/shadow"; chmod 600 "$T/etc/shadow"
ln -sf /run/resolv.conf "$T/etc/resolv.conf"
[ -n "${CAMERA_FACTORY_CA:-}" ] && install -m 0644 "$CAMERA_FACTORY_CA" "$T/etc/camera/factory-ca.pem"
[ -n "${CAMERA_OTA_KEYRING:-}" ] && install -m 0644 "$CAMERA_OTA_KEYRING" "$T/etc/camera/ota-keyring.pem"
echo "${CAMERA_CONFIRM_DEADLINE:-180}" > "$T/etc/camera/confirm-deadline"
# As qemu/build_image.py (agent_config): board/rootfs/agent.json plus this image's version, which
# the agent reports and OTA compares; the same CAMERA_FIRMWARE_VERSION post-image.sh signs.
VERSION=${CAMERA_FIRMWARE_VERSION:-1.0.0}
"$HOST_DIR/bin/python3" - "$T/etc/camera/agent.json" "$VERSION" <<'PY'
import json, sys
path, version = sys.argv[1], sys.argv[2]
with open(path) as fh:
    cfg = json.load(fh)
cfg.setdefault("device", {})["firmware_version"] = version
with open(path, "w") as fh:
    fh.write(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
PY
printf 'NAME="Camera firmware"\nVERSION_ID="%s"\nVARIANT_ID="%s"\n' "$VERSION" "$PROFILE" > "$T/usr/lib/os-release"
ln -sf ../usr/lib/os-release "$T/etc/os-release"
# The drivers are built in (linux.fragment): camera-init's module list is empty, not missing.
: > "$T/etc/camera/modules"
# No getty in release: camera-init is PID 1 (kernel cmdline init=/sbin/camera-init via the initramfs).
rm -f "$T/etc/inittab"
