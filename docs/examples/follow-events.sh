#!/usr/bin/env bash
# Follows a store's events (reservations, sessions, refusals, alerts), one JSON object a line.
#
#   follow-events.sh STORE [SECONDS]
#
# Runs until interrupted, or for SECONDS. Says "following …" on standard error once the broker
# has granted the subscription: events published before that are not seen (they are not retained).
#
# Configured by the same environment as book.sh: MUJIN_MQTT_USERNAME, MUJIN_MQTT_PASSWORD,
# MUJIN_MQTT_CLIENT_ID (from `mujin-management integrator-enrol`), MUJIN_BROKER_HOST (default
# 127.0.0.1), MUJIN_BROKER_PORT (default 1883), MUJIN_MQTT_VERSION (5 or 3.1.1, default 5),
# MUJIN_TLS_CA (optional). Needs mosquitto_sub (Debian: mosquitto-clients) and stdbuf (coreutils).
set -euo pipefail

die() {
    echo "follow-events.sh: $*" >&2
    exit 1
}

for command in mosquitto_sub stdbuf; do
    command -v "$command" >/dev/null 2>&1 || die "$command is not installed (Debian: mosquitto-clients, coreutils)"
done
for variable in MUJIN_MQTT_USERNAME MUJIN_MQTT_PASSWORD MUJIN_MQTT_CLIENT_ID; do
    [ -n "${!variable:-}" ] || die "$variable is not set (mujin-management integrator-enrol prints it)"
done
[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: follow-events.sh STORE [SECONDS]"
store=$1
case "${MUJIN_MQTT_VERSION:-5}" in
5) protocol=mqttv5 ;;
3.1.1) protocol=mqttv311 ;;
*) die "MUJIN_MQTT_VERSION must be 5 or 3.1.1, not $MUJIN_MQTT_VERSION" ;;
esac

topic="mujin/v1/stores/$store/events"
arguments=(-h "${MUJIN_BROKER_HOST:-127.0.0.1}" -p "${MUJIN_BROKER_PORT:-1883}" -V "$protocol"
    -u "$MUJIN_MQTT_USERNAME" -P "$MUJIN_MQTT_PASSWORD" -i "$MUJIN_MQTT_CLIENT_ID.events"
    -q 1 -t "$topic")
[ -z "${MUJIN_TLS_CA:-}" ] || arguments+=(--cafile "$MUJIN_TLS_CA")
[ $# -lt 2 ] || arguments+=(-W "$2")

# Debug output (-d) tells when the subscription is granted; only events reach standard output.
# stdbuf: each line as it comes, not when mosquitto_sub's output buffer is full.
status=0
stdbuf -oL mosquitto_sub "${arguments[@]}" -d -F "$(printf 'mujin-event\t%%p')" 2>&1 |
    while IFS= read -r line; do
        case "$line" in
        "mujin-event	"*) printf '%s\n' "${line#*	}" ;;
        Subscribed*) echo "following $topic" >&2 ;;
        "Client "* | "Timed out") ;;
        *) echo "$line" >&2 ;;
        esac
    done || status=$?
# mosquitto_sub ends with 27 when SECONDS ran out: the normal end of a timed follow.
[ "$status" -eq 0 ] || [ "$status" -eq 27 ] || die "mosquitto_sub failed ($status)"
