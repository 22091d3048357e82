"""What a suite's records were really made from: the bytes of its data, the generators, the weights, the device.

A suite names things (``model: embedded``, ``device: auto``, ``path: data.jsonl``) that can change
under the same name. These fingerprints go into every record's settings digest and into ``run.json``,
so a rerun after such a change computes other keys and the runner names the change before any model
loads, instead of passing old records off as done.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path
from typing import Any

from lukv_bench.registry.task_contract import data_version
from lukv_bench.runtime.models import EMBEDDED_PACKAGE, resolve_device
from lukv_bench.tasks import task_type

_CHUNK = 1 << 20


def _file_hash(path: Path, h: Any | None = None) -> str:
    h = h or hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()[:16]


def _folder_hash(folder: Path, weights_by_size: bool = False) -> str:
    """A digest of every file under ``folder`` (its relative path and bytes; weight files by name and size)."""
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(folder)).encode() + b"\0")
        if weights_by_size and p.suffix in (".safetensors", ".bin", ".gguf", ".pt"):
            h.update(str(p.stat().st_size).encode())  # hashing gigabytes of weights on every start is too slow
        else:
            _file_hash(p, h)
    return h.hexdigest()[:16]


def model_identity(spec: str) -> str:
    """What ``model:`` stands for: the embedded package and its version, a file's hash, or a folder's contents.

    A local folder counts by its config, tokenizer and other small files' bytes and its weight files'
    names and sizes; a hub id by itself (the hub pins nothing here).
    """
    if spec == "embedded":
        try:
            return f"embedded: {EMBEDDED_PACKAGE} {importlib.metadata.version(EMBEDDED_PACKAGE)}"
        except importlib.metadata.PackageNotFoundError:
            return f"embedded: {EMBEDDED_PACKAGE} (not installed)"
    path = Path(spec).expanduser()
    if path.is_file():
        return f"file {path.name}: sha256 {_file_hash(path)}"
    if path.is_dir():
        return f"folder {path.name}: {_folder_hash(path, weights_by_size=True)}"
    return f"hub: {spec}"


def device_identity(setting: str) -> str:
    """The device type ``device:`` stands for: ``auto`` as it resolves in this process (``cuda`` or ``cpu``).

    An explicit device is not checked here: units may run on other machines (Ray workers with GPUs), where
    the session checks it; the runner takes the type they report.
    """
    return resolve_device(setting).type if setting == "auto" else setting.split(":")[0]


def data_fingerprint(task: dict[str, Any]) -> dict[str, str]:
    """{key: digest} of every file or folder a task entry reads, and the version of its data generator."""
    kind = task_type(task["type"])
    out: dict[str, str] = {}
    for name, key in kind.keys.items():
        value = task.get(name)
        if key.type not in ("file", "folder") or not isinstance(value, str):
            continue
        path = Path(value)
        if path.is_file():
            out[name] = f"sha256 {_file_hash(path)}"
        elif path.is_dir():
            out[name] = f"sha256 {_folder_hash(path)}"
    version = data_version(kind, task)
    if version:
        out["generator"] = version
    return out


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed between two fingerprints of a run (``run.json``'s ``fingerprint`` entries)."""
    diffs = []
    for what in ("model", "device"):
        if old.get(what) != new.get(what):
            diffs.append(f"{what}: resolved to {old.get(what)!r} then, {new.get(what)!r} now")
    old_data, new_data = old.get("data", {}), new.get("data", {})
    for task, fp in new_data.items():
        before = old_data.get(task)
        if before is None:
            continue  # a task added since: only adds keys
        for key in sorted(set(before) | set(fp)):
            if before.get(key) != fp.get(key):
                diffs.append(f"tasks[{task}].{key}: its data changed ({before.get(key)} -> {fp.get(key)})")
    return diffs
