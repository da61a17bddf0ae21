#!/usr/bin/env bash
# Books a device over MQTT as an integrator and prints the ticket text (for a QR code).
#
#   book.sh [--dry-run] STORE DEVICE [MINUTES] [FROM]
#
# MINUTES defaults to 60, FROM (RFC 3339) to now. The ticket text is the only thing printed on
# standard output; the ticket id and the window go to standard error. --dry-run prints the signed
# request instead of sending it (no broker, no MQTT login needed).
#
# Configured by the environment: the lines `mujin-management integrator-enrol` prints
# (MUJIN_MQTT_USERNAME, MUJIN_MQTT_PASSWORD, MUJIN_MQTT_CLIENT_ID, MUJIN_INTEGRATOR,
# MUJIN_INTEGRATOR_KEY_ID, MUJIN_INTEGRATOR_KEY) and
#   MUJIN_BROKER_HOST     broker host (default 127.0.0.1)
#   MUJIN_BROKER_PORT     broker port (default 1883)
#   MUJIN_MQTT_VERSION    5 (default: response topic + correlation data properties) or 3.1.1
#                         (the request's reply_to field); mujin-broker serves MQTT 5 on its
#                         --listen-v5 port only
#   MUJIN_TLS_CA          CA certificate file: connect with TLS (optional)
#   MUJIN_REPLY_TIMEOUT   seconds to wait for management's reply (default 30)
#
# Needs mosquitto_pub and mosquitto_sub (Debian: mosquitto-clients), openssl (3.x), xxd, jq and
# stdbuf (coreutils).
# See docs/examples/README.md.
set -euo pipefail

die() {
    echo "book.sh: $*" >&2
    exit 1
}

dry_run=false
if [ "${1:-}" = --dry-run ]; then
    dry_run=true
    shift
fi
[ $# -ge 2 ] && [ $# -le 4 ] || die "usage: book.sh [--dry-run] STORE DEVICE [MINUTES] [FROM]"

commands=(openssl xxd jq)
variables=(MUJIN_INTEGRATOR MUJIN_INTEGRATOR_KEY_ID MUJIN_INTEGRATOR_KEY)
if ! $dry_run; then
    commands+=(mosquitto_pub mosquitto_sub stdbuf)
    variables+=(MUJIN_MQTT_USERNAME MUJIN_MQTT_PASSWORD MUJIN_MQTT_CLIENT_ID)
fi
for command in "${commands[@]}"; do
    command -v "$command" >/dev/null 2>&1 ||
        die "$command is not installed (Debian: mosquitto-clients, openssl, xxd, jq, coreutils)"
done
for variable in "${variables[@]}"; do
    [ -n "${!variable:-}" ] || die "$variable is not set (mujin-management integrator-enrol prints it)"
done
[[ "$MUJIN_INTEGRATOR_KEY" =~ ^[0-9a-fA-F]{64}$ ]] ||
    die "MUJIN_INTEGRATOR_KEY must be 64 hex characters (the Ed25519 seed)"

store=$1
device=$2
minutes=${3:-60}
from=${4:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}
host=${MUJIN_BROKER_HOST:-127.0.0.1}
port=${MUJIN_BROKER_PORT:-1883}
version=${MUJIN_MQTT_VERSION:-5}
timeout=${MUJIN_REPLY_TIMEOUT:-30}
case "$version" in
5) protocol=mqttv5 ;;
3.1.1) protocol=mqttv311 ;;
*) die "MUJIN_MQTT_VERSION must be 5 or 3.1.1, not $version" ;;
esac

