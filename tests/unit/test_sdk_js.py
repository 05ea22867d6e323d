"""The browser SDK's own tests (sdk/js/test, node's built-in runner), run by ``make test``."""

import shutil
import subprocess
from pathlib import Path

SDK = Path(__file__).resolve().parents[2] / "sdk" / "js"


def test_sdk_js_unit_tests_pass():
    node = shutil.which("node")
    assert node, "node (>= 18) is needed for the browser SDK's tests: apt-get install nodejs"
    r = subprocess.run(
        [node, "--test", "test/"], cwd=SDK, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "# fail 0" in r.stdout and "# pass " in r.stdout
