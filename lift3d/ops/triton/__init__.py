"""Triton fast path of lift3d's numerical kernels (used for CUDA tensors; see ``lift3d.ops.fast_path``).

Modules (each imports ``triton`` when it is first imported, so import them only after
``lift3d.ops.fast_path.use_triton`` said yes):

* ``hashgrid``   -- multiresolution hash-grid encoding, forward and backward (table and inputs)
* ``volume``     -- packed volume compositing (weights / transmittance / alphas, fwd + bwd),
                    segmented per-ray accumulation, and occupancy-grid ray marching
* ``rasterize``  -- tiled z-buffer triangle rasterization producing the reference's ``rast``
* ``probe``      -- a trivial kernel run once per GPU by the dispatch policy (falls back if it fails)
* ``compile_check`` -- compiles every kernel for sm_90 without a GPU (``python -m ...``; a test uses it)

Every kernel computes the same function as its PyTorch reference (``lift3d.networks.hashgrid``,
``lift3d.ops.volume_rendering``, ``lift3d.ops.ray_marching``, ``lift3d.ops.rasterize``); the tests
in ``tests/test_triton_kernels.py`` compare them on CPU under ``TRITON_INTERPRET=1`` and on a GPU.
"""
