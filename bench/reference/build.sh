#!/bin/sh
# Builds bench/reference/icecc_read against the system libicecc (Debian: libicecc-dev).
# Usage: bench/reference/build.sh   (CXX and CXXFLAGS may be overridden)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
cxx=${CXX:-g++}

if ! command -v "$cxx" >/dev/null 2>&1; then
    echo "build.sh: $cxx not found (install g++)" >&2
    exit 1
fi
# -print-file-name echoes the bare name back when the library is not on the search path.
if ! echo '#include <icecc/comm.h>' | "$cxx" -x c++ -E - >/dev/null 2>&1 \
   || [ "$("$cxx" -print-file-name=libicecc.a)" = libicecc.a ]; then
    echo "build.sh: libicecc-dev is missing (apt-get install -y libicecc-dev)" >&2
    exit 1
fi

# libicecc.a is static, so its own dependencies must be named explicitly.
if ! "$cxx" ${CXXFLAGS:--O2} -std=c++17 -Wall -Wextra -pthread \
        -o "$here/icecc_read" "$here/icecc_read.cpp" \
        -licecc -llzo2 -lzstd -larchive -lcap-ng; then
    echo "build.sh: build failed (linking needs liblzo2-dev libzstd-dev libarchive-dev libcap-ng-dev)" >&2
    exit 1
fi
echo "built $here/icecc_read"
