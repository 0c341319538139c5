"""The factory of specs/affine.yaml: y = x @ lin.weight.T + lin.bias on rows of `width` numbers.

The weights in affine.safetensors are named after the module's state dict (`lin.weight`, `lin.bias`):
lin.weight = 2 * identity, lin.bias = 1, so the model computes y = 2x + 1.
"""
import torch


class Affine(torch.nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)
