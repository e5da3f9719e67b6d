#!/bin/sh
# device_carry.sh - gathers what a build of codemoe needs on the lent GPU
# machine (the device tool), whose image lacks this project's build
# dependencies and has no network, into the git-ignored carry/ (and .gl/),
# which the device tool's `carry` then sends with the working tree.
#
#   sh tools/device_carry.sh [SHARED]        (SHARED: default ../shared)
#
# carry/ gets: Debian's Vulkan headers, glslc and shaderc (vk/*.deb, to
# unpack into /tmp/vk there); liblzma's headers and static library
# (inc/, lib/); stb's headers (inc/stb: the image has no libstb-dev);
# the autotools output of this tree (autogen.tgz: no autoconf there);
# the corpus valid splits, the StarCoder vocabulary and llama.cpp's source
# tarball (shared/, for the races and train/contenders.sh); the commit
# (commit).  .gl/ gets the Vulkan loader as the device README says.  The
# training data (train/README.md) is tools/pretokenize's output, made apart.
#
# On the device, before ./configure:
#   for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
#   mkdir -p /tmp/vk /tmp/vklib && for f in carry/vk/*.deb; do dpkg -x $f /tmp/vk; done
#   ln -sf /usr/lib/x86_64-linux-gnu/libvulkan.so.1 /tmp/vklib/libvulkan.so
#   export PATH=/tmp/vk/usr/bin:$PATH LD_LIBRARY_PATH=/tmp/vk/usr/lib/x86_64-linux-gnu
#   export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
#   tar xzf carry/autogen.tgz && touch aclocal.m4 && sleep 1 &&
#       touch configure config.h.in && sleep 1 && touch Makefile.in
#   ./configure CPPFLAGS="-I$PWD/carry/inc -I/tmp/vk/usr/include" \
#       LDFLAGS="-L$PWD/carry/lib -L/tmp/vklib" --with-vulkan GLSLC=/tmp/vk/usr/bin/glslc
# (the touches keep make from running automake, which the image lacks).
# Each device call sends the tree again: files a script copies into carry/
# there are gone at the next call, so copy them elsewhere (/tmp).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${1:-$ROOT/../shared}
C=$ROOT/carry
cd "$ROOT"
grep -qx '/carry/' .gitignore || { echo "device_carry.sh: carry/ is not git-ignored" >&2; exit 1; }
mkdir -p "$C/vk" "$C/inc" "$C/lib" "$C/shared/vocab" "$C/shared/anchors/llama.cpp" .gl
grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo /.gl/ >>.git/info/exclude

# Debian packages, downloaded (not installed) for amd64
o="-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64"
mkdir -p /tmp/amd64/partial
# shellcheck disable=SC2086 # o: several options
apt-get $o update -qq
# shellcheck disable=SC2086
(cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 >/dev/null)
# shellcheck disable=SC2086
(cd "$C/vk" && apt-get $o download libvulkan-dev glslc libshaderc1 >/dev/null)

# headers and the static library the image lacks
cp -r /usr/include/lzma.h /usr/include/lzma "$C/inc/"
cp /usr/lib/x86_64-linux-gnu/liblzma.a "$C/lib/"
cp -r /usr/include/stb "$C/inc/"

# this tree's autotools output
T=$(mktemp -d)
git archive HEAD | tar x -C "$T"
(cd "$T" && ./bootstrap >/dev/null 2>&1)
tar czf "$C/autogen.tgz" -C "$T" configure Makefile.in aclocal.m4 config.h.in build-aux
rm -rf "$T"
git rev-parse --short HEAD >"$C/commit"

# data: valid splits, the vocabulary, llama.cpp's source
for d in "$SHARED"/corpus/*/; do
    l=$(basename "$d")
    [ -f "$d/valid.jsonl.xz" ] && mkdir -p "$C/shared/corpus/$l" && cp "$d/valid.jsonl.xz" "$C/shared/corpus/$l/"
done
cp "$SHARED/vocab/ggml-vocab-starcoder.gguf" "$C/shared/vocab/"
cp "$SHARED"/anchors/llama.cpp/llama.cpp-*.tar.xz "$C/shared/anchors/llama.cpp/"
du -sh "$C" .gl
echo "device_carry.sh: carry/ and .gl/ ready (commit $(cat "$C/commit")); name both in the device call's carry"
