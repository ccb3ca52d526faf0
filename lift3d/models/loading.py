"""Finding pretrained model folders before anything is loaded (docs/DESIGN.md "Models and weights").

`resolve_pretrained` turns a config value (`pretrained_model_name_or_path`: a local folder or a
Hugging Face id) into something `from_pretrained` can load without surprises, or fails at once with
ONE message that says what was looked for, where, and how to provide it. It never hangs on the
network: the local folder and the local HF cache are checked first; the Hub is only asked when the
environment is not offline (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE / DIFFUSERS_OFFLINE), after a
connectivity probe with a short timeout, and every network step runs under a deadline. A model found
on the Hub is downloaded into the HF cache right there (the files `from_pretrained` reads, see
`files_to_download`), so a stalled or broken download is one error line before any trial folder is
written, and loading afterwards reads a local folder.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from typing import Callable, Optional, Sequence, TypeVar
from urllib.parse import urlparse

from lift3d.errors import Lift3DError

T = TypeVar("T")

_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


class ModelNotFoundError(Lift3DError, ValueError):
    """A pretrained model could not be found locally (or on the Hub when online)."""


def offline_from_env() -> Optional[str]:
    """Name of the first env variable that puts Hugging Face libraries offline, or None."""
    for var in _OFFLINE_VARS:
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return var
    return None


def _looks_like_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and "--" not in name and ".." not in name


def _hf_cache_dir(cache_dir: Optional[str]) -> str:
    if cache_dir:
        return os.path.abspath(os.path.expanduser(cache_dir))
    env = os.environ.get("HF_HUB_CACHE")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.abspath(os.path.expanduser(os.environ["HF_HOME"])), "hub")
    try:
        from huggingface_hub import constants

        return constants.HF_HUB_CACHE
    except Exception:  # pragma: no cover - huggingface_hub is a dependency of diffusers
        return os.path.expanduser("~/.cache/huggingface/hub")


def _with_deadline(fn: Callable[[], T], timeout_s: float) -> T:
    """Runs fn in a daemon thread; raises TimeoutError if it has not returned after timeout_s."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _hub_endpoint() -> str:
    endpoint = os.environ.get("HF_ENDPOINT")
    if not endpoint:
        try:
            from huggingface_hub import constants

            endpoint = constants.ENDPOINT
        except Exception:  # pragma: no cover
            endpoint = "https://huggingface.co"
    return endpoint.rstrip("/")


def _probe_host(endpoint: str) -> tuple[str, int]:
    """(host, port) to test: the HTTPS proxy when one is configured, else the Hub endpoint."""
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        proxy = os.environ.get(var)
        if proxy:
            parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
            if parsed.hostname:
                return parsed.hostname, parsed.port or 80
    parsed = urlparse(endpoint)
    return parsed.hostname or "huggingface.co", parsed.port or (443 if parsed.scheme != "http" else 80)


def _hub_reachable(endpoint: str, timeout_s: float) -> Optional[str]:
    """None when a TCP connection to the Hub (or proxy) opens within timeout_s, else the reason."""
    host, port = _probe_host(endpoint)

    def connect():
        with socket.create_connection((host, port), timeout=timeout_s):
            return True

    try:
        _with_deadline(connect, timeout_s)
        return None
    except Exception as exc:  # DNS failure, refused, timeout
        return f"cannot reach {host}:{port} ({_describe(exc)})"


