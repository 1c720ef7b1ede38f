"""How much memory a registry model will take once loaded, read from its files.

Torch-free: the size comes from the weight files on disk (a local folder, the
hub cache's snapshot, or a single checkpoint), before anything is loaded, so
that a worker can make room first. A ``.safetensors`` header lists every
tensor's dtype and shape, which gives the element count exactly; a ``.bin``
file is taken at its size, as float32 unless its name says fp16 or bf16. The
element count times the size of the dtype the engine loads in is the estimate.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from pathlib import Path

from openletz.engines.diffusers.registry import ComponentSource, Resolved, SourceKind

#: bytes per element of the floating-point dtypes a safetensors file may hold;
#: these are cast to the engine's dtype on load, everything else keeps its size
_FLOAT_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
_INT_DTYPES = {"I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1}
_WEIGHTS = (".safetensors", ".bin")
_HEADER_LIMIT = 100 * 2**20


def _safetensors_bytes(path: Path, itemsize: int) -> int:
    with path.open("rb") as stream:
        (length,) = struct.unpack("<Q", stream.read(8))
        if length > _HEADER_LIMIT:
            raise ValueError(f"{path}: implausible safetensors header of {length} bytes")
        header = json.loads(stream.read(length))
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        count = math.prod(info["shape"])
        dtype = info["dtype"]
        if dtype in _FLOAT_DTYPES:
            total += count * itemsize
        else:
            total += count * _INT_DTYPES.get(dtype, 1)
    return total


def _bin_bytes(path: Path, itemsize: int) -> int:
    half = any(f".{v}" in path.name for v in ("fp16", "bf16", "half"))
    return path.stat().st_size * itemsize // (2 if half else 4)


def file_bytes(path: Path, itemsize: int) -> int:
    """Bytes that the weights in ``path`` take once loaded with ``itemsize``-byte floats."""
    if path.suffix == ".safetensors":
        return _safetensors_bytes(path, itemsize)
    return _bin_bytes(path, itemsize)


def _chosen_weights(folder: Path, variant: str | None) -> list[Path]:
    """The weight files of one component folder that diffusers would load: the
    variant's if it is given and present, else the plain ones; safetensors
    before ``.bin``."""
    files = [p for p in folder.iterdir() if p.suffix in _WEIGHTS and p.is_file()]
    # "diffusion_pytorch_model.fp16.safetensors", "model.fp16-00001-of-00002.safetensors"
    plain = [p for p in files if "." not in p.stem]
    chosen = plain
    if variant:
        marked = [p for p in files if p.stem.split(".", 1)[-1].startswith(variant)]
        chosen = marked or plain
    safe = [p for p in chosen if p.suffix == ".safetensors"]
    return safe or chosen


def _folder_bytes(folder: Path, variant: str | None, itemsize: int) -> int:
    return sum(file_bytes(p, itemsize) for p in _chosen_weights(folder, variant))


def _hub_snapshot(repo: str, probe: str, revision: str | None) -> Path | None:
    """The local snapshot folder of a hub repository, if ``probe`` is cached in it."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # the SDK's bare install: no hub cache to look in
        return None
    found = try_to_load_from_cache(repo, probe, revision=revision)
    if not isinstance(found, str):
        return None
    # the probe is inside the snapshot, one folder down per "/" in its name
    return Path(found).parents[probe.count("/")]


def pipeline_folder(resolved: Resolved) -> Path | None:
    """The diffusers folder of ``resolved`` on this machine (for a hub id, its
    snapshot in the cache); None for single files and models not here."""
    source = resolved.source
    if source.kind is SourceKind.FOLDER:
        path = Path(source.location)
        return path if path.is_dir() else None
    if source.kind is SourceKind.HUB:
        return _hub_snapshot(source.location, "model_index.json", resolved.spec.revision)
    return None


def _probe(component: ComponentSource) -> str:
    leaf = "tokenizer_config.json" if component.name.startswith("tokenizer") else "config.json"
    return f"{component.subfolder}/{leaf}" if component.subfolder else leaf


def component_folder(component: ComponentSource) -> Path | None:
    """The folder on this machine that holds ``component``, or None."""
    if component.kind is SourceKind.HUB:
        root = _hub_snapshot(component.location, _probe(component), component.revision)
    else:
        root = Path(component.location)
    if root is None:
        return None
    folder = root / component.subfolder if component.subfolder else root
    return folder if folder.is_dir() else None


def _pipeline_components(folder: Path) -> Iterable[str]:
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    for name, entry in index.items():
        if not name.startswith("_") and isinstance(entry, list) and None not in entry:
            yield name


def estimate_bytes(resolved: Resolved, itemsize: int) -> int | None:
    """Bytes that ``resolved`` will take once loaded with ``itemsize``-byte floats,
    from its files on this machine; None when they are not all here (or cannot
    be read), so that nothing is known before loading."""
    overridden = {c.name for c in resolved.components}
    total = 0
    try:
        if resolved.source.kind is SourceKind.SINGLE_FILE:
            total += file_bytes(Path(resolved.source.location), itemsize)
        else:
            folder = pipeline_folder(resolved)
            if folder is None:
                return None
            # the loader asks for the variant of hub models only
            variant = resolved.spec.variant if resolved.source.kind is SourceKind.HUB else None
            for name in _pipeline_components(folder):
                part = folder / name
                if name not in overridden and part.is_dir():
                    total += _folder_bytes(part, variant, itemsize)
        for component in resolved.components:
            found = component_folder(component)
            if found is None:
                return None
            total += _folder_bytes(found, component.variant, itemsize)
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    return total
