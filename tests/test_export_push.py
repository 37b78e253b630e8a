"""``scripts/export_hf.py --push``: the exported folder uploaded with huggingface_hub's own API
(``create_repo`` + ``upload_folder``), tested without a network against a stand-in for the Hub's
upload endpoints on 127.0.0.1 (``HF_ENDPOINT`` pointed at it), which records what arrives: the
files must be the exported files, name for name and byte for byte."""
import base64
import json
import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import open_clip
import pytest
import torch

from openclip_unimlip.export import PushFailed, export_checkpoint, push_folder

from paths import REPO

LIFETIME_S = 120  # the stand-in shuts itself down after this, whatever happens to the test
TOKEN = "hf_stand_in_token"
REFUSAL = 'You don\'t have the rights to create a model under the namespace "our-org"'


class _Hub(ThreadingHTTPServer):
    def __init__(self, refuse_create: bool):
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.refuse_create = refuse_create
        self.created, self.commits, self.files, self.tokens = [], [], {}, set()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class _HubHandler(BaseHTTPRequestHandler):
    """The endpoints huggingface_hub's create_repo and upload_folder call, as the Hub answers them;
    every file is asked for inline ("regular", in the commit itself): the LFS / Xet transfer of
    large files is huggingface_hub's own code, not exercised here. Anything else: 404."""

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802
        hub: _Hub = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        hub.tokens.add(self.headers.get("Authorization"))
        if self.path == "/api/repos/create":
            if hub.refuse_create:
                return self._reply(403, {"error": REFUSAL})
            request = json.loads(body)
            url = f"{hub.endpoint}/{request['organization']}/{request['name']}"
            if any((r["organization"], r["name"]) == (request["organization"], request["name"]) for r in hub.created):
                return self._reply(409, {"error": "You already created this model repo", "url": url})
            hub.created.append(request)
            return self._reply(200, {"url": url})
        if self.path == "/api/validate-yaml":
            return self._reply(200, {"errors": [], "warnings": []})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                               for f in files]})
        if "/commit/" in self.path:
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            hub.commits.append((self.path, lines[0]["value"]["summary"]))
            for line in lines[1:]:
                assert line["key"] == "file" and line["value"]["encoding"] == "base64", line["key"]
                hub.files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            repo_id = "/".join(self.path.split("/")[3:5])  # /api/models/<org>/<name>/commit/<revision>
            return self._reply(200, {"commitUrl": f"{hub.endpoint}/{repo_id}/commit/{'0' * 40}", "commitOid": "0" * 40})
        return self._reply(404, {"error": f"the stand-in has no {self.path}"})

    def do_GET(self):  # noqa: N802
        return self._reply(404, {"error": f"the stand-in has no {self.path}"})

    def log_message(self, *args):
        pass


@contextmanager
def stand_in_hub(refuse_create: bool = False):
    hub = _Hub(refuse_create)
    thread = threading.Thread(target=hub.serve_forever, daemon=True)
    thread.start()
    deadline = threading.Timer(LIFETIME_S, hub.shutdown)
    deadline.start()
    try:
        yield hub
    finally:
        deadline.cancel()
        hub.shutdown()
        hub.server_close()
        thread.join(timeout=10)


@pytest.fixture
def hub_client(monkeypatch, tmp_path):
    """huggingface_hub in this process pointed at a stand-in (as HF_ENDPOINT would), online, with a token."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)

    def point_at(hub: _Hub) -> None:
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)

    return point_at


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An open_clip_train checkpoint of the tiny MLIP (Liu) model (DDP keys)."""
    path = tmp_path_factory.mktemp("run") / "epoch_1.pt"
    torch.manual_seed(0)
    model = open_clip.create_model("mlip-liu-tiny", pretrained_text=False)
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def test_push_uploads_the_exported_folder_file_for_file(checkpoint, tmp_path):
    """The user's command, in a fresh interpreter with HF_ENDPOINT and HF_TOKEN set."""
    out = tmp_path / "export"
    with stand_in_hub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf-home"),
               "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}
        result = subprocess.run([sys.executable, str(REPO / "scripts" / "export_hf.py"), str(checkpoint),
                                 "--model", "mlip-liu-tiny", "--output-dir", str(out), "--repo-id", "our-org/liu-tiny",
                                 "--push", "--private"], capture_output=True, text=True, env=env, timeout=LIFETIME_S)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pushed to our-org/liu-tiny" in result.stdout
    exported = _files(out)
    assert {"open_clip_config.json", "open_clip_model.safetensors", "README.md", "tokenizer.json"} <= set(exported)
    assert hub.files == exported  # names and bytes
    assert hub.created == [{"name": "liu-tiny", "organization": "our-org", "visibility": "private", "type": "model"}]
    assert [path for path, _ in hub.commits] == ["/api/models/our-org/liu-tiny/commit/main"]
    assert hub.tokens == {f"Bearer {TOKEN}"}


