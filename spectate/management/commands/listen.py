"""manage.py listen <room>: watch and record a room of a running Parley from a terminal."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
from collections.abc import Callable
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from spectate.listen import AudioSink, Listener, spectator_url

CLOSE_BAD_REQUEST = 4400  # the spectator socket's refusal of a bad query (docs/api.md)


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse type: a whole (int) or finite (float) number above 0; nan and inf would
    make a limit that never (or at once) ends the run."""
    what = "a whole number" if kind is int else "a finite number"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be {what} above 0, not {text!r}")
        return value

    return parse


def default_url() -> str:
    """Where bin/serve listens: http://$PARLEY_HOST:$PARLEY_PORT (127.0.0.1:8000)."""
    host = os.environ.get("PARLEY_HOST") or "127.0.0.1"
    return f"http://{host}:{os.environ.get('PARLEY_PORT') or 8000}"


class Command(BaseCommand):
    help = (
        "Connect to a running server's spectator socket, print the room's events one per line "
        "(id, time, type, speaker, text) and write the audio heard to a WAV file. Runs until "
        "Ctrl-C unless --count, --until-idle or --seconds says otherwise."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("room")
        parser.add_argument(
            "--url",
            default=default_url(),
            help="the server (default %(default)s: bin/serve's PARLEY_HOST and PARLEY_PORT)",
        )
        parser.add_argument(
            "--after", type=int, help="replay the stored events after this id, then go on live"
        )
        parser.add_argument("--out", help="the WAV file to write (default <room>.wav)")
        parser.add_argument("--no-audio", action="store_true", help="write no WAV file")
        parser.add_argument("--count", type=_positive(int), help="stop after this many events")
        parser.add_argument(
            "--until-idle", type=_positive(float), metavar="S", help="stop after S s of silence"
        )
        parser.add_argument(
            "--seconds", type=_positive(float), metavar="S", help="stop after S s in all"
        )

    def handle(self, *args, room: str, url: str, after: int | None, **options) -> None:
        if after is not None and after < 0:
            raise CommandError("--after must be an event id (0 or more)")
        try:
            ws_url = spectator_url(url, room, after)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        sink = None if options["no_audio"] else AudioSink(Path(options["out"] or f"{room}.wav"))
        if sink is not None:
            try:  # before connecting: a bad --out is said at once, not after a session
                sink.check_writable()
            except OSError as exc:
                raise CommandError(
                    f"cannot write --out {sink.path}: {exc.strerror or exc}"
                ) from exc
        listener = Listener(room=room, sink=sink)

        def emit(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()  # one line as each event comes, also into a pipe

        run = listener.run(
            ws_url,
            emit=emit,
            count=options["count"],
            until_idle=options["until_idle"],
            seconds=options["seconds"],
        )
        try:
            asyncio.run(run)
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a listener usually stops: the file is already closed
        except OSError as exc:
            raise CommandError(f"cannot reach {ws_url}: {exc}") from exc
        except Exception as exc:  # websockets' handshake refusals (a 404, not a WebSocket)
            if type(exc).__module__.startswith("websockets"):
                raise CommandError(f"cannot open {ws_url}: {exc}") from exc
            raise
        if listener.close_code == CLOSE_BAD_REQUEST:  # a bad room or after: said in `error`
            raise CommandError(listener.summary())
        self.stderr.write(listener.summary())
