"""Runner processes: a model whose code must not run inside the daemon runs in a process of its own.

Plugins installed from git always run this way; any spec may ask for it with `isolation: process`. One
runner per loaded model, started by its provider's `load()` and killed by its `unload()`, so the scheduler
decides residency as for any other provider and the memory (host and GPU) is surely given back.

    channel.py   the wire: JSON messages over a Unix socket, tensors in shared-memory arenas
    child.py     the runner's side (`python -m warmd.runner.child`): imports the provider and serves it
    process.py   the daemon's side: `Runner` (one process) and `RunnerProvider` (a Provider backed by one)
"""