def test_push_folder_without_private_leaves_visibility_to_the_hub(hub_client, tmp_path):
    folder = tmp_path / "folder"
    (folder / "nested").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(bytes(range(256)) * 3)
    (folder / "nested" / "config.json").write_text('{"a": 1}')
    with stand_in_hub() as hub:
        hub_client(hub)
        url = push_folder(folder, "our-org/plain")
    assert url.startswith(hub.endpoint)
    assert hub.files == _files(folder) and set(hub.files) == {"weights.bin", "nested/config.json"}
    assert hub.created == [{"name": "plain", "organization": "our-org", "type": "model"}]


def test_a_second_push_to_an_existing_repo_uploads_into_it(hub_client, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    with stand_in_hub() as hub:
        hub_client(hub)
        for version in (b"first", b"second"):
            (folder / "weights.bin").write_bytes(version)
            push_folder(folder, "our-org/plain")
    assert hub.files == {"weights.bin": b"second"} and len(hub.commits) == 2
    assert hub.created == [{"name": "plain", "organization": "our-org", "type": "model"}]  # the Hub answered 409


def test_the_python_api_pushes_only_when_asked_and_never_private_by_default():
    import inspect

    from openclip_unimlip import export as hub_module

    exporter = inspect.signature(hub_module.export_checkpoint).parameters
    assert exporter["push"].default is False and exporter["private"].default is False
    assert inspect.signature(push_folder).parameters["private"].default is False


def test_an_upload_error_is_one_message_and_the_export_stays(checkpoint, hub_client, tmp_path):
    from openclip_unimlip import export as hub_module
    from openclip_unimlip.commands import export as export_command

    folder = tmp_path / "export"
    with stand_in_hub(refuse_create=True) as hub:
        hub_client(hub)
        with pytest.raises(SystemExit) as stopped:
            export_command.main([str(checkpoint), "--model", "mlip-liu-tiny", "--output-dir", str(folder),
                                 "--repo-id", "our-org/liu-tiny", "--push"])
    message = str(stopped.value)
    assert "\n" not in message and message.startswith(f"error: Uploading {folder} to the Hugging Face repo our-org")
    assert REFUSAL in message and f"`hf upload our-org/liu-tiny {folder}`" in message
    assert hub.files == {} and (folder / "open_clip_model.safetensors").is_file()  # written, then the push failed
    # nobody listening: the same single message, naming the connection error
    with stand_in_hub() as closed:
        hub_client(closed)
    with pytest.raises(PushFailed, match=r"failed: ConnectError: .*The export in .* is complete") as failed:
        hub_module.push_folder(folder, "our-org/liu-tiny")
    assert "\n" not in str(failed.value)


@pytest.mark.parametrize("problem, match", [
    ("no repo id", "needs a repo id"),
    ("bad repo id", "our org/liu"),
    ("offline", "HF_HUB_OFFLINE is set"),
    ("no token", "needs a Hugging Face token"),
])
def test_push_is_refused_before_anything_starts(problem, match, hub_client, monkeypatch, tmp_path):
    from huggingface_hub import constants

    repo_id = {"no repo id": None, "bad repo id": "our org/liu"}.get(problem, "our-org/liu")
    if problem == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    if problem == "no token":
        monkeypatch.delenv("HF_TOKEN")
        monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    # the checkpoint does not exist: a check made after loading would fail on that instead
    with pytest.raises(ValueError, match=match):
        export_checkpoint(tmp_path / "epoch_1.pt", tmp_path / "out", repo_id=repo_id, push=True)
    assert not (tmp_path / "out").exists()
