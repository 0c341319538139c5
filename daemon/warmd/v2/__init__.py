"""Generated stubs of the Open Inference Protocol (KServe V2), package `inference` (proto/warmd/v2)."""
