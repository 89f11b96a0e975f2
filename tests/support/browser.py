"""A real Chromium for browser tests: Debian's package, driven by Playwright.

Playwright's own browser download cannot work on these machines, so the tests launch the
system's `chromium` (apt) through `executable_path`. Never skipped for want of it: as root the
package is installed on first use; otherwise the test fails saying how to install it.

A fake microphone: `--use-fake-device-for-media-stream` plus
`--use-file-for-fake-audio-capture=<file.wav>` makes getUserMedia() capture that file (looped;
with a `%noloop` suffix it is played once and then the device is silent). Chromium resamples
the file to the capture rate itself, so any rate works (16 kHz and 48 kHz were checked).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "ensure_chromium", "launch", "screenshot_on_failure"]

CHROMIUM = "/usr/bin/chromium"

CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
)


def _find() -> str | None:
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    return shutil.which("chromium")


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(
        ["apt-get", *args], env=env, capture_output=True, text=True, timeout=900, check=False
    )


def ensure_chromium() -> str:
    """The path of Chromium, installing Debian's `chromium` package (as root) when missing."""
    found = _find()
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(
            f"Chromium is not installed ({CHROMIUM} missing) and cannot be installed from here "
            "(needs root and apt-get): run `apt-get install -y chromium` as root."
        )
    result = _apt("install", "-y", "chromium")
    if result.returncode != 0:  # stale package lists: refresh them once and try again
        update = _apt("update")
        result = _apt("install", "-y", "chromium")
        if result.returncode != 0:
            raise RuntimeError(
                "could not install Debian's chromium with apt-get:\n"
                f"{update.stdout[-2000:]}{update.stderr[-2000:]}"
                f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
    found = _find()
    if not found:
        raise RuntimeError(f"apt-get installed chromium, but {CHROMIUM} is still missing")
    return found


def launch(playwright: Any, *, fake_audio_wav: str | os.PathLike[str] | None = None) -> Any:
    """Launch the system Chromium through Playwright (sync or async API alike: this returns
    what `playwright.chromium.launch` returns, a Browser or an awaitable of one)."""
    args = list(CHROMIUM_ARGS)
    if fake_audio_wav is not None:
        args.append(f"--use-file-for-fake-audio-capture={os.fspath(fake_audio_wav)}")
    return playwright.chromium.launch(
        executable_path=ensure_chromium(),
        headless=True,  # with --headless=new in args, Playwright keeps it
        args=args,
        # Playwright adds flags of its own; never let it mute the page's audio output.
        ignore_default_args=["--mute-audio"],
    )


@contextlib.contextmanager
def screenshot_on_failure(page: Any, tmp_path: Path, name: str = "failure") -> Iterator[None]:
    """Save a screenshot (and the page's HTML) into `tmp_path` if the block raises."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
            (tmp_path / f"{name}.html").write_text(page.content())
            print(f"browser state saved in {tmp_path / name}.png / .html")
        raise
