#!/usr/bin/env python3
"""Books a device over MQTT 5 as an integrator, prints the ticket, then follows the store's events.

    book.py STORE DEVICE [--minutes 60] [--from RFC3339] [--free-slots] [--follow SECONDS]
    book.py STORE DEVICE --dry-run      # prints the signed reserve request, sends nothing

Standard output: the ticket text (for a QR code) on the first line, then, with --follow, each
event of the store as one JSON object a line. Everything else goes to standard error.

Configured by the environment: the lines `mujin-management integrator-enrol` prints
(MUJIN_MQTT_USERNAME, MUJIN_MQTT_PASSWORD, MUJIN_MQTT_CLIENT_ID, MUJIN_INTEGRATOR,
MUJIN_INTEGRATOR_KEY_ID, MUJIN_INTEGRATOR_KEY) and MUJIN_BROKER_HOST (default 127.0.0.1),
MUJIN_BROKER_PORT (default 1883; an MQTT 5 listener), MUJIN_TLS_CA (optional CA file: TLS).

Needs paho-mqtt 2.x and cryptography: `python3 -m pip install paho-mqtt cryptography`.
See docs/examples/README.md.
"""

import argparse
import json
import os
import queue
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

try:
    import paho.mqtt.client as mqtt
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
except ImportError as missing:
    sys.exit(f"book.py: {missing.name} is not installed "
             "(python3 -m pip install paho-mqtt cryptography)")

# Signed requests start with this context (17 bytes, the last one NUL) before the request's text.
SIGNING_CONTEXT = b"mujin-booking-v1\0"
ENVIRONMENT = ("MUJIN_MQTT_USERNAME", "MUJIN_MQTT_PASSWORD", "MUJIN_MQTT_CLIENT_ID",
               "MUJIN_INTEGRATOR", "MUJIN_INTEGRATOR_KEY_ID", "MUJIN_INTEGRATOR_KEY")
TIMEOUT = 30.0


class Refused(Exception):
    """Management answered `ok: false`."""


def rfc3339(moment):
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class Integrator:
    """One MQTT 5 connection: signed requests answered on a response topic, and store events."""

    def __init__(self, env, events_topic=None):
        self.env = env
        self.key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(env["MUJIN_INTEGRATOR_KEY"]))
        integrator = env["MUJIN_INTEGRATOR"]
        self.requests_topic = f"mujin/v1/integrators/{integrator}/bookings"
        # Replies must come under the integrator's own topics; one topic per connection, and
        # the correlation data tells the requests apart.
        self.reply_topic = f"mujin/v1/integrators/{integrator}/replies/{uuid.uuid4()}"
        self.events_topic = events_topic
        self.events = queue.Queue()
        self.replies = {}
        self.lock = threading.Condition()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=env["MUJIN_MQTT_CLIENT_ID"] + ".py",
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set(env["MUJIN_MQTT_USERNAME"], env["MUJIN_MQTT_PASSWORD"])
        if os.environ.get("MUJIN_TLS_CA"):
            self.client.tls_set(ca_certs=os.environ["MUJIN_TLS_CA"])
        self.client.on_connect = self.on_connect
        self.client.on_subscribe = self.on_subscribe
        self.client.on_message = self.on_message

    def connect(self, host, port):
        try:
            self.client.connect(host, port, keepalive=30)
        except OSError as error:
            sys.exit(f"book.py: cannot connect to {host}:{port}: {error}")
        self.client.loop_start()
        if not self.subscribed.wait(TIMEOUT):
            sys.exit(f"book.py: no subscription at {host}:{port} within {TIMEOUT:.0f}s "
                     "(credentials? an MQTT 5 listener?)")

    def on_connect(self, client, _userdata, _flags, reason_code, _properties):
        if reason_code.is_failure:
            print(f"book.py: connection refused: {reason_code}", file=sys.stderr)
            return
        # Subscriptions are made again on every connection: a clean start forgets them.
        topics = [(self.reply_topic, 1)] + ([(self.events_topic, 1)] if self.events_topic else [])
        client.subscribe(topics)

    def on_subscribe(self, _client, _userdata, _mid, reason_codes, _properties):
        if all(not code.is_failure for code in reason_codes):
            self.subscribed.set()

    def on_message(self, _client, _userdata, message):
        if message.topic == self.events_topic:
            self.events.put(message.payload.decode())
            return
        correlation = getattr(message.properties, "CorrelationData", None)
        with self.lock:
            self.replies[correlation] = json.loads(message.payload)
            self.lock.notify_all()

    def sign(self, action, **fields):
        """A fresh request and its signed envelope: the signature covers the text as sent."""
        request_id = str(uuid.uuid4())
        text = json.dumps({"request_id": request_id, "sent_at": rfc3339(datetime.now(timezone.utc)),
                           "action": action, **fields})
        signature = self.key.sign(SIGNING_CONTEXT + text.encode()).hex()
        return request_id, {"request": text, "key_id": self.env["MUJIN_INTEGRATOR_KEY_ID"],
                            "sig": signature}

    def request(self, action, **fields):
        """Sends one signed request and returns its reply's fields; raises Refused."""
        request_id, envelope = self.sign(action, **fields)
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = self.reply_topic
        properties.CorrelationData = request_id.encode()
        self.client.publish(self.requests_topic, json.dumps(envelope), qos=1, properties=properties)
        with self.lock:
            if not self.lock.wait_for(lambda: request_id.encode() in self.replies, TIMEOUT):
                sys.exit(f"book.py: no reply to {action} within {TIMEOUT:.0f}s "
                         "(is management running with --booking-broker?)")
            reply = self.replies.pop(request_id.encode())
        if not reply.get("ok"):
            detail = f": {reply['detail']}" if reply.get("detail") else ""
            raise Refused(f"{action} refused: {reply.get('error')}{detail}")
        return reply


