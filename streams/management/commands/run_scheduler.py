from django.core.management.base import BaseCommand

from streams.runtime import run_scheduler_forever


class Command(BaseCommand):
    help = "Run only the release scheduler: sweeps overdue turns and fires release timers."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--interval", type=float, default=None, help="sweep every N seconds")

    def handle(self, *args, interval: float | None, **options) -> None:
        self.stdout.write("Parley scheduler running; Ctrl-C to stop.")
        run_scheduler_forever(interval_s=interval)
