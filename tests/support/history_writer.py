"""A run that writes: events through the service's own delivery room (EventStore, Outbox, MqttSink) into a
history on disk and to a real broker, one every few milliseconds, until it is killed. The power-cut test
kills it with SIGKILL at chosen moments; `--drain` is the restart that sends what was left unsent.

    python -m tests.support.history_writer DB HOST PORT PREFIX [--drain]
"""

from __future__ import annotations

import argparse
import sys
import time

from birdwatch.config import HomeAssistantConfig
from birdwatch.config import MqttConfig
from birdwatch.deliver.history import EventStore
from birdwatch.deliver.mqtt import MqttSink
from birdwatch.deliver.outbox import Outbox
from birdwatch.types import EventKind
from birdwatch.types import SpeciesScore
from birdwatch.types import VisitEvent

CONNECT_S = 10.0
DRAIN_S = 30.0


def an_event(n: int) -> VisitEvent:
    now = time.time()
    top = (SpeciesScore("Eurasian Blue Tit", 0.8),)
    return VisitEvent(EventKind.NEW, f"v{n}", "feeder", now, top[0].name, 0.8, top, now, now, 3, (1, 2, 3, 4), "m")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("prefix")
    parser.add_argument("--drain", action="store_true", help="send what the history holds unsent, then exit")
    args = parser.parse_args()
    store = EventStore(args.db)
    mqtt = MqttConfig(host=args.host, port=args.port, topic_prefix=args.prefix, reconnect_max_s=1)
    sink = MqttSink(mqtt, None, HomeAssistantConfig(discovery=False), snapshots=False)
    outbox = Outbox(store, sink)
    outbox.pump()  # what the last run left unsent goes first, as `birdwatch run` does
    sink.start()
    if not sink.connected.wait(CONNECT_S):
        print("no connection to the broker", file=sys.stderr)
        return 1
    print("ready", flush=True)
    if args.drain:
        sent = outbox.flush(DRAIN_S)
        sink.stop()
        store.close()
        return 0 if sent else 1
    n = 0
    while True:
        outbox.submit(an_event(n))
        n += 1
        time.sleep(0.005)


if __name__ == "__main__":
    sys.exit(main())
