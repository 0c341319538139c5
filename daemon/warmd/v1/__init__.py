"""warmd.v1: the stubs generated from proto/warmd/v1/warmd.proto (warmd_pb2, warmd_pb2_grpc; never edited by
hand), and what both sides (daemon, client) derive from them, said once here."""
from __future__ import annotations

from warmd.v1 import warmd_pb2 as _pb

# A model's state by the name the API speaks (`warm ls --state ready`, the layer's ModelInfo.state) -> the enum.
MODEL_STATES: dict[str, int] = {name.lower(): value for name, value in _pb.ModelState.items() if value}
