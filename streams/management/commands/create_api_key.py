from django.core.management.base import BaseCommand, CommandError

from streams.auth import api_key_create
from streams.errors import ApiError
from streams.services import validate_speaker


class Command(BaseCommand):
    help = "Create an API key for a speaker. The key is printed once and stored hashed."

    def add_arguments(self, parser) -> None:
        parser.add_argument("speaker")
        parser.add_argument(
            "--moderator", action="store_true", help="may cut other speakers off (?force=1)"
        )

    def handle(self, *args, speaker: str, moderator: bool, **options) -> None:
        try:
            validate_speaker(speaker)
        except ApiError as exc:
            raise CommandError(exc.detail) from exc
        _, raw = api_key_create(speaker=speaker, moderator=moderator)
        self.stdout.write(raw)
