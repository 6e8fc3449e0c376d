#!/bin/sh
# Assemble and sign the slot FIT: kernel + initramfs (which carries the rootfs root hash), one
# configuration whose signature covers both. Usage:
#   sign-fit.sh KEYDIR KEYNAME KERNEL INITRAMFS OUT.itb [CONTROL.dtb]
# With CONTROL.dtb the public key is also written into that device tree as required="conf".
set -eu
KEYDIR=$1; KEYNAME=$2; KERNEL=$3; INITRD=$4; OUT=$5; DTB=${6:-}
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
gzip -9 -n -c "$KERNEL" > "$WORK/Image.gz"
cat > "$WORK/image.its" <<EOT
/dts-v1/;
/ {
    description = "camera firmware slot image";
    #address-cells = <1>;
    images {
        kernel {
            description = "Linux kernel";
            data = /incbin/("$WORK/Image.gz");
            type = "kernel";
            arch = "arm64";
            os = "linux";
            compression = "gzip";
            load = <0x40400000>;
            entry = <0x40400000>;
            hash-1 { algo = "sha256"; };
        };
        initramfs {
            description = "camera initramfs (bootverify stage, rootfs root hash)";
            data = /incbin/("$INITRD");
            type = "ramdisk";
            arch = "arm64";
            os = "linux";
            compression = "none";
            hash-1 { algo = "sha256"; };
        };
    };
    configurations {
        default = "conf";
        conf {
            description = "camera boot configuration";
            kernel = "kernel";
            ramdisk = "initramfs";
            signature-1 {
                algo = "sha256,rsa3072";
                key-name-hint = "$KEYNAME";
                sign-images = "kernel", "ramdisk";
            };
        };
    };
};
EOT
if [ -n "$DTB" ]; then
    mkimage -q -f "$WORK/image.its" -k "$KEYDIR" -K "$DTB" -r "$OUT"
else
    mkimage -q -f "$WORK/image.its" -k "$KEYDIR" "$OUT"
fi
