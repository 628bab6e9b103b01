#!/bin/sh
# Shrinks a Debian root file system holding postgresql-15 to what the test
# image runs: the server binaries, initdb, pg_ctl and psql. Run inside the
# image (Dockerfile) or in the mmdebstrap chroot (scripts/build-images.sh).
# perl is only needed by postgresql-common's wrappers (unused here), LLVM only
# by the optional JIT (PostgreSQL silently runs without a JIT provider).
set -eu
pkgs=""
for p in perl perl-modules-5.36 libperl5.36 libllvm14 libz3-4; do
    if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed'; then
        pkgs="$pkgs $p"
    fi
done
[ -z "$pkgs" ] || dpkg --purge --force-depends --force-remove-essential $pkgs
# the cluster that postgresql-common's postinst created: the entrypoint makes its own
rm -rf /var/lib/postgresql/15 /etc/postgresql/15 /usr/share/i18n \
       /usr/lib/postgresql/15/lib/llvmjit* /usr/lib/postgresql/15/lib/bitcode \
       /usr/share/doc/* /usr/share/man/* /usr/share/locale/* /usr/share/info/* \
       /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/log/*.log