def main():
    parser = argparse.ArgumentParser(description="Book a mujin device over MQTT 5.")
    parser.add_argument("store")
    parser.add_argument("device")
    parser.add_argument("--minutes", type=int, default=60, help="length of the booking (1-1440)")
    parser.add_argument("--from", dest="start", help="start, RFC 3339 (default: now)")
    parser.add_argument("--free-slots", action="store_true",
                        help="first print the device's free slots of the next 24 hours")
    parser.add_argument("--follow", type=float, default=0, metavar="SECONDS",
                        help="then print the store's events for this long")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the signed reserve request instead of sending it")
    args = parser.parse_args()
    needed = ENVIRONMENT[3:] if args.dry_run else ENVIRONMENT
    missing = [name for name in needed if not os.environ.get(name)]
    if missing:
        sys.exit(f"book.py: {', '.join(missing)} not set (mujin-management integrator-enrol prints them)")
    env = {name: os.environ.get(name, "") for name in ENVIRONMENT}
    start = args.start or rfc3339(datetime.now(timezone.utc))
    if args.dry_run:
        _, envelope = Integrator(env).sign("reserve", store=args.store, device=args.device,
                                           minutes=args.minutes, **{"from": start})
        print(json.dumps(envelope))
        return

    # Subscribed to the events before booking, so the booking's own event is seen too.
    integrator = Integrator(env, f"mujin/v1/stores/{args.store}/events" if args.follow else None)
    integrator.connect(os.environ.get("MUJIN_BROKER_HOST", "127.0.0.1"),
                       int(os.environ.get("MUJIN_BROKER_PORT", "1883")))
    try:
        if args.free_slots:
            now = datetime.now(timezone.utc)
            slots = integrator.request("free_slots", store=args.store, device=args.device,
                                       **{"from": rfc3339(now), "to": rfc3339(now + timedelta(hours=24))})
            for slot in slots["slots"]:
                print(f"free from {slot['from']} to {slot['to']}", file=sys.stderr)
        reply = integrator.request("reserve", store=args.store, device=args.device,
                                   minutes=args.minutes, **{"from": start})
    except Refused as refused:
        sys.exit(f"book.py: {refused}")
    print(f"ticket {reply['ticket_id']}, valid from {reply['valid_from']} "
          f"until {reply['valid_until']}", file=sys.stderr)
    print(reply["ticket"], flush=True)

    deadline = time.monotonic() + args.follow
    while (left := deadline - time.monotonic()) > 0:
        try:
            print(integrator.events.get(timeout=left), flush=True)
        except queue.Empty:
            break
    integrator.client.disconnect()
    integrator.client.loop_stop()


if __name__ == "__main__":
    main()
