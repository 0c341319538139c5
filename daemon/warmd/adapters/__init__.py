"""Plugins installed from a git URL: `warm add git+URL[@REV]`, gated before anything is installed.

    manifest.py      warmd-plugin.yaml (or a bare adapter.py): the provider class, requirements, examples
    environment.py   a plugin's own virtualenv for its requirements (pip, configured as the user's)
    gate.py          the gate: import, load, run the examples and check their outputs, in runner processes
    record.py        what is installed: `<plugins_dir>/<name>/plugin.json` and the layout around it
    install.py       clone (git), gate, install, update, remove

The daemon never imports such a plugin's code: the gate and every loaded model run in runner processes
(warmd.runner). `gate.check_folder` gates any folder, which is where a drafted adapter will come in.
"""
