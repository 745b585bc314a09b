"""`make install` and `make uninstall` (DESIGN.md §13): what lands where, the
soname and its links, the pkg-config files, llhttp hidden, and the public
headers compiling beside a broad set of system headers (and a service's own
usual macros) with warnings as errors -- all against the INSTALLED files, in
the prefix of install.py's fixture (scripts/example-test's, or one this
session installs)."""

import re
import subprocess
from pathlib import Path

import pytest

from install import REPO, make, pkg_config, pkg_env, prefix, run  # noqa: F401 - fixtures

WARN = ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wstrict-prototypes",
        "-Wmissing-prototypes", "-Wredundant-decls", "-Wundef", "-Wwrite-strings"]
REQUIRES = ("libuv", "hiredis", "jansson", "sqlite3", "libjwt", "libcurl", "libcrypto")
TOOLS = ("ripple-embed-sql", "ripple-gen-host", "ripple-embed-assets")
# What a service's sources put beside ripple's headers: the C library,
# POSIX, the network, and every library the runtime is built on.
SYSTEM_HEADERS = (
    "assert.h", "ctype.h", "dlfcn.h", "err.h", "errno.h", "fcntl.h", "inttypes.h", "limits.h",
    "locale.h", "math.h", "poll.h", "pthread.h", "search.h", "signal.h", "stdbool.h",
    "stddef.h", "stdint.h", "stdio.h", "stdlib.h", "string.h", "strings.h", "syslog.h",
    "time.h", "unistd.h", "sys/epoll.h", "sys/mman.h", "sys/param.h", "sys/queue.h",
    "sys/socket.h", "sys/stat.h", "sys/time.h", "sys/types.h", "sys/uio.h", "sys/wait.h",
    "netdb.h", "netinet/in.h", "netinet/tcp.h", "arpa/inet.h", "arpa/nameser.h", "resolv.h",
    "sqlite3.h", "uv.h", "hiredis/hiredis.h", "hiredis/async.h", "jansson.h", "curl/curl.h",
    "openssl/evp.h", "openssl/hmac.h", "openssl/rand.h", "openssl/err.h", "jwt.h",
    "uuid/uuid.h",
)
# Macros a service's own code (or a library it uses) commonly defines, the
# way the kernel and valgrind write them: an installed header must not
# define them too (a different definition is an error under -Werror).
SERVICE_MACROS = """
#define ARRAY_SIZE(x) (sizeof(x) / sizeof(*(x)))
#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))
#define UNUSED __attribute__((unused))
"""


def version_of(prefix):
    text = (prefix / "lib" / "pkgconfig" / "ripple.pc").read_text()
    return re.search(r"^Version: (\d+)\.(\d+)\.(\d+)$", text, re.M).groups()


def installed_headers(prefix):
    return sorted(p.name for p in (prefix / "include" / "ripple").glob("*.h"))


def test_installs_the_library_headers_tools_and_pkgconfig(prefix):
    major, minor, patch = version_of(prefix)
    lib = prefix / "lib"
    real = f"libripple.so.{major}.{minor}.{patch}"
    assert (lib / real).is_file() and not (lib / real).is_symlink()
    assert (lib / f"libripple.so.{major}").readlink() == Path(real)
    assert (lib / "libripple.so").readlink() == Path(f"libripple.so.{major}")
    assert (lib / "libripple.a").is_file() and (lib / "libripple-modules.a").is_file()
    soname = run(["readelf", "-d", str(lib / real)])
    assert f"Library soname: [libripple.so.{major}]" in soname
    # The public headers are include/ripple/*.h of the tree, and only them:
    # core/'s private headers stay in the tree.
    assert installed_headers(prefix) == sorted(p.name for p in (REPO / "include/ripple").glob("*.h"))
    for private in (REPO / "core").glob("*.h"):
        assert not (prefix / "include" / "ripple" / private.name).exists(), private.name
    for tool in TOOLS:
        assert (prefix / "bin" / tool).stat().st_mode & 0o111, tool
    pc = (lib / "pkgconfig" / "ripple.pc").read_text()
    assert re.search(r"^Requires\.private: (.*)$", pc, re.M).group(1).split() == list(REQUIRES)
    assert re.search(r"^Libs\.private: (.*)$", pc, re.M).group(1).split() == ["-lpthread", "-lm"]
    for name in REQUIRES:  # each exists under its Debian name
        run(["pkg-config", "--exists", name])
    assert pkg_config(prefix, "--libs", "ripple")[-1] == "-lripple"
    assert f"-I{prefix}/include" in pkg_config(prefix, "--cflags", "ripple")
    assert pkg_config(prefix, "--modversion", "ripple-modules") == [f"{major}.{minor}.{patch}"]
    assert pkg_config(prefix, "--variable=bindir", "ripple") == [f"{prefix}/bin"]


def test_llhttp_is_compiled_in_and_never_exposed(prefix):
    lib = prefix / "lib"
    dynamic = run(["nm", "-D", "--defined-only", str(lib / "libripple.so")])
    assert "http_server_new" in dynamic  # the runtime's own API is there
    assert "llhttp" not in dynamic.lower()
    assert "llhttp" not in run(["nm", "-g", "--defined-only", str(lib / "libripple.a")]).lower()
    assert "llhttp" in run(["nm", str(lib / "libripple.a")])  # compiled in, local
    for h in (prefix / "include" / "ripple").glob("*.h"):
        assert "llhttp" not in h.read_text().lower(), f"{h.name} mentions llhttp"


