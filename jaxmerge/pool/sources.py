"""Where adapters come from: folders, folders of folders, text files of paths or hub ids.

``expand_sources`` turns what a user typed into one ``Source`` per adapter (order kept, nothing read
but directory listings). ``resolve`` gives a local folder for a source: a folder as is; a hub id
through ``huggingface_hub.hf_hub_download`` of exactly ``adapter_config.json``,
``adapter_model.safetensors`` and ``README.md`` (cache, ``cache_dir`` and ``HF_HUB_OFFLINE``
honoured; a pickle ``adapter_model.bin`` is never fetched). A source that cannot be resolved becomes
a report row with its reason, never an exception that ends the load.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
HUB_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclasses.dataclass(frozen=True)
class Source:
    spec: str                  # as the user gave it (a path or a hub id); the report's ``source``
    hub: bool = False          # a hub id (contributor = owner; license checked)
    error: str | None = None   # why it cannot be an adapter at all

    @property
    def contributor(self) -> str:
        return self.spec.split("/")[0] if self.hub else "(local)"


def is_adapter_dir(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in ADAPTER_FILES)


def is_shapes_file(path: str) -> bool:
    """A JSON list of adapter shapes (like ``llama31_8b_pool_shapes.json``): usable for statistics."""
    if not (os.path.isfile(path) and path.endswith(".json")):
        return False
    try:
        with open(path) as f:
            return isinstance(json.load(f).get("adapters"), list)
    except (ValueError, AttributeError, OSError):
        return False


def expand_sources(sources) -> list[Source]:
    """One ``Source`` per adapter, in the order given (folders walked in sorted order)."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    out: list[Source] = []
    for s in sources:
        s = os.fspath(s)
        if is_adapter_dir(s):
            out.append(Source(s))
        elif os.path.isdir(s):
            found = []
            for root, dirs, _ in os.walk(s):
                dirs.sort()
                for d in list(dirs):
                    if is_adapter_dir(os.path.join(root, d)):
                        found.append(os.path.join(root, d))
                        dirs.remove(d)  # an adapter folder is a leaf
            out += [Source(p) for p in found] or [Source(s, error=f"no adapter folders under {s}")]
        elif os.path.isfile(s) and not is_shapes_file(s):
            out += _read_list(s)
        elif os.path.isfile(s):
            out.append(Source(s, error="a shapes file describes adapters but holds no weights (stats only)"))
        elif _HUB_ID.match(s) and not s.startswith("."):
            out.append(Source(s, hub=True))
        else:
            out.append(Source(s, error="no such folder or file, and not a hub id 'owner/name'"))
    return out


def _read_list(path: str) -> list[Source]:
    out = []
    here = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            local = line if os.path.exists(line) else os.path.join(here, line)
            if os.path.exists(local):
                out += expand_sources([local]) if os.path.isdir(local) else [Source(line, error="not a folder")]
            elif _HUB_ID.match(line):
                out.append(Source(line, hub=True))
            else:
                out.append(Source(line, error="no such folder, and not a hub id 'owner/name'"))
    return out


def resolve(source: Source, cache_dir: str | None = None) -> str:
    """A local folder holding the source's files; raises ``OSError`` with the reason otherwise."""
    if source.error:
        raise OSError(source.error)
    if not source.hub:
        return source.spec
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    folder = None
    for name in HUB_FILES:
        try:
            p = hf_hub_download(source.spec, name, cache_dir=cache_dir)
            folder = os.path.dirname(p)
        except LocalEntryNotFoundError:  # offline (or no connection) and not cached
            if name == "adapter_config.json":
                raise OSError("hub id not in the local cache, and the hub cannot be reached (offline)") from None
        except EntryNotFoundError:
            continue  # README or safetensors absent: reported by the checks that need them
        except RepositoryNotFoundError:
            raise OSError("hub repository not found (or gated)") from None
    if folder is None:
        raise OSError("hub repository has no adapter_config.json")
    return folder
