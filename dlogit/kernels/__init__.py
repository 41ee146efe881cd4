"""Device kernels for dlogit (CuPy RawKernels, compiled lazily; importing needs no GPU)."""