def _describe(exc: BaseException, limit: int = 160) -> str:
    """One-line 'Type: message' of an exception, shortened."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def _missing(folder: str, required_files: Sequence[str]) -> list[str]:
    return [f for f in required_files if not os.path.exists(os.path.join(folder, f))]


def _tiny_kind(what: str, required_files: Sequence[str]) -> Optional[str]:
    low = what.lower()
    if "instructpix2pix" in low:
        return "instruct-pix2pix"
    if "zero123" in low or "zero-1-to-3" in low:
        return "zero123"
    if "stable diffusion" in low or "stable-diffusion" in low or "model_index.json" in required_files:
        return "sd"
    return None


def _config_key(what: str) -> Optional[str]:
    match = re.search(r"\bfor\s+(-{0,2}[A-Za-z_][\w.\-]*)\s*$", what)
    return match.group(1) if match else None


def _error(
    name: str, what: str, required_files: Sequence[str], looked: list[str], tiny_hint: Optional[str] = None
) -> ModelNotFoundError:
    key = _config_key(what)
    files = ", ".join(required_files) if required_files else "the model files"
    how = []
    if _looks_like_repo_id(name):
        how.append(
            f"on a machine with internet run `hf download {name}` (older huggingface_hub: "
            f"`huggingface-cli download {name}`) and copy its Hugging Face cache here, or add "
            f"`--local-dir DIR` and use DIR"
        )
    how.append(
        (f"set {key}=/path/to/folder" if key else "point the config value at a local folder")
        + f" (a folder holding {files})"
    )
    if tiny_hint is None:
        kind = _tiny_kind(what, required_files)
        tiny_hint = f"`python -m lift3d.models.tiny_factory --out DIR --kind {kind}`" if kind else ""
    if tiny_hint:
        how.append(f"for tests and dry runs make a tiny random model: {tiny_hint}")
    lines = [f"{what}: no usable model found for {name!r}.", "Looked in:"]
    lines += [f"  - {item}" for item in looked]
    lines.append("To provide it:")
    lines += [f"  - {item}" for item in how]
    return ModelNotFoundError("\n".join(lines))


def resolve_pretrained(
    name_or_path: str,
    what: str,
    required_files: Sequence[str] = ("model_index.json",),
    *,
    cache_dir: Optional[str] = None,
    revision: Optional[str] = None,
    network_timeout_s: float = 3.0,
    tiny_hint: Optional[str] = None,
) -> str:
    """Returns a loadable `pretrained_model_name_or_path` for `name_or_path`, or raises ModelNotFoundError.

    what: who needs it, for the message, e.g. "Stable Diffusion for system.guidance.pretrained_model_name_or_path".
    required_files: paths relative to the model folder that must exist (e.g. "model_index.json",
        "unet/config.json"); an empty tuple only checks that the folder / repo exists.

    Order: an existing local folder -> its absolute path; a Hub id in the local HF cache -> the cached
    snapshot folder (so later loading needs no network); otherwise, only when not offline and the Hub
    answers within `network_timeout_s`, a Hub id holding the required files -> downloaded into the HF
    cache (`files_to_download`), its snapshot folder; a failed or stalled download -> ModelNotFoundError
    in one line. The lookup never blocks on the network for longer than a few timeouts; the download
    ends when huggingface_hub's stall timeouts (HF_HUB_DOWNLOAD_TIMEOUT) give up.
    tiny_hint: how to make a tiny stand-in, for the message; None infers `--kind sd|zero123` from
        `what`, "" leaves the hint out.
    """
    name = os.fspath(name_or_path).strip()
    required_files = tuple(required_files)
    looked: list[str] = []
    local = os.path.abspath(os.path.expanduser(name))

    if not name:
        looked.append("nothing: the value is empty")
        raise _error(name, what, required_files, looked, tiny_hint)
    if os.path.isdir(local):
        missing = _missing(local, required_files)
        if not missing:
            return local
        looked.append(f"local folder {local}: exists but lacks {', '.join(missing)}")
        raise _error(name, what, required_files, looked, tiny_hint)
    if os.path.exists(local):
        looked.append(f"local path {local}: is a file, expected a model folder")
        raise _error(name, what, required_files, looked, tiny_hint)
    looked.append(f"local folder {local}: does not exist")
    if not _looks_like_repo_id(name):
        raise _error(name, what, required_files, looked, tiny_hint)

    # A Hugging Face id: the local cache first, never the network.
    cache = _hf_cache_dir(cache_dir)
    try:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(name, cache_dir=cache, revision=revision, local_files_only=True)
        missing = _missing(snapshot, required_files)
        if not missing:
            return snapshot
        looked.append(f"Hugging Face cache {cache}: snapshot {snapshot} lacks {', '.join(missing)}")
    except Exception as exc:  # LocalEntryNotFoundError, validation errors, missing package
        looked.append(f"Hugging Face cache {cache}: not cached ({exc.__class__.__name__})")

    offline_var = offline_from_env()
    endpoint = _hub_endpoint()
    if offline_var:
        looked.append(f"the Hub ({endpoint}): not asked, {offline_var}={os.environ[offline_var]}")
        raise _error(name, what, required_files, looked, tiny_hint)
    unreachable = _hub_reachable(endpoint, network_timeout_s)
    if unreachable:
        looked.append(f"the Hub ({endpoint}): {unreachable}")
        raise _error(name, what, required_files, looked, tiny_hint)

    listing: list[str] = []

    def ask_hub() -> Optional[str]:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=endpoint)
        if not api.repo_exists(name):
            return "no such repository (or it is private / gated: run `hf auth login`)"
        listing.extend(s.rfilename for s in (api.model_info(name, revision=revision).siblings or []))
        absent = [f for f in required_files if not _listed(listing, f)]
        return f"repository lacks {', '.join(absent)}" if absent else None

    try:
        problem = _with_deadline(ask_hub, network_timeout_s * 5)
    except Exception as exc:
        problem = f"request failed ({_describe(exc)})"
    if problem is not None:
        looked.append(f"the Hub ({endpoint}): {problem}")
        raise _error(name, what, required_files, looked, tiny_hint)
    return _download(name, what, files_to_download(listing), cache, revision, endpoint)


def _listed(listing: Sequence[str], path: str) -> bool:
    """path (a file or a folder such as "tokenizer") is in the repo's file list."""
    return any(f == path or f.startswith(path.rstrip("/") + "/") for f in listing)


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".h5", ".onnx", ".onnx_data")


