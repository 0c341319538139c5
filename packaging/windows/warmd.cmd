@rem Startup-folder launcher for warmd, written by `warm service install`.
@start "" /min "{warmd}" serve --specs {specs}
