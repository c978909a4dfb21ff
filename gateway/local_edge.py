"""Start a real Envoy for a local deployment: render its files into a directory of its
own, start the binary, wait until it is ready. The launcher and the tests use this."""

from __future__ import annotations

from pathlib import Path

from gateway.deployment import Deployment
from gateway.edge_files import render, write
from gateway.envoy_process import EnvoyProcess
from gateway.spec import EdgeSpec


def start_local_edge(spec: EdgeSpec, deployment: Deployment, *, log_path: Path,
                     extra_descriptors: bytes = b"", concurrency: int | None = None,
                     log_level: str = "warning") -> EnvoyProcess:
    """Envoy serving `spec` on `deployment` (whose `config_dir` receives the files)."""
    import llmmesh

    directory = Path(deployment.config_dir)
    write(render(spec, llmmesh.descriptor_set_path(), deployment,
                 extra_descriptors=extra_descriptors), directory)
    envoy = EnvoyProcess(directory / "envoy.yaml", log_path, deployment.admin_port,
                         concurrency=concurrency, log_level=log_level)
    envoy.start()
    try:
        envoy.wait_ready()
    except BaseException:
        envoy.stop()
        raise
    return envoy
