"""The generated API package: current with protos/, lint-clean, usable on its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import llmmesh
import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False, **kwargs)  # type: ignore[call-overload]


def test_generated_code_is_current() -> None:
    result = _run(sys.executable, "scripts/gen_protos.py", "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_notices_a_stale_file(tmp_path: Path) -> None:
    """Copy the repo's protos and package aside, change a proto, and expect --check to fail."""
    copy = tmp_path / "repo"
    for part in ["scripts", "protos", "api"]:
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    proto = copy / "protos/llmmesh/embedding/v1/embedding.proto"
    proto.write_text(proto.read_text().replace("int32 dimension = 3;",
                                               "int32 dimension = 3;\n  int32 extra = 9;", 1))
    result = subprocess.run([sys.executable, str(copy / "scripts/gen_protos.py"), "--check"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    assert "embedding_pb2" in result.stdout


def test_buf_lint_passes() -> None:
    buf = ROOT / "node_modules" / ".bin" / "buf"
    assert buf.exists(), "run the setup (npm ci) to install the buf CLI"
    result = _run(str(buf), "lint")
    assert result.returncode == 0, result.stdout + result.stderr


def _descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    found = descriptor_pb2.FileDescriptorSet()
    found.ParseFromString(llmmesh.descriptor_set_path().read_bytes())
    return found


def test_descriptor_set_holds_every_service_and_its_imports() -> None:
    files = {f.name: f for f in _descriptor_set().file}
    assert {"google/api/http.proto", "google/api/annotations.proto",
            "google/rpc/status.proto", "google/protobuf/timestamp.proto"} <= set(files)
    services = {f"{f.package}.{s.name}" for f in files.values() for s in f.service}
    assert {"llmmesh.auth.v1.AuthService", "llmmesh.auth.v1.QuotaService",
            "llmmesh.chat.v1.ChatService", "llmmesh.document.v1.DocumentService",
            "llmmesh.embedding.v1.EmbeddingService"} <= services


# Called by services only, with the service credential: never routed by the edge.
INTERNAL_SERVICES = frozenset({"QuotaService", "CredentialService"})


def test_public_rpcs_have_http_rules_and_internal_ones_none() -> None:
    unannotated, internal_annotated = [], []
    for file in _descriptor_set().file:
        if not file.package.startswith("llmmesh."):
            continue
        for service in file.service:
            for method in service.method:
                options = descriptor_pb2.MethodOptions()
                options.ParseFromString(method.options.SerializeToString())
                has_rule = options.HasExtension(annotations_pb2.http)
                name = f"{service.name}.{method.name}"
                internal = service.name in INTERNAL_SERVICES
                if internal and has_rule:
                    internal_annotated.append(name)
                if not internal and not has_rule:
                    unannotated.append(name)
    assert unannotated == []
    assert internal_annotated == []


def test_lists_page_and_streams_are_typed_events() -> None:
    from llmmesh.chat.v1 import chat_pb2
    from llmmesh.document.v1 import document_pb2

    for file in _descriptor_set().file:
        for message in file.message_type:
            if message.name.startswith("List") and message.name.endswith("Request"):
                fields = {f.name for f in message.field}
                assert {"page_size", "page_token"} <= fields, message.name
    event = chat_pb2.StreamChatResponse.DESCRIPTOR.oneofs_by_name["event"]
    assert {f.name for f in event.fields} == {"start", "delta", "sources", "done", "error"}
    stream = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].methods_by_name["StreamChat"]
    assert stream.server_streaming
    upload = document_pb2.DESCRIPTOR.services_by_name["DocumentService"].methods_by_name[
        "UploadDocument"]
    assert upload.client_streaming
    assert isinstance(http_pb2.HttpRule(), http_pb2.HttpRule)


def test_the_api_package_imports_without_the_services_dependencies(tmp_path: Path) -> None:
    """A client needs only grpcio, protobuf and googleapis-common-protos."""
    script = tmp_path / "client.py"
    script.write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'services','redis','jwt','bcrypt','langchain',\n"
        "                                  'chromadb','cryptography','prometheus_client'}:\n"
        "            raise ImportError('client must not need ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import json, llmmesh\n"
        "from llmmesh.auth.v1 import auth_pb2, auth_pb2_grpc, quota_pb2_grpc\n"
        "from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc\n"
        "from llmmesh.document.v1 import document_pb2_grpc\n"
        "from llmmesh.embedding.v1 import embedding_pb2_grpc\n"
        "assert llmmesh.descriptor_set_path().exists()\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in\n"
        "      {'services','redis','jwt','bcrypt'})))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "api" / "python")}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=60, check=False, env=env, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_api_package_declares_only_client_dependencies() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "api/python/pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].strip() for d in project["dependencies"]}
    assert names == {"grpcio", "protobuf", "googleapis-common-protos"}


@pytest.mark.parametrize("path", ["llmmesh/auth/v1/auth_pb2.pyi",
                                  "llmmesh/auth/v1/auth_pb2_grpc.pyi", "llmmesh/py.typed"])
def test_type_stubs_ship(path: str) -> None:
    assert (ROOT / "api/python" / path).exists()
