"""Prometheus metrics on a loopback port, agreeing with V2's ModelStatistics."""
from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from models import affine_spec, affine_specs
from waiting import free_port
from warm import WarmdError
from warmd.v2 import inference_pb2 as v2
from warmd.v2 import inference_pb2_grpc




def _samples(port: int) -> dict[tuple, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_requests_errors_loads_and_bytes(start_daemon, short_tmp: Path) -> None:
    specs = affine_specs(short_tmp, 1.0)
    (specs / "a.yaml").write_text(affine_spec("w.safetensors"))
    port = free_port()
    daemon = start_daemon(specs, config={"metrics": f"127.0.0.1:{port}"})
    with daemon.client() as c:
        for _ in range(3):
            c.infer("a", {"x": np.ones((1, 4), np.float32)})
        try:
            c.infer("a", {"x": np.ones((1, 5), np.float32)})
        except WarmdError:
            pass
        resident = _samples(port)[("warmd_resident_bytes", (("device", "cpu"), ("model", "a"), ("tier", "cpu")))]
        assert resident == int(c.get("a").residency.measured_bytes) > 0
        c.unload("a")
    with grpc.insecure_channel(f"unix:{daemon.socket}") as ch:
        [stats] = inference_pb2_grpc.GRPCInferenceServiceStub(ch).ModelStatistics(
            v2.ModelStatisticsRequest(name="a"), timeout=10).model_stats
    m = _samples(port)
    assert m[("warmd_requests_total", (("model", "a"), ("outcome", "success")))] == stats.inference_stats.success.count == 3
    assert m[("warmd_requests_total", (("model", "a"), ("outcome", "failure")))] == stats.inference_stats.fail.count == 1
    assert m[("warmd_request_errors_total", (("code", "invalid_argument"), ("model", "a")))] == 1
    assert m[("warmd_request_seconds_count", (("model", "a"),))] == 4
    assert m[("warmd_loads_total", (("model", "a"),))] == 1
    assert m[("warmd_unloads_total", (("model", "a"), ("reason", "request")))] == 1
    assert m[("warmd_queue_depth", (("model", "a"),))] == 0


def test_metrics_refuse_a_non_loopback_address(start_daemon) -> None:
    daemon = start_daemon(config={"metrics": f"0.0.0.0:{free_port()}"}, ready=False)
    assert daemon.proc.wait(timeout=20) != 0
    assert "metrics have no token" in daemon.log()
