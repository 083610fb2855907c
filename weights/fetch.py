"""Download published checkpoints into the cache ($GPTSPEC_HOME/<format>/<name>/).

    fetch("gpt2")                  OpenAI's 124M release (TensorFlow checkpoint + tokenizer)
    fetch("openai-gpt")            OpenAI's GPT-1 release (params_*.npy + tokenizer)
    fetch("gpt2", fmt="hf")        Hugging Face's config.json + model.safetensors + tokenizer

Every file goes to `<file>.part` first; an interrupted download is resumed with an HTTP Range
request on the next attempt (or the next run).  The finished file is checked -- size and
sha256 against known_files.json where a public source gives them, otherwise against the
sha256 recorded on the first download in $GPTSPEC_HOME/downloads.lock.json -- and only then
renamed into place, so a half or corrupt file is never taken for a good one.

GPTSPEC_FETCH_BASE_URL (or base_url=) replaces every URL by {base}/{format}/{name}/{file}:
that is how the tests point the downloader at a local server.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from . import cache

OPENAI_SIZES = {"gpt2": "124M", "gpt2-medium": "355M", "gpt2-large": "774M", "gpt2-xl": "1558M"}
GPT2_BLOB = "https://openaipublic.blob.core.windows.net/gpt-2"
GPT2_FILES = ("checkpoint", "hparams.json", "model.ckpt.index", "model.ckpt.meta",
              "model.ckpt.data-00000-of-00001", "encoder.json", "vocab.bpe")
GPT2_TOKENIZER = ("encoder.json", "vocab.bpe")  # from encodings/main, whose sha256 tiktoken publishes
GPT1_RAW = "https://raw.githubusercontent.com/openai/finetune-transformer-lm/master/model"
GPT1_FILES = ("params_shapes.json", *(f"params_{n}.npy" for n in range(10)), "encoder_bpe_40000.json",
              "vocab_40000.bpe")
HF_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")
KNOWN_FILES = json.loads((Path(__file__).with_name("known_files.json")).read_text(encoding="utf-8"))["files"]
LOCK_FILE = "downloads.lock.json"
CHUNK = 1 << 20


def remote_files(name: str, fmt: str, base_url: str | None = None) -> dict[str, str]:
    """{file name: URL} of everything `fetch` downloads for a model."""
    cache.model_dir(name, fmt)  # validates name and format
    if fmt == "hf":
        files = {f: f"https://huggingface.co/{name}/resolve/main/{f}" for f in HF_FILES}
    elif name == "openai-gpt":
        files = {f: f"{GPT1_RAW}/{f}" for f in GPT1_FILES}
    else:
        files = {f: f"{GPT2_BLOB}/encodings/main/{f}" if f in GPT2_TOKENIZER
                 else f"{GPT2_BLOB}/models/{OPENAI_SIZES[name]}/{f}" for f in GPT2_FILES}
    if base_url:
        files = {f: f"{base_url.rstrip('/')}/{fmt}/{name}/{f}" for f in files}
    return files


class Progress:
    """A plain-text progress line on a stream: name, percent, MB done / total, speed."""

    def __init__(self, label: str, total: int | None, done: int, stream, interval: float = 0.25):
        self.label, self.total, self.done, self.stream = label, total, done, stream
        self.start, self.start_bytes, self.last, self.interval = time.monotonic(), done, 0.0, interval

    def update(self, n: int, final: bool = False) -> None:
        self.done += n
        now = time.monotonic()
        if self.stream is None or (not final and now - self.last < self.interval):
            return
        self.last = now
        rate = (self.done - self.start_bytes) / max(now - self.start, 1e-9) / 1e6
        size = f"{self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB" if self.total else f"{self.done / 1e6:.1f} MB"
        percent = f"{100 * self.done / self.total:5.1f}%" if self.total else "   ?  "
        self.stream.write(f"\r  {self.label}  {percent}  {size}  {rate:.1f} MB/s")
        if final:
            self.stream.write("\n")
        self.stream.flush()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


class Interrupted(OSError):
    """The connection broke mid-file; the .part file is kept for a resume."""


def download(url: str, dest: Path, *, size: int | None = None, timeout: float = 60, progress=None) -> Path:
    """Download `url` into dest.part, resuming a partial one with a Range request. Returns the .part."""
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    if size is not None and start > size:  # longer than the real file: it cannot be resumed
        part.unlink()
        start = 0
    if size is not None and start == size:
        return part  # complete already (an earlier run stopped before checking it)
    request = urllib.request.Request(url, headers={"User-Agent": "gptspec-fetch"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:  # "range not satisfiable": the .part already holds the whole file
            return part
        raise OSError(f"download failed: {url} answered HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        raise OSError(f"download failed: cannot reach {url} ({getattr(error, 'reason', error)})") from None
    with response:
        content_range = response.headers.get("Content-Range", "")
        resumed = start and response.status == 206 and content_range.startswith(f"bytes {start}-")
        if not resumed:
            start = 0  # the server sent the whole file (it ignored or does not support Range)
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else size
        bar = Progress(dest.name, total, start, progress)
        received = start
        with open(part, "ab" if resumed else "wb") as out:
            try:
                for block in iter(lambda: response.read(CHUNK), b""):
                    out.write(block)
                    received += len(block)
                    bar.update(len(block))
            except (http.client.HTTPException, OSError) as error:
                if progress is not None:
                    progress.write("\n")
                raise Interrupted(f"download of {url} interrupted after {received} bytes ({error}); the "
                                  f"partial file {part} is kept: run the same command again to resume") from None
        if total is not None and received < total:
            raise Interrupted(f"download of {url} interrupted after {received} of {total} bytes (the server "
                              f"closed the connection); the partial file {part} is kept: run the same command "
                              f"again to resume")
        bar.update(0, final=True)
    return part


class Lock:
    """sha256 values recorded on first download, for files no public source gives a hash for."""

    def __init__(self, root: Path):
        self.path = root / LOCK_FILE
        self.entries = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}

    def get(self, key: str) -> dict:
        return self.entries.get(key, {})

    def record(self, key: str, size: int, sha256: str, url: str) -> None:
        self.entries[key] = {"size": size, "sha256": sha256, "url": url}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.entries, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)


def check_file(path: Path, url: str, expected: dict, origin: str) -> str:
    """sha256 of `path` after checking its size and hash against `expected`; raise on mismatch."""
    size = path.stat().st_size
    if expected.get("size") is not None and size != expected["size"]:
        raise OSError(f"size mismatch for {url}: got {size} bytes, expected {expected['size']} ({origin})")
    digest = sha256_of(path)
    if expected.get("sha256") and digest != expected["sha256"]:
        raise OSError(f"checksum mismatch for {url}: sha256 {digest}, expected {expected['sha256']} ({origin})")
    return digest


def fetch_file(file: str, url: str, folder: Path, key: str, lock: Lock, *, retries: int, log, progress,
               timeout: float) -> None:
    """Download one file (resuming, retrying), check it, and rename it into place."""
    dest = folder / file
    published = KNOWN_FILES.get(key.rsplit("/", 1)[0], {}).get(file, {})
    expected = published if published.get("sha256") else {**published, **lock.get(key)}
    origin = ("published value, weights/known_files.json" if published.get("sha256") else
              f"recorded at first download in {lock.path}" if lock.get(key) else "published size, known_files.json")
    if dest.is_file():
        try:
            check_file(dest, url, expected, origin)
        except OSError as error:
            raise OSError(f"{dest} is already there but fails its check: {error}; delete it to download it "
                          f"again") from None
        print(f"{file}: already present", file=log)
        return
    for attempt in range(retries + 1):
        try:
            part = download(url, dest, size=expected.get("size"), progress=progress, timeout=timeout)
            break
        except Interrupted as error:
            if attempt == retries:
                raise
            print(f"{file}: {error}; retrying ({attempt + 1}/{retries})", file=log)
            time.sleep(0.5 * 2 ** attempt)  # give a flaky connection a moment
    try:
        digest = check_file(part, url, expected, origin)
    except OSError as error:
        part.unlink()
        raise OSError(f"{error}; the download was deleted and nothing was placed at {dest}") from None
    if not expected.get("sha256"):
        lock.record(key, part.stat().st_size, digest, url)
        print(f"{file}: no published sha256 to verify against; recorded {digest} in {lock.path} so later "
              f"downloads are checked against it", file=log)
    os.replace(part, dest)


def fetch(name: str, fmt: str = "openai", *, base_url: str | None = None, retries: int = 3,
          timeout: float = 60, log=sys.stderr, progress=sys.stderr) -> Path:
    """Download model `name` in format `fmt` ("openai" or "hf") into the cache; return its folder."""
    folder = cache.model_dir(name, fmt)
    base_url = base_url or os.environ.get("GPTSPEC_FETCH_BASE_URL")
    files = remote_files(name, fmt, base_url)
    folder.mkdir(parents=True, exist_ok=True)
    lock = Lock(cache.home())
    print(f"fetching {name} ({fmt}) into {folder}", file=log)
    for file, url in files.items():
        fetch_file(file, url, folder, f"{fmt}/{name}/{file}", lock, retries=retries, log=log, progress=progress,
                   timeout=timeout)
    return folder
