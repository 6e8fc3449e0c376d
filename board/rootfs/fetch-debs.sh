#!/bin/sh
# Download the arm64 Debian packages of the image (closure of the names given, no recommends) into
# OUTDIR/debs using a private apt configuration: arm64 only and an empty dpkg status, so the host's
# installed packages and architecture do not leak into the set (apt-cache depends --recurse mixes
# amd64 names in). Usage: fetch-debs.sh OUTDIR PACKAGE...
set -eu
OUT=$(realpath -m "$1"); shift
mkdir -p "$OUT/apt/lists/partial" "$OUT/apt/cache/archives/partial" "$OUT/debs" "$OUT/apt/etc/preferences.d"
: > "$OUT/apt/status"
cat > "$OUT/apt/apt.conf" <<EOC
APT::Architecture "arm64";
APT::Architectures { "arm64"; };
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Dir::State "$OUT/apt";
Dir::State::Lists "$OUT/apt/lists";
Dir::State::status "$OUT/apt/status";
Dir::Cache "$OUT/apt/cache";
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "/etc/apt/sources.list.d";
Dir::Etc::Preferences "$OUT/apt/etc/preferences";
Dir::Etc::PreferencesParts "$OUT/apt/etc/preferences.d";
Debug::NoLocking "true";
EOC
export APT_CONFIG="$OUT/apt/apt.conf"
if [ ! -f "$OUT/apt/.updated" ]; then
    apt-get update -q >/dev/null
    touch "$OUT/apt/.updated"
fi
apt-get install -y -q --download-only "$@" >/dev/null
# The exact closure, for the SBOM and for unpacking only what this set needs.
apt-get -s install "$@" | awk '/^Inst /{print $2" "$3}' | tr -d '()[]' | sort > "$OUT/closure.txt"
# Exactly the closure: a package dropped from the list must not linger in the image.
rm -f "$OUT/debs/"*.deb
while read -r name ver; do
    f=$(ls "$OUT/apt/cache/archives/${name}_"*"_arm64.deb" "$OUT/apt/cache/archives/${name}_"*"_all.deb" 2>/dev/null | head -1)
    [ -n "$f" ] || { echo "missing deb for $name" >&2; exit 1; }
    ln -f "$f" "$OUT/debs/" 2>/dev/null || cp -f "$f" "$OUT/debs/"
done < "$OUT/closure.txt"
echo "fetched $(wc -l < "$OUT/closure.txt") packages"
