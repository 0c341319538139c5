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


    class Frames(torch.nn.Module):
        """Processes its input frame by frame (the first dimension), reporting progress, stopping when
        the caller cancels: a stand-in for a long video job."""

        def __init__(self, delay=0.02):
            super().__init__()
            self.delay = delay

        def forward(self, x, context):
            for i in range(x.shape[0]):
                context.check()
                time.sleep(self.delay)
                context.progress(i + 1, x.shape[0], "frames")
            return x * 2


    class Faulty(torch.nn.Module):
        """y = x, except when the first value asks for a failure: 1 runs out of memory, 2 is a plain bug."""

        def forward(self, x):
            kind = int(x.flatten()[0]) if x.numel() else 0
            if kind == 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            if kind == 2:
                raise KeyError("no entry 'oops' in the lookup table")
            return x


    class Threads(torch.nn.Module):
        """Returns the intra-op threads torch runs this call with (the daemon's cpu_threads)."""

        def forward(self, x):
            return torch.full((x.shape[0], 1), float(torch.get_num_threads()))


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


WORDS = ("hello world there go on once upon a time good bad the of and to in is it you that he was for on are "
         "with as his they be at one have this from or had by word but what some we can out other were all "
         "your when up use how said an each she which do their if will way about many then them would write "
         "like so these her long make thing see him two has look more day could come did my sound no most")


def write_tokenizer(folder: Path) -> None:
    """A small real WordPiece tokenizer (BERT's special tokens, a few hundred entries), made locally."""
    import transformers

    pieces = sorted({w for w in WORDS.split()} | {"##" + c for c in "abcdefghijklmnopqrstuvwxyz"}
                    | set("abcdefghijklmnopqrstuvwxyz0123456789.,!?"))
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *pieces]) + "\n")
    transformers.BertTokenizerFast(vocab=str(vocab)).save_pretrained(str(folder))


CONTEXT = 32768     # the tiny GPT-2's context length (n_positions), in tokens


def write_tiny_transformer(folder: Path, kind: str, seed: int = 0) -> None:
    """A tiny random transformers model saved as safetensors with a real tokenizer: kind "gpt2" (causal
    LM), "bert" (encoder) or "bert-classifier" (3 labels)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    write_tokenizer(folder)
    vocab = len((folder / "vocab.txt").read_text().split())
    if kind == "gpt2":
        # A context past the 20000 tokens the cancel and deadline tests ask for (warmd refuses a request
        # beyond it); it runs to max_new_tokens.
        config = transformers.GPT2Config(vocab_size=vocab, n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=2,
                                         bos_token_id=2, eos_token_id=None)
        model = transformers.GPT2LMHeadModel(config)
        with torch.no_grad():      # special tokens score 0, so greedy decoding picks words (visible text)
            model.transformer.wte.weight[:5] = 0
    else:
        config = transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64,
                                         id2label={0: "neg", 1: "neu", 2: "pos"},
                                         label2id={"neg": 0, "neu": 1, "pos": 2})
        model = (transformers.BertForSequenceClassification if kind == "bert-classifier"
                 else transformers.BertModel)(config)
    model.save_pretrained(str(folder), safe_serialization=True)
