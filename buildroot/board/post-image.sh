#!/bin/sh
# Buildroot post-image: verity tree, initramfs with the root hash, signed FIT, key in U-Boot,
# A/B disk. Calls the same board/ scripts as the Debian-assembled QEMU image.
# $1 = BINARIES_DIR. Keys: CAMERA_KEYDIR (generated if absent), CAMERA_PROFILE.
set -eu
B=$1
TOP=$(cd "$BR2_EXTERNAL_CAMERA_PATH/.." && pwd)
PROFILE=${CAMERA_PROFILE:-release}
KEYDIR=${CAMERA_KEYDIR:-$B/keys}
"$TOP/board/genkey.sh" "$KEYDIR" "camera-$PROFILE"
cp "$B/rootfs.squashfs" "$B/rootfs.verity.img"
"$TOP/board/verity.sh" "$B/rootfs.verity.img" "$B/image.env"
{ cat "$B/image.env"; echo "CAMERA_SECURITY_VERSION=${CAMERA_SECURITY_VERSION:-1}";
  echo "CAMERA_FIRMWARE_VERSION=${CAMERA_FIRMWARE_VERSION:-1.0.0}"; echo "CAMERA_PROFILE=$PROFILE"; } > "$B/image.full.env"
# initramfs: busybox + veritysetup from TARGET_DIR, the init script, image.env, the boot modules.
IR=$(mktemp -d); trap 'rm -rf "$IR"' EXIT
mkdir -p "$IR/bin" "$IR/sbin" "$IR/etc/camera" "$IR/proc" "$IR/sys" "$IR/dev" "$IR/root" "$IR/lib"
cp -a "$TARGET_DIR/bin/busybox" "$IR/bin/"
for a in sh mount umount mkdir cat cut tr awk sleep echo chmod cp sync; do ln -sf busybox "$IR/bin/$a"; done
for a in modprobe switch_root reboot poweroff; do ln -sf ../bin/busybox "$IR/sbin/$a"; done
cp -a "$TARGET_DIR/usr/sbin/veritysetup" "$IR/sbin/"
cp -a "$TARGET_DIR/lib/"*.so* "$TARGET_DIR/usr/lib/"libcryptsetup* "$TARGET_DIR/usr/lib/"libdevmapper* \
      "$TARGET_DIR/usr/lib/"libjson-c* "$TARGET_DIR/usr/lib/"libpopt* "$TARGET_DIR/usr/lib/"libuuid* \
      "$TARGET_DIR/usr/lib/"libblkid* "$TARGET_DIR/usr/lib/"libcrypto* "$IR/lib/" 2>/dev/null || true
: > "$IR/etc/camera/modules"
cp "$B/image.full.env" "$IR/etc/camera/image.env"
install -m 0755 "$TOP/board/initramfs/init" "$IR/init"
( cd "$IR" && find . | sort | cpio -o -H newc --quiet -R 0:0 ) | lz4 -l -9 -q > "$B/initramfs.cpio.lz4"
"$TOP/board/sign-fit.sh" "$KEYDIR" "camera-$PROFILE" "$B/Image" "$B/initramfs.cpio.lz4" "$B/slot.itb"
qemu-system-aarch64 -M virt,acpi=off,dumpdtb="$B/board.dtb" -cpu max,pauth=off,sve=off -smp 2 -m 1024 -display none -nodefaults
"$TOP/board/embed-key.sh" "$B/u-boot-nodtb.bin" "$B/board.dtb" "$KEYDIR" "camera-$PROFILE" "$B/u-boot.bin" "$B/control.dtb"
"$TOP/board/layout.sh" "$B/disk.img" "$B/slot.itb" "$B/slot.itb" "$B/rootfs.verity.img" "$B/rootfs.verity.img"
