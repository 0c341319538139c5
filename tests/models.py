"""Tiny torch models for tests and benchmarks, written into a specs folder as a factory file plus
safetensors weights, so the daemon loads them through the real `torch` provider."""
from __future__ import annotations

import textwrap
from pathlib import Path

FACTORY = textwrap.dedent('''
    import time

    import torch


    class Affine(torch.nn.Module):
        """y = x @ W.T + b, optionally slow to build and to run (to observe reloads and drains)."""

        def __init__(self, width=4, load_delay=0.0, delay=0.0):
            super().__init__()
            time.sleep(load_delay)
            self.lin = torch.nn.Linear(width, width)
            self.delay = delay

        def forward(self, x):
            if self.delay:
                time.sleep(self.delay)
            return self.lin(x)


    def mlp(sizes=(64, 128, 10)):
        layers = []
        for a, b in zip(sizes, sizes[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        return torch.nn.Sequential(*layers[:-1])
''')


def write_factory(folder: Path) -> None:
    (folder / "testmodels.py").write_text(FACTORY)


def write_affine_weights(path: Path, scale: float, width: int = 4) -> None:
    """Weights W = scale * I, b = 0: the model returns scale * x."""
    import torch
    from safetensors.torch import save_file

    save_file({"lin.weight": torch.eye(width) * scale, "lin.bias": torch.zeros(width)}, str(path))


def affine_spec(weights: str, *, load_delay: float = 0.0, delay: float = 0.0, extra: str = "") -> str:
    return textwrap.dedent(f"""\
        task: custom
        provider: torch
        device: cpu
        source:
          path: {weights}
        options:
          factory: testmodels.py:Affine
          args: {{load_delay: {load_delay}, delay: {delay}}}
        inputs:
          - {{name: x, dtype: FP32, shape: [-1, 4]}}
        outputs:
          - {{name: y, dtype: FP32, shape: [-1, 4]}}
        """) + extra


def affine_specs(root: Path, scale: float) -> Path:
    """A specs folder under `root` with the factory file and `w.safetensors` (y = scale * x)."""
    specs = root / "specs"
    specs.mkdir()
    write_factory(specs)
    write_affine_weights(specs / "w.safetensors", scale)
    return specs


def write_mlp(folder: Path, name: str = "mlp", sizes: tuple[int, ...] = (64, 128, 10), seed: int = 0) -> None:
    """A spec `name`.yaml serving a seeded MLP (the benchmark's tiny model)."""
    import torch
    from safetensors.torch import save_file

    write_factory(folder)
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    module = torch.nn.Sequential(*layers[:-1])
    save_file(module.state_dict(), str(folder / f"{name}.safetensors"))
    (folder / f"{name}.yaml").write_text(textwrap.dedent(f"""\
        description: tiny MLP {'x'.join(map(str, sizes))}
        task: custom
        provider: torch
        device: cpu
        keep_alive: -1
        source:
          path: {name}.safetensors
        options:
          factory: testmodels.py:mlp
          args: {{sizes: {list(sizes)}}}
        inputs:
          - {{name: x, dtype: FP32, shape: [-1, {sizes[0]}]}}
        outputs:
          - {{name: y, dtype: FP32, shape: [-1, {sizes[-1]}]}}
        """))