def test_modules_library_exports_only_the_descriptors(prefix):
    """libripple-modules.a's globals are the reference modules' descriptors,
    each declared by <ripple/modules.h>: an out-of-tree module's names cannot
    clash with the internals of the modules it is hosted with."""
    names = {p.name for p in (REPO / "services").iterdir() if list(p.glob("*.c"))}
    want = {n.replace("-", "_") + "_module" for n in names}
    nm = run(["nm", "-g", "--defined-only", str(prefix / "lib" / "libripple-modules.a")])
    got = {line.split()[-1] for line in nm.splitlines() if re.match(r"^[0-9a-f]+ [A-Z] ", line)}
    assert got == want
    header = (prefix / "include" / "ripple" / "modules.h").read_text()
    assert set(re.findall(r"^extern const struct module (\w+);", header, re.M)) == want


def compile_all_headers(prefix, tmp_path, body, name):
    """Compiles one C file: body, wrapped around every installed
    <ripple/*.h>, against the installed headers, with warnings as errors."""
    ripple = "".join(f"#include <ripple/{h}>\n" for h in installed_headers(prefix))
    src = tmp_path / f"{name}.c"
    src.write_text(body.replace("@RIPPLE@", ripple))
    obj = tmp_path / f"{name}.o"
    cflags = pkg_config(prefix, "--cflags", "ripple")
    run(["cc", *WARN, *cflags, "-c", str(src), "-o", str(obj)], env=pkg_env(prefix))
    return obj


@pytest.mark.parametrize("order", ["ripple-first", "system-first"])
def test_headers_collide_with_no_system_header(prefix, tmp_path, order):
    system = "".join(f"#include <{h}>\n" for h in SYSTEM_HEADERS)
    parts = ["@RIPPLE@", system] if order == "ripple-first" else [system, "@RIPPLE@"]
    body = "".join(parts) + SERVICE_MACROS + "int main(void)\n{\n    return 0;\n}\n"
    compile_all_headers(prefix, tmp_path, body, order)


def test_header_guards_are_ripple_names(prefix):
    """A guard like CORE_LOG_H is what a service's own core/log.h would use:
    the installed header would then vanish without a word."""
    for name in installed_headers(prefix):
        guard = "RIPPLE_" + name[:-2].upper() + "_H"
        text = (prefix / "include" / "ripple" / name).read_text()
        assert f"#ifndef {guard}\n#define {guard}\n" in text, f"{name}: guard is not {guard}"


def test_ripple_h_includes_the_whole_runtime(prefix):
    """<ripple/ripple.h> is the runtime's API in one include: every installed
    header but modules.h (libripple-modules') and itself."""
    text = (prefix / "include" / "ripple" / "ripple.h").read_text()
    want = set(installed_headers(prefix)) - {"ripple.h", "modules.h"}
    assert set(re.findall(r"^#include <ripple/(\w+\.h)>$", text, re.M)) == want


def test_a_program_links_the_installed_library(prefix, tmp_path):
    """With the .so (found through the rpath) and with the .a: a program
    calls the runtime; linking the .a succeeds although the program defines
    an llhttp_init of its own (the library's llhttp is local to it)."""
    body = ("#include <string.h>\n@RIPPLE@\n"
            "int llhttp_init(void);\nint llhttp_init(void)\n{\n    return 7;\n}\n"
            "int main(int argc, char **argv)\n{\n"
            "    const char *id = \"0190a7c2-5b6e-7d2a-9f00-123456789abc\";\n\n"
            "    if (argc > 1) /* never: it links the whole runtime, HTTP server and all */\n"
            "        return host_main(argc, argv, NULL, 0);\n"
            "    return ids_is_uuid(id, strlen(id)) && llhttp_init() == 7 ? 0 : 1;\n}\n")
    obj = compile_all_headers(prefix, tmp_path, body, "linked")
    libdir = prefix / "lib"
    shared, static = tmp_path / "shared", tmp_path / "static"
    run(["cc", "-o", str(shared), str(obj), f"-Wl,-rpath,{libdir}",
         *pkg_config(prefix, "--libs", "ripple")])
    # libripple.a, with what ripple.pc requires privately (as shared
    # libraries: Debian ships some of their own requirements only so).
    libs = pkg_config(prefix, "--libs", *REQUIRES) + ["-lpthread", "-lm"]
    run(["cc", "-o", str(static), str(obj), str(libdir / "libripple.a"), *libs])
    for exe in (shared, static):
        assert subprocess.run([str(exe)], timeout=30).returncode == 0, exe.name
    major = version_of(prefix)[0]
    assert f"libripple.so.{major} => {libdir}/libripple.so.{major} " in run(["ldd", str(shared)])


def test_destdir_and_uninstall(tmp_path):
    """DESTDIR stages the files under it (the .pc files still name PREFIX);
    uninstall removes exactly what install wrote and leaves no file."""
    stage, pre = tmp_path / "stage", "/opt/ripple-test"
    make("install", f"DESTDIR={stage}", f"PREFIX={pre}")
    root = stage / pre.lstrip("/")
    assert (root / "lib" / "libripple.so").is_symlink()
    assert f"prefix={pre}\n" in (root / "lib" / "pkgconfig" / "ripple.pc").read_text()
    (root / "include" / "mine.h").write_text("/* not ripple's */\n")
    make("uninstall", f"DESTDIR={stage}", f"PREFIX={pre}")
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())
    assert left == ["include/mine.h"]
    assert not (root / "include" / "ripple").exists()
