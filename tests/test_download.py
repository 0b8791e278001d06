"""Weights by URL (focalnet_det/checkpoint/download.py), served from 127.0.0.1 by the test."""
import hashlib
import http.server
import os
import socket
import threading
from collections import Counter

import pytest
import torch

from detectron2.modeling import build_model

from focalnet_det.checkpoint import FocalNetCheckpointer
from focalnet_det.checkpoint.download import download
from focalnet_det.config import load_config
from focalnet_det.errors import UserError
from focalnet_det.model_zoo import find_entry
from focalnet_det.modeling.backbone.focalnet import FocalNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(embed_dim=16, depths=(1, 1, 2, 1), drop_path_rate=0.0)


class Server:
    """An HTTP server on 127.0.0.1: ``files[path] = bytes`` are served whole; ``truncated[path] = bytes`` are
    announced with twice their length and the connection closed after them; anything else is a 404."""

    def __init__(self):
        self.files, self.truncated, self.requests = {}, {}, Counter()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests[self.path] += 1
                body = owner.files.get(self.path, owner.truncated.get(self.path))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                length = len(body) * (2 if self.path in owner.truncated else 1)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FOCALNET_DET_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "weights"


def official_bytes(tmp_path, seed=0):
    """An official classification checkpoint of a tiny FocalNet, as bytes; and the FocalNet."""
    torch.manual_seed(seed)
    net = FocalNet(focal_windows=(3,) * 4, **TINY)
    path = tmp_path / f"src{seed}.pth"
    torch.save({"model": {k: v for k, v in net.state_dict().items() if not k.startswith("norm")}}, path)
    return path.read_bytes(), net


def test_good_file_is_checked_and_then_reused_without_a_request(tmp_path, server, cache):
    body = os.urandom(3 * 1024 * 1024 + 17)  # several read chunks
    server.files["/dir/w.pth"] = body
    sha = hashlib.sha256(body).hexdigest()
    (cache).mkdir(parents=True)
    (cache / "w.pth.12345.part").write_bytes(body[:100])  # a killed earlier run's leftover: not trusted

    path = download(server.url("/dir/w.pth"), sha256=sha)
    assert path == str(cache / "w.pth") and open(path, "rb").read() == body
    assert server.requests["/dir/w.pth"] == 1
    assert download(server.url("/dir/w.pth"), sha256=sha) == path  # cached, re-verified
    assert download(server.url("/dir/w.pth")) == path
    assert server.requests["/dir/w.pth"] == 1
    assert sorted(os.listdir(cache)) == ["w.pth", "w.pth.12345.part"]  # no temp file of its own left

    (cache / "w.pth").write_bytes(body[:-1])  # damaged in the cache: the hash says so, the file stays for the user
    with pytest.raises(UserError, match=r"cached weights .*w\.pth .*sha256"):
        download(server.url("/dir/w.pth"), sha256=sha)


def test_truncated_transfer_leaves_nothing_a_later_run_trusts(server, cache):
    server.truncated["/cut.pth"] = b"x" * 5000
    url = server.url("/cut.pth")
    for _ in range(2):  # the second run downloads again: nothing was kept
        with pytest.raises(UserError) as info:
            download(url)
        assert "5000 of 10000 bytes" in str(info.value) and url in str(info.value)
        assert "\n" not in str(info.value)
        assert os.listdir(cache) == []
    assert server.requests["/cut.pth"] == 2


def test_http_error_is_one_line_naming_url_status_and_cache(server, cache):
    url = server.url("/nope/focalnet_tiny_srf.pth")
    with pytest.raises(UserError) as info:
        download(url)
    message = str(info.value)
    assert "\n" not in message and url in message and "HTTP 404" in message
    assert str(cache) in message and f"put it at {cache / 'focalnet_tiny_srf.pth'}" in message
    assert not os.path.exists(cache / "focalnet_tiny_srf.pth")


def test_unreachable_server_is_one_line(cache):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/w.pth"
    with pytest.raises(UserError) as info:
        download(url)
    message = str(info.value)
    assert "\n" not in message and url in message and "refused" in message.lower() and str(cache) in message


def test_wrong_sha256_keeps_nothing(server, cache):
    server.files["/w.pth"] = b"weights"
    with pytest.raises(UserError, match=r"sha256 is [0-9a-f]{64}, expected 0{64}"):
        download(server.url("/w.pth"), sha256="0" * 64)
    assert os.listdir(cache) == []


def test_model_zoo_sha256_is_applied(server, cache):
    """A file the zoo knows, with other bytes than the release: refused by the zoo's hash."""
    entry = find_entry("focalnet_base_iso_16.pth")
    assert entry is not None and entry.sha256
    server.files["/focalnet_base_iso_16.pth"] = b"not the released file"
    with pytest.raises(UserError, match=f"expected {entry.sha256}"):
        download(server.url("/focalnet_base_iso_16.pth"))
    assert os.listdir(cache) == []


def test_model_weights_url_loads_through_the_checkpointer(tmp_path, server, cache):
    body, net = official_bytes(tmp_path)
    server.files["/focalnet_test.pth"] = body
    cfg = load_config(os.path.join(ROOT, "configs/Tiny/mask_rcnn_focalnet_tiny_shapes.yaml"), [
        "MODEL.FOCALNET.EMBED_DIM", "16", "MODEL.FOCALNET.DEPTHS", "[1, 1, 2, 1]",
        "MODEL.FOCALNET.FOCAL_WINDOWS", "[3, 3, 3, 3]", "MODEL.WEIGHTS", server.url("/focalnet_test.pth")])
    model = build_model(cfg)
    FocalNetCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    got = model.backbone.bottom_up.state_dict()
    for k, v in net.state_dict().items():
        if not k.startswith("norm"):
            assert torch.equal(got[k], v), k
    assert (cache / "focalnet_test.pth").read_bytes() == body

    with pytest.raises(UserError, match="HTTP 404"):
        FocalNetCheckpointer(model).load(server.url("/missing.pth"))


def test_convert_tool_reads_a_url(tmp_path, server, cache):
    import convert_checkpoint

    body, net = official_bytes(tmp_path, seed=1)
    server.files["/focalnet_tool.pth"] = body
    out = tmp_path / "d2.pth"
    assert convert_checkpoint.main([server.url("/focalnet_tool.pth"), str(out)]) == 0
    model = torch.load(out, weights_only=True)["model"]
    assert torch.equal(model["backbone.patch_embed.proj.weight"], net.patch_embed.proj.weight)
    assert (cache / "focalnet_tool.pth").read_bytes() == body
    assert convert_checkpoint.main(["--inspect", server.url("/focalnet_tool.pth")]) == 0  # from the cache
    assert server.requests["/focalnet_tool.pth"] == 1
