"""warm: the client of the warmd daemon (library, CLI). Importing it never imports torch.

    from warm import Client
    with Client() as c:
        vec = c.infer("minilm", text=["hello"]).outputs["embedding"]
"""
from warm.client import Chunk, Client, InferResult, Shared
from warmd.errors import Code, WarmdError

__all__ = ["Chunk", "Client", "Code", "InferResult", "Shared", "WarmdError"]