work=$(umask 077 && mktemp -d)
subscriber=
cleanup() {
    [ -z "$subscriber" ] || kill "$subscriber" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# A fresh UUID (version 4) per request: sending the same request again returns the same reply.
hex=$(openssl rand -hex 16)
request_id="${hex:0:8}-${hex:8:4}-4${hex:13:3}-$(printf %x $((0x${hex:16:1} & 3 | 8)))${hex:17:3}-${hex:20:12}"
# One reply topic per request, under the integrator's own topics (management refuses others).
reply_topic="mujin/v1/integrators/$MUJIN_INTEGRATOR/replies/$request_id"

# The request, then the signed envelope around its exact text.
request=$(jq -cn --arg request_id "$request_id" --arg sent_at "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --arg store "$store" --arg device "$device" --arg from "$from" --argjson minutes "$minutes" \
    '{request_id: $request_id, sent_at: $sent_at, action: "reserve",
      store: $store, device: $device, from: $from, minutes: $minutes}')
if [ "$version" = 3.1.1 ]; then
    # MQTT 3.1.1 has no response topic property: the request names it.
    request=$(jq -c --arg reply_to "$reply_topic" '. + {reply_to: $reply_to}' <<<"$request")
fi
# The seed as a PKCS#8 DER key: a fixed 16-byte header, then the 32 bytes.
printf '302e020100300506032b657004220420%s' "$MUJIN_INTEGRATOR_KEY" | xxd -r -p >"$work/key.der"
printf 'mujin-booking-v1\0%s' "$request" >"$work/message"
signature=$(openssl pkeyutl -sign -inkey "$work/key.der" -keyform DER -rawin -in "$work/message" |
    xxd -p -c 256)
envelope=$(jq -cn --arg request "$request" --arg key_id "$MUJIN_INTEGRATOR_KEY_ID" \
    --arg sig "$signature" '{request: $request, key_id: $key_id, sig: $sig}')
if $dry_run; then
    echo "$envelope"
    exit 0
fi

connection=(-h "$host" -p "$port" -V "$protocol" -u "$MUJIN_MQTT_USERNAME" -P "$MUJIN_MQTT_PASSWORD")
[ -z "${MUJIN_TLS_CA:-}" ] || connection+=(--cafile "$MUJIN_TLS_CA")

# Subscribe to the reply topic first (debug output says when the broker granted it, line by line
# thanks to stdbuf), then publish.
stdbuf -oL mosquitto_sub "${connection[@]}" -i "$MUJIN_MQTT_CLIENT_ID.book-reply" -q 1 -t "$reply_topic" \
    -C 1 -W "$timeout" -d -F "$(printf 'mujin-reply\t%%D\t%%p')" >"$work/sub" 2>&1 &
subscriber=$!
for _ in $(seq $((timeout * 10))); do
    grep -q '^Subscribed' "$work/sub" && break
    kill -0 "$subscriber" 2>/dev/null ||
        die "could not subscribe at $host:$port: $(grep -v '^Client ' "$work/sub" || true)"
    sleep 0.1
done
granted=$(grep -m 1 '^Subscribed' "$work/sub" || true)
[ -n "$granted" ] || die "no subscription acknowledgement from $host:$port"
# The broker grants a QoS (0-2) or refuses with a code of 128 or more (e.g. an ACL).
[ "${granted##*: }" -lt 128 ] || die "the broker refused the subscription to $reply_topic (${granted##*: })"

publish=(-i "$MUJIN_MQTT_CLIENT_ID.book" -q 1 -t "mujin/v1/integrators/$MUJIN_INTEGRATOR/bookings")
if [ "$version" = 5 ]; then
    # The reply comes on the response topic and carries the correlation data back unchanged.
    publish+=(-D publish response-topic "$reply_topic" -D publish correlation-data "$request_id")
fi
mosquitto_pub "${connection[@]}" "${publish[@]}" -m "$envelope" ||
    die "could not publish the request to $host:$port"

wait "$subscriber" || true
subscriber=
line=$(grep -m 1 "^mujin-reply	" "$work/sub" || true)
[ -n "$line" ] || die "no reply from management within ${timeout}s (is it running with --booking-broker?)"
correlation=$(cut -f 2 <<<"$line")
reply=$(cut -f 3- <<<"$line")
if [ "$version" = 5 ] && [ "$correlation" != "$request_id" ]; then
    die "the reply's correlation data ($correlation) is not the request's ($request_id)"
fi
[ "$(jq -r .request_id <<<"$reply")" = "$request_id" ] || die "a reply to another request: $reply"
if [ "$(jq -r .ok <<<"$reply")" != true ]; then
    die "refused: $(jq -r '.error + (if .detail then ": " + .detail else "" end)' <<<"$reply")"
fi
jq -r '"ticket \(.ticket_id), valid from \(.valid_from) until \(.valid_until)"' <<<"$reply" >&2
jq -r .ticket <<<"$reply"
