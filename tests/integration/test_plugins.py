"""Provider plugins from the plugins folder: found at start and while running, broken ones reported and
disabled without harm, code outside the folder never imported."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from waiting import wait_until

GOOD = textwrap.dedent('''
    from warmd.providers import InferResult, Provider


    class Triple(Provider):
        """y = 3x, no weights."""

        name = "triple"

        @classmethod
        def estimate(cls, spec, files):
            return 0

        def load(self):
            return 0

        def infer(self, request):
            return InferResult(tensors={k: v * 3 for k, v in request.tensors.items()})

        def unload(self):
            pass
''')


def _plugin(folder: Path, name: str, code: str) -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / "adapter.py").write_text(code)


def test_plugins_found_broken_ones_disabled_and_outside_code_refused(start_daemon, short_tmp: Path) -> None:
    plugins, specs, outside = short_tmp / "plugins", short_tmp / "specs", short_tmp / "outside"
    specs.mkdir()
    _plugin(plugins, "good", GOOD)
    _plugin(plugins, "syntax", "def broken(:\n")
    _plugin(plugins, "raises", "raise SystemExit('plugin says no')\n")
    _plugin(plugins, "clash", GOOD.replace('name = "triple"', 'name = "torch"'))
    _plugin(outside, "evil", GOOD.replace('name = "triple"', 'name = "evil"') + "\nopen(__file__ + '.ran', 'w')\n")
    (plugins / "escape").symlink_to(outside / "evil")
    (specs / "none.safetensors").write_bytes(b"")
    for name, provider in (("t", "triple"), ("q", "quad"), ("e", "evil")):
        (specs / f"{name}.yaml").write_text(f"provider: {provider}\ndevice: cpu\nsource: {{path: none.safetensors}}\n")
    daemon = start_daemon(specs, config={"plugins_dir": str(plugins)})
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    with daemon.client() as c:
        assert np.array_equal(c.infer("t", {"x": x}).outputs["x"], 3 * x)
        states = {p.name: (p.provider, p.error) for p in c.status().plugins}
        assert states["good"] == ("triple", "")
        assert "SyntaxError" in states["syntax"][1] and "plugin says no" in states["raises"][1]
        assert "built in" in states["clash"][1] and "outside the plugins folder" in states["escape"][1]
        assert not (outside / "evil" / "adapter.py.ran").exists()       # never imported
        rejected = {Path(r.file).name: r.code for r in c.list().rejected}
        assert rejected == {"q.yaml": "unsupported_provider", "e.yaml": "unsupported_provider"}

        # a plugin added while the daemon runs: the waiting spec is accepted and serves
        _plugin(plugins, "quad", GOOD.replace('name = "triple"', 'name = "quad"').replace("v * 3", "v * 4"))
        wait_until(lambda: "q" in {m.name for m in c.list().models}, timeout=20)
        assert np.array_equal(c.infer("q", {"x": x}).outputs["x"], 4 * x)
        assert np.array_equal(c.infer("t", {"x": x}).outputs["x"], 3 * x)   # the others untouched
    status = daemon.warm("status")
    assert "quad (quad)" in status.stdout and "syntax (disabled" in status.stdout
