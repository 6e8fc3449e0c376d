#!/bin/sh
# Append a dm-verity hash tree to a rootfs image (no superblock: every parameter is carried by the
# signed initramfs instead of the disk). Writes KEY=VALUE lines for image.env. Usage:
#   verity.sh ROOTFS.img OUT.env
set -eu
IMG=$1; ENV=$2
size=$(stat -c %s "$IMG")
blocks=$(( (size + 4095) / 4096 ))
truncate -s $((blocks * 4096)) "$IMG"
salt=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
out=$(veritysetup format "$IMG" "$IMG" --no-superblock --hash=sha256 --data-block-size=4096 \
      --hash-block-size=4096 --data-blocks=$blocks --hash-offset=$((blocks * 4096)) --salt="$salt")
root=$(echo "$out" | awk '/^Root hash:/{print $3}')
[ ${#root} -eq 64 ]
{
    echo "CAMERA_ROOT_HASH=$root"
    echo "CAMERA_SALT=$salt"
    echo "CAMERA_DATA_BLOCKS=$blocks"
    echo "CAMERA_HASH_OFFSET=$((blocks * 4096))"
} > "$ENV"
