"""The downloader end to end against a local HTTP server on 127.0.0.1 (no internet needed).

The server (a stdlib http.server in a thread, ephemeral port, always shut down) serves
generated files under {base}/{format}/{name}/{file}, honours Range requests, records the
Range header of every request, and can drop the connection half way through a file once.
"""
from __future__ import annotations

import hashlib
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

import ref_numpy as R
import weights
from weights import fetch

from . import checkpoint_writers as W

CONFIG = R.GPTConfig(arch="gpt2", n_vocab=40, n_ctx=8, n_embd=16, n_head=2, n_layer=2)
TIMEOUT = 10  # seconds, for every socket operation in these tests


class FileServer:
    """Serves `files` ({url path: bytes}); `drop_once` paths send half their body, then hang up, once."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop_once: set[str] = set()
        self.redirects: dict[str, str] = {}  # path -> path it answers 302 Found with (as the HF hub does)
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                server.requests.append((self.path, self.headers.get("Range")))
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.base_url + server.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if self.path in server.drop_once:
                    server.drop_once.discard(self.path)
                    self.wfile.write(body[start:start + (len(body) - start) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = TIMEOUT
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def add_folder(self, fmt: str, name: str, folder) -> None:
        for path in folder.iterdir():
            self.files[f"/{fmt}/{name}/{path.name}"] = path.read_bytes()


@pytest.fixture
def server(monkeypatch, tmp_path):
    monkeypatch.setenv("GPTSPEC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.delenv("GPTSPEC_FETCH_BASE_URL", raising=False)
    monkeypatch.setattr(fetch, "KNOWN_FILES", {})  # each test states what is "published"
    files = FileServer()
    files.thread.start()
    try:
        yield files
    finally:
        files.httpd.shutdown()
        files.httpd.server_close()
        files.thread.join(timeout=TIMEOUT)


def hf_model(tmp_path, n_vocab=40):
    """A tiny HF folder with every file fetch downloads (tokenizer files as placeholders)."""
    folder = W.write_hf(tmp_path / "src", CONFIG.replace(n_vocab=n_vocab), R.init_params(CONFIG.replace(n_vocab=n_vocab), 2))
    (folder / "vocab.json").write_text('{"a": 0}')
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def run_fetch(server, name="distilgpt2", fmt="hf", **options):
    log = io.StringIO()
    folder = fetch.fetch(name, fmt, base_url=server.base_url, log=log, progress=log, timeout=TIMEOUT, **options)
    return folder, log.getvalue()


def publish(monkeypatch, key: str, file: str, data: bytes) -> None:
    monkeypatch.setitem(fetch.KNOWN_FILES, key, {**fetch.KNOWN_FILES.get(key, {}),
                                                 file: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}})


def test_success_places_every_file_and_the_model_loads(server, tmp_path, monkeypatch):
    source = hf_model(tmp_path)
    server.add_folder("hf", "distilgpt2", source)
    publish(monkeypatch, "hf/distilgpt2", "model.safetensors", (source / "model.safetensors").read_bytes())
    folder, log = run_fetch(server)
    assert folder == tmp_path / "home" / "hf" / "distilgpt2"
    assert sorted(p.name for p in folder.iterdir()) == sorted(fetch.HF_FILES)  # no .part left behind
    for path in folder.iterdir():
        assert path.read_bytes() == (source / path.name).read_bytes()
    assert "100.0%" in log  # the progress line
    assert "config.json: no published sha256" in log and "model.safetensors: no published" not in log
    config, params = weights.load("distilgpt2")  # by name, through the cache
    assert config == CONFIG
    assert all(r is None for _, r in server.requests)  # nothing to resume
    _, log = run_fetch(server)
    assert log.count("already present") == len(fetch.HF_FILES)


def test_openai_layout_fetched_and_loaded_by_name(server, tmp_path):
    params = R.init_params(CONFIG, 3)
    source = W.write_openai_gpt2(tmp_path / "src", CONFIG, params)
    for name in ("encoder.json", "vocab.bpe", "model.ckpt.meta"):
        (source / name).write_text("placeholder")
    server.add_folder("openai", "gpt2", source)
    run_fetch(server, "gpt2", "openai")
    config, loaded = weights.load("gpt2")
    np.testing.assert_array_equal(loaded["wte"], params["wte"])


def test_corrupted_file_is_refused_and_nothing_placed(server, tmp_path, monkeypatch):
    source = hf_model(tmp_path)
    server.add_folder("hf", "distilgpt2", source)
    good = (source / "model.safetensors").read_bytes()
    publish(monkeypatch, "hf/distilgpt2", "model.safetensors", good)
    server.files["/hf/distilgpt2/model.safetensors"] = good[:100] + bytes([good[100] ^ 1]) + good[101:]
    with pytest.raises(OSError, match="checksum mismatch for .*/hf/distilgpt2/model.safetensors") as info:
        run_fetch(server)
    assert "nothing was placed" in str(info.value)
    folder = tmp_path / "home" / "hf" / "distilgpt2"
    assert not (folder / "model.safetensors").exists() and not (folder / "model.safetensors.part").exists()


def test_wrong_size_is_refused(server, tmp_path, monkeypatch):
    source = hf_model(tmp_path)
    server.add_folder("hf", "distilgpt2", source)
    monkeypatch.setitem(fetch.KNOWN_FILES, "hf/distilgpt2", {"config.json": {"size": 3}})
    with pytest.raises(OSError, match=r"size mismatch for .*config.json: got \d+ bytes, expected 3"):
        run_fetch(server)
    assert not (tmp_path / "home" / "hf" / "distilgpt2" / "config.json").exists()


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path, monkeypatch):
    source = hf_model(tmp_path, n_vocab=4000)  # a model.safetensors of ~300 KB
    server.add_folder("hf", "distilgpt2", source)
    path = "/hf/distilgpt2/model.safetensors"
    body = server.files[path]
    publish(monkeypatch, "hf/distilgpt2", "model.safetensors", body)
    server.drop_once.add(path)
    with pytest.raises(OSError, match="interrupted after .* run the same command again to resume"):
        run_fetch(server, retries=0)
    folder = tmp_path / "home" / "hf" / "distilgpt2"
    part = folder / "model.safetensors.part"
    assert part.stat().st_size == len(body) // 2 and not (folder / "model.safetensors").exists()

    run_fetch(server, retries=0)  # the second run resumes
    assert (folder / "model.safetensors").read_bytes() == body and not part.exists()
    assert (path, f"bytes={len(body) // 2}-") in server.requests


def test_resume_follows_a_redirect_with_the_range_header(server, tmp_path):
    """The Hugging Face hub answers resolve/main/... with a redirect to its CDN: the Range
    header must survive the redirect."""
    source = hf_model(tmp_path, n_vocab=4000)
    server.add_folder("hf", "distilgpt2", source)
    body = server.files.pop("/hf/distilgpt2/model.safetensors")
    server.files["/cdn/blob"] = body
    server.redirects["/hf/distilgpt2/model.safetensors"] = "/cdn/blob"
    server.drop_once.add("/cdn/blob")
    with pytest.raises(OSError, match="interrupted"):
        run_fetch(server, retries=0)
    run_fetch(server, retries=0)
    assert (tmp_path / "home" / "hf" / "distilgpt2" / "model.safetensors").read_bytes() == body
    assert ("/cdn/blob", f"bytes={len(body) // 2}-") in server.requests


def test_retries_resume_within_one_run(server, tmp_path, monkeypatch):
    source = hf_model(tmp_path, n_vocab=4000)
    server.add_folder("hf", "distilgpt2", source)
    path = "/hf/distilgpt2/model.safetensors"
    server.drop_once.add(path)
    _, log = run_fetch(server, retries=1)
    assert "retrying (1/1)" in log
    assert [r for p, r in server.requests if p == path][1].startswith("bytes=")


def test_first_download_is_locked_and_later_downloads_checked(server, tmp_path):
    source = hf_model(tmp_path)
    server.add_folder("hf", "distilgpt2", source)
    run_fetch(server)
    lock = tmp_path / "home" / fetch.LOCK_FILE
    assert "hf/distilgpt2/config.json" in lock.read_text()
    (tmp_path / "home" / "hf" / "distilgpt2" / "config.json").unlink()
    original = server.files["/hf/distilgpt2/config.json"]
    server.files["/hf/distilgpt2/config.json"] = original.replace(b"gelu_new", b"gelu_old")  # same size
    with pytest.raises(OSError, match=f"checksum mismatch .*recorded at first download in {lock}"):
        run_fetch(server)


def test_404_names_the_url(server, tmp_path):
    source = hf_model(tmp_path)
    server.add_folder("hf", "distilgpt2", source)
    del server.files["/hf/distilgpt2/merges.txt"]
    with pytest.raises(OSError, match=f"{server.base_url}/hf/distilgpt2/merges.txt answered HTTP 404"):
        run_fetch(server)
    assert not (tmp_path / "home" / "hf" / "distilgpt2" / "merges.txt").exists()


def test_official_urls():
    files = fetch.remote_files("gpt2-medium", "openai")
    assert files["model.ckpt.index"] == "https://openaipublic.blob.core.windows.net/gpt-2/models/355M/model.ckpt.index"
    assert files["vocab.bpe"] == "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe"
    gpt1 = fetch.remote_files("openai-gpt", "openai")
    assert len(gpt1) == 13 and gpt1["params_9.npy"] == (
        "https://raw.githubusercontent.com/openai/finetune-transformer-lm/master/model/params_9.npy")
    assert fetch.remote_files("gpt2-xl", "hf")["model.safetensors"] == (
        "https://huggingface.co/gpt2-xl/resolve/main/model.safetensors")
    with pytest.raises(ValueError, match="'distilgpt2' is not published in the 'openai' format .*--format hf"):
        fetch.remote_files("distilgpt2", "openai")


def test_known_files_cite_a_source_for_every_value():
    """known_files.json holds only values with a named public source (see its "sources")."""
    import json
    from pathlib import Path

    table = json.loads((Path(fetch.__file__).with_name("known_files.json")).read_text())
    for key, files in table["files"].items():
        for file, entry in files.items():
            assert entry.get("source"), (key, file)
            assert any(source in entry["source"] for source in table["sources"]), (key, file)
            assert file in fetch.remote_files(key.split("/")[1], key.split("/")[0]), (key, file)


def test_a_complete_part_file_is_checked_and_placed_without_downloading(server, tmp_path, monkeypatch):
    """A run that died after the last byte but before the rename leaves a whole .part behind."""
    source = hf_model(tmp_path)
    server.add_folder("hf", "distilgpt2", source)
    body = (source / "model.safetensors").read_bytes()
    publish(monkeypatch, "hf/distilgpt2", "model.safetensors", body)
    folder = tmp_path / "home" / "hf" / "distilgpt2"
    folder.mkdir(parents=True)
    (folder / "model.safetensors.part").write_bytes(body)
    run_fetch(server)
    assert (folder / "model.safetensors").read_bytes() == body
    assert not any(p == "/hf/distilgpt2/model.safetensors" for p, _ in server.requests)


def test_fetch_command(server, tmp_path, capsys):
    from gptspec.cli import main

    server.add_folder("hf", "distilgpt2", hf_model(tmp_path))
    assert main(["fetch", "distilgpt2", "--format", "hf", "--base-url", server.base_url, "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "home" / "hf" / "distilgpt2")
    del server.files["/hf/distilgpt2/config.json"]
    assert main(["fetch", "gpt2", "--format", "hf", "--base-url", server.base_url, "--quiet"]) == 2
    assert "answered HTTP 404" in capsys.readouterr().err


def test_a_present_file_that_fails_its_check_is_reported(server, tmp_path, monkeypatch):
    source = hf_model(tmp_path)
    server.add_folder("hf", "distilgpt2", source)
    run_fetch(server)
    merges = tmp_path / "home" / "hf" / "distilgpt2" / "merges.txt"
    merges.write_text("#version: 0.3\n")  # same size, other bytes
    with pytest.raises(OSError, match=f"{merges} is already there but fails its check: checksum mismatch .*delete it"):
        run_fetch(server)
