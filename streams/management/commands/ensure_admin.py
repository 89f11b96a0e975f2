import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Create the 'admin' superuser on first run, so a newcomer can log in to /admin/. "
        "The password comes from PARLEY_ADMIN_PASSWORD or is generated into var/."
    )

    def handle(self, *args, **options) -> None:
        users = get_user_model()
        if users.objects.filter(is_superuser=True).exists():
            return
        password = os.environ.get("PARLEY_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        users.objects.create_superuser("admin", "", password)
        secret_file = settings.VAR_DIR / "admin-password.txt"
        secret_file.write_text(password + "\n")
        secret_file.chmod(0o600)
        self.stdout.write(f"Created superuser 'admin' with password {password} ({secret_file})")
