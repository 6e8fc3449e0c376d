#!/bin/sh
# Generate an RSA-3072 FIT signing key (KEYDIR/NAME.key, NAME.crt) at build time. Never committed.
# Usage: genkey.sh KEYDIR NAME
set -eu
KEYDIR=$1; NAME=$2
mkdir -p "$KEYDIR"; chmod 700 "$KEYDIR"
[ -f "$KEYDIR/$NAME.key" ] && exit 0
umask 077
openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out "$KEYDIR/$NAME.key"
openssl req -batch -new -x509 -days 3650 -key "$KEYDIR/$NAME.key" -subj "/CN=$NAME" -out "$KEYDIR/$NAME.crt"
