"""torch modules computing what Triton's example models compute (docs/examples/model_repository in
triton-inference-server/server), for the specs beside this file. They hold no weights: each spec's
source is an empty safetensors file the test writes."""
import torch


class AddSub(torch.nn.Module):
    """`simple` and `simple_int8`: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1."""

    def forward(self, input0, input1):
        return input0 + input1, input0 - input1


class ClassScores(torch.nn.Module):
    """A stand-in with an image classifier's tensors (densenet_onnx, inception_graphdef): `classes` scores
    that depend on each image's mean. Not the network: the examples that use it here send no real image."""

    def __init__(self, classes=1000, batched=False):
        super().__init__()
        self.classes, self.batched = classes, batched

    def forward(self, image):
        image = image.float()
        means = image.flatten(1).mean(1, keepdim=True) if self.batched else image.mean().reshape(1, 1)
        scores = (torch.arange(self.classes, dtype=torch.float32) * means).softmax(-1)
        return scores if self.batched else scores[0]
