#!/bin/sh
# The official image's template step: each /etc/nginx/templates/NAME.template becomes
# /etc/nginx/conf.d/NAME with only the variables set in the environment substituted (nginx's own
# $variables stay as they are).
set -eu
defined="$(env | cut -d= -f1 | sed 's/^/${/; s/$/}/' | tr '\n' ' ')"
for template in /etc/nginx/templates/*.template; do
    [ -e "$template" ] || continue
    output="/etc/nginx/conf.d/$(basename "$template" .template)"
    envsubst "$defined" < "$template" > "$output"
done
exec "$@"
