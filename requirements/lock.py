"""Write requirements/<extra>.lock: exact versions with sha256 hashes, for the images.

    python requirements/lock.py cpu gpu      (make lock)

pip resolves the project's dependencies plus the extra without installing
(`--dry-run --report`) for each image's interpreter on linux x86_64: CPython 3.11 for
the CPU image (python:3.11-slim), 3.12 for the CUDA image (Ubuntu 24.04's python3).
The report's archive hashes become `--hash` lines, so that
`pip install --require-hashes -r` installs exactly what was resolved.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = {"cpu": "3.11", "gpu": "3.12"}
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(39, 16, -1)] + [
    "manylinux2014_x86_64",
    "linux_x86_64",
]


IMAGE_EXTRAS = ["tracing"]  # in every image, so that the OTEL_* variables work there


def requirements(extra: str) -> list[str]:
    project = tomllib.loads((HERE.parent / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [*project["dependencies"], *(d for e in [extra, *IMAGE_EXTRAS] for d in extras[e])]


def lock(extra: str) -> str:
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--dry-run",
                "--ignore-installed",
                "--only-binary=:all:",
                "--implementation",
                "cp",
                "--python-version",
                PYTHON[extra],
                *platforms,
                "--report",
                str(report),
                *requirements(extra),
            ],
            check=True,
        )
        items = json.loads(report.read_text())["install"]
    lines = [
        f"# CPython {PYTHON[extra]}, linux x86_64. Made by requirements/lock.py (make lock);",
        f"# pip install --require-hashes --only-binary=:all: -r requirements/{extra}.lock",
    ]
    for item in sorted(items, key=lambda i: i["metadata"]["name"].lower()):
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        digest = item["download_info"]["archive_info"]["hashes"]["sha256"]
        lines.append(f"{name}=={version} \\\n    --hash=sha256:{digest}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    for extra in sys.argv[1:] or list(PYTHON):
        (HERE / f"{extra}.lock").write_text(lock(extra))
        print(f"wrote requirements/{extra}.lock", file=sys.stderr)
