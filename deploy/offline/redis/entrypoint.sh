#!/bin/sh
# redis-server as the redis user; protected mode off, as the official image is built.
set -eu
if [ "${1#-}" != "$1" ]; then
    set -- redis-server "$@"
fi
if [ "$1" = redis-server ]; then
    set -- "$@" --protected-mode no
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
