"""Node.js and the npm packages of tests/js/, for tests that drive Parley with JavaScript
clients (the openai npm package). Never skipped for want of them: as root Debian's `nodejs`
and `npm` are installed on first use, and `npm ci` installs tests/js/package-lock.json's
exact versions from the npm registry into tests/js/node_modules (git-ignored).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.support.browser import _apt

JS_DIR = Path(__file__).resolve().parent.parent / "js"


def _install_node() -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError("Node.js is not installed: run `apt-get install -y nodejs npm` as root.")
    result = _apt("install", "-y", "nodejs", "npm")
    if result.returncode != 0:
        _apt("update")
        result = _apt("install", "-y", "nodejs", "npm")
    if result.returncode != 0 or shutil.which("node") is None:
        raise RuntimeError(
            f"could not install nodejs/npm:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )


def ensure_js_clients() -> Path:
    """tests/js with its node_modules installed (as locked); returns the folder."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        _install_node()
    lock = json.loads((JS_DIR / "package-lock.json").read_text())
    wanted = lock["packages"]["node_modules/openai"]["version"]
    installed = JS_DIR / "node_modules" / "openai" / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != wanted:
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=JS_DIR,
            check=True,
            capture_output=True,
            timeout=600,
        )
    return JS_DIR


def run_node(script: str, *args: str, timeout: float = 120) -> str:
    """Run tests/js/`script` with Node and return its stdout (raises on a non-zero exit)."""
    folder = ensure_js_clients()
    done = subprocess.run(
        ["node", str(folder / script), *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
