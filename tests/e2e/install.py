"""The installed runtime and the example built against it, for test_install.py
and test_example.py (DESIGN.md §13).

scripts/example-test installs into a prefix of its own, builds
examples/notifications from a copy against it and runs those tests with
RIPPLE_PREFIX (the prefix) and RIPPLE_EXAMPLE_BIN (the directory holding the
example's binaries) set: then both must exist, or the tests fail. Without
them (a plain `make test`), the session does the same itself: `make install
PREFIX=<tmp>` from this tree (the -fPIC objects are built once in build/pic
and reused), and the example built from a copy in a temporary directory. So
the tests always run; nothing is skipped.
"""

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_SRC = REPO / "examples" / "notifications"
EXAMPLE_BINARIES = ("notifications", "ripple-plus")
BUILD_TIMEOUT = 900  # s: a cold -fPIC build on a loaded machine


def clean_env(**extra):
    """The environment for a nested make: without the MAKEFLAGS of a make
    running this test (make check-san passes BUILD=build/san and its flags,
    which the installed, release-built library must not inherit)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "BUILD", "CFLAGS",
                        "LDFLAGS", "CPPFLAGS", "MODE_CFLAGS", "MODE_LDFLAGS", "PREFIX", "DESTDIR", "PKG_CONFIG_PATH")}
    env.update(extra)
    return env


def run(cmd, cwd=None, env=None, timeout=BUILD_TIMEOUT):
    """Runs cmd; fails the test with its output when it exits non-zero."""
    p = subprocess.run(cmd, cwd=cwd, env=env or clean_env(), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=timeout)
    out = p.stdout.decode(errors="replace")
    if p.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{out[-4000:]}")
    return out


def make(*args, **kw):
    """make -C <repo> args..., one at a time per tree (build/pic is shared)."""
    lock_path = REPO / "build" / ".install.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return run(["make", "-s", "-C", str(REPO), "BUILD=build", *args], **kw)


def pkg_env(prefix):
    return clean_env(PKG_CONFIG_PATH=str(Path(prefix) / "lib" / "pkgconfig"))


def pkg_config(prefix, *args):
    return run(["pkg-config", *args], env=pkg_env(prefix)).split()


@pytest.fixture(scope="session")
def prefix(tmp_path_factory):
    """The prefix the runtime is installed in."""
    given = os.environ.get("RIPPLE_PREFIX")
    if given:
        if not (Path(given) / "lib" / "pkgconfig" / "ripple.pc").is_file():
            pytest.fail(f"RIPPLE_PREFIX={given} holds no lib/pkgconfig/ripple.pc")
        return Path(given)
    p = tmp_path_factory.mktemp("prefix")
    make("install", f"PREFIX={p}")
    return p


@pytest.fixture(scope="session")
def example_bin(prefix, tmp_path_factory):
    """The directory of the example's binaries, built out of tree."""
    given = os.environ.get("RIPPLE_EXAMPLE_BIN")
    if given:
        for name in EXAMPLE_BINARIES:
            if not os.access(Path(given) / name, os.X_OK):
                pytest.fail(f"RIPPLE_EXAMPLE_BIN={given}: {name} is missing")
        return Path(given)
    src = tmp_path_factory.mktemp("example") / "notifications"
    shutil.copytree(EXAMPLE_SRC, src, ignore=shutil.ignore_patterns(*EXAMPLE_BINARIES, "*.o",
                                                                   "gen"))
    run(["make", "-s", "-C", str(src)], env=pkg_env(prefix))
    return src
