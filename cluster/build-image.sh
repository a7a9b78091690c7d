#!/usr/bin/env bash
# Builds the Cohort image (default tag cohort:local; IMAGE=... to change)
# without a registry: the image starts FROM scratch.
#
#   cluster/build-image.sh            a statically linked release binary
#                                     (its own target dir, target/static;
#                                     a few minutes the first time)
#   cluster/build-image.sh BINARY     an existing binary, with the shared
#                                     libraries ldd lists copied beside it
#                                     (seconds; what the compose test uses)
#
# Checked: the static build takes about 3.5 min from nothing on 2 cores
# and gives a 17 MB image that runs in a scratch container.
#
# Docker here has only the legacy builder (no BuildKit), so the build
# context is a small directory made for it, never the repository.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
image=${IMAGE:-cohort:local}
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/etc" "$context/data"
printf 'hosts: files dns\n' > "$context/etc/nsswitch.conf"
if [ $# -ge 1 ]; then
    binary=$1
    cp "$binary" "$context/cohort"
    # Every library the binary loads, at the path the loader looks for it.
    ldd "$binary" | awk '/=> \// {print $3} /^[ \t]*\// {print $1}' | sort -u | while read -r lib; do
        mkdir -p "$context$(dirname "$lib")"
        cp -L "$lib" "$context$lib"
    done
else
    (cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
        --target x86_64-unknown-linux-gnu --target-dir target/static --bin cohort)
    cp "$repo/target/static/x86_64-unknown-linux-gnu/release/cohort" "$context/cohort"
    strip "$context/cohort" 2>/dev/null || true
fi
cp "$here/Dockerfile" "$context/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t "$image" "$context" >/dev/null
echo "built $image"
