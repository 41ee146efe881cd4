"""Compiled chunk kernels: ``cpu`` (Numba, fused one-pass CPU kernel) and ``cuda`` (CuPy RawKernels).

Both compile lazily on first use; importing this package needs neither a GPU nor a compiler.
"""