def files_to_download(listing: Sequence[str]) -> list[str]:
    """The files of a diffusers / transformers repo that `from_pretrained` reads: every small file
    (configs, tokenizer vocabularies, indexes), and per folder the weights in one format (safetensors,
    else bin), without variants (`*.fp16.*`, `*.non_ema.*`) and without the single-file checkpoints
    kept beside a diffusers layout (a root `*.ckpt` / `*.safetensors` when subfolders hold weights)."""
    small = [f for f in listing if not f.endswith(_WEIGHT_SUFFIXES)]
    by_folder: dict[str, list[str]] = {}
    for f in listing:
        base = f.rsplit("/", 1)[-1]
        if f.endswith((".safetensors", ".bin")) and base.count(".") == 1:  # no variant infix
            by_folder.setdefault(f.rsplit("/", 1)[0] if "/" in f else "", []).append(f)
    if any(folder for folder in by_folder):
        by_folder.pop("", None)  # diffusers layout: root weights are a single-file copy of the model
    weights = []
    for files in by_folder.values():
        safetensors = [f for f in files if f.endswith(".safetensors")]
        weights += safetensors or files
    return sorted(small + weights)


def _download(name: str, what: str, files: list[str], cache: str, revision: Optional[str], endpoint: str) -> str:
    """Downloads `files` of Hub repo `name` into the HF cache; the snapshot folder, or ModelNotFoundError
    in one line when the download fails or stalls (huggingface_hub gives up after HF_HUB_DOWNLOAD_TIMEOUT
    seconds without a byte, five times; its per-retry warnings are folded into this one message)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.utils import logging as hf_logging

    logger = hf_logging.get_logger("huggingface_hub")
    level = logger.level
    logger.setLevel(max(level, 40))  # ERROR: "Trying to resume download..." five times is not news
    try:
        return snapshot_download(name, cache_dir=cache, revision=revision, allow_patterns=files, endpoint=endpoint)
    except Exception as exc:  # httpx2 timeouts / protocol errors, HTTP errors, disk full
        key = _config_key(what)
        stalled = "timeout" in type(exc).__name__.lower()
        why = (f"no data for {constants.HF_HUB_DOWNLOAD_TIMEOUT} s, 5 retries: the Hub or the network stalled; "
               if stalled else "")
        raise ModelNotFoundError(
            f"{what}: downloading {name!r} from {endpoint} failed ({why}{_describe(exc)}). Run "
            f"`hf download {name}` (it resumes; on a slow link with HF_HUB_DOWNLOAD_TIMEOUT=60) and start again, "
            "or set " + (f"{key}=/path/to/folder" if key else "the config value to a local folder")
            + " holding the model."
        ) from None
    finally:
        logger.setLevel(level)


def damaged_weight_file(path: str) -> Optional[str]:
    """Why the weight file at `path` cannot be complete, or None; reads its header / index only, never
    the tensors: safetensors (8-byte header length + JSON header whose tensors must end inside the
    file), torch zip archives (.bin / .pt: the zip's central directory at the end, every member
    inside the file). Other formats: only that the file is not empty."""
    import json
    import struct
    import zipfile

    size = os.path.getsize(path)
    if size == 0:
        return "it is empty"
    with open(path, "rb") as fp:
        head = fp.read(8)
        if path.endswith(".safetensors"):
            if len(head) < 8:
                return f"it holds {size} bytes, less than a safetensors header"
            (length,) = struct.unpack("<Q", head)
            if 8 + length > size:
                return f"its header needs {8 + length} bytes, the file holds {size}"
            try:
                header = json.loads(fp.read(length))
            except ValueError:
                return "its safetensors header is not valid JSON"
            end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
            if 8 + length + end > size:
                return f"its tensors end at byte {8 + length + end}, the file holds {size}"
            return None
    if head[:2] == b"PK":  # torch.save's zip format
        try:
            with zipfile.ZipFile(path) as archive:
                ends = [info.header_offset + info.compress_size for info in archive.infolist()]
        except (zipfile.BadZipFile, OSError) as exc:
            return f"its zip index is unreadable ({_describe(exc, 80)})"
        if ends and max(ends) > size:
            return f"its members end at byte {max(ends)}, the file holds {size}"
    return None


def check_weight_files(folder: str, what: str) -> None:
    """ModelNotFoundError naming the first truncated / damaged weight file that `from_pretrained` would
    read from model folder `folder` (one format per subfolder, `files_to_download`), without reading
    any tensor: run before a trial folder is written, so a broken download is not found at step 0."""
    root = os.path.abspath(folder)
    listing = [os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root) for f in names]
    for rel in files_to_download(listing):
        if not rel.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt")):
            continue
        reason = damaged_weight_file(os.path.join(root, rel))
        if reason:
            key = _config_key(what)
            raise ModelNotFoundError(
                f"{what}: '{os.path.join(root, rel)}' is truncated or damaged ({reason}): the model folder is "
                f"incomplete. Download it again (`hf download` resumes) or set "
                + (f"{key}=/path/to/a/complete/folder." if key else "the config value to a complete folder.")
            )


def check_config_weights(cfg) -> None:
    """`check_weight_files` for every model folder an experiment config names (keys ending in
    `model_name_or_path`; Hugging Face ids through their local cache snapshot). No network."""
    from omegaconf import OmegaConf

    if "system" not in cfg:
        return
    system = OmegaConf.to_container(cfg.system, resolve=True, throw_on_missing=False)
    seen: set = set()

    def walk(node, path: str) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            sub = f"{path}.{key}"
            if isinstance(value, str) and str(key).endswith("model_name_or_path"):
                folder = _local_model_folder(value)
                if folder and folder not in seen:
                    seen.add(folder)
                    check_weight_files(folder, f"the model for {sub}")
            else:
                walk(value, sub)

    walk(system, "system")


def _local_model_folder(value: str) -> Optional[str]:
    local = os.path.abspath(os.path.expanduser(value.strip()))
    if os.path.isdir(local):
        return local
    if not _looks_like_repo_id(value.strip()):
        return None
    try:  # a Hub id: its snapshot in the local cache, never the network
        from huggingface_hub import snapshot_download

        return snapshot_download(value.strip(), cache_dir=_hf_cache_dir(None), local_files_only=True)
    except Exception:
        return None


__all__ = ["ModelNotFoundError", "check_config_weights", "check_weight_files", "damaged_weight_file",
           "files_to_download", "resolve_pretrained", "offline_from_env"]
