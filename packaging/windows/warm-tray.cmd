@rem Startup-folder launcher for warm-tray, written by `warm service install`.
@start "" "{warm_tray}"
