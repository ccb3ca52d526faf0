"""Compile lift3d's Triton kernels for an NVIDIA target without a GPU (Triton's LLVM + bundled ptxas).

The interpreter (TRITON_INTERPRET=1) runs the kernels' Python semantics but not Triton's compiler,
so it can miss what only compilation rejects (types of loop-carried values, constexpr use, layout
problems). This compiles each kernel, by default for Hopper (sm_90), and optionally reports the
resource usage (registers, spills, local memory) read from the cubin with the bundled cuobjdump.

    python -m lift3d.ops.triton.compile_check              # every specialisation the wrappers launch
    python -m lift3d.ops.triton.compile_check --quick      # one specialisation per kernel (tests)
    python -m lift3d.ops.triton.compile_check --resources  # + registers / spills per kernel

Must run with TRITON_INTERPRET unset (interpreted kernels cannot be compiled).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from typing import Iterator, Tuple

P = "*fp32"


def _cases(quick: bool) -> Iterator[Tuple[str, object, dict, dict, dict]]:
    """(label, kernel, signature, constexprs, options) for each specialisation to compile."""
    from lift3d.ops.triton import hashgrid as hg
    from lift3d.ops.triton import rasterize as ras
    from lift3d.ops.triton import volume as vol

    hg_opts = dict(num_warps=hg.NUM_WARPS, enable_fp_fusion=False)
    fwd_sig = dict(x_ptr=P, table_ptr=P, out_ptr=P, meta_f_ptr=P, meta_i_ptr="*i64", N="i32", OUT_STRIDE="i32")
    bwd_sig = dict(x_ptr=P, table_ptr=P, gout_ptr=P, gtable_ptr=P, gx_ptr=P, meta_f_ptr=P, meta_i_ptr="*i64",
                   N="i32", OUT_STRIDE="i32")
    dims = (3,) if quick else (1, 2, 3)
    feats = (2,) if quick else (1, 2, 4, 8)
    for d in dims:
        for f in feats:
            yield f"hashgrid fwd D={d} F={f}", hg._fwd_kernel, fwd_sig, dict(D=d, F=f, BLOCK=hg.BLOCK_FWD), hg_opts
            for need_p, need_x in ((True, True),) if quick else ((True, True), (True, False), (False, True)):
                yield (f"hashgrid bwd D={d} F={f} params={need_p} x={need_x}", hg._bwd_kernel, bwd_sig,
                       dict(NEED_PARAMS=need_p, NEED_X=need_x, D=d, F=f, BLOCK=hg.BLOCK_BWD), hg_opts)
    v_opts = dict(num_warps=vol.NUM_WARPS, enable_fp_fusion=False)
    yield ("weights fwd", vol._weights_fwd_kernel,
           dict(ts_ptr=P, te_ptr=P, sigma_ptr=P, starts_ptr="*i64", w_ptr=P, trans_ptr=P, alpha_ptr=P),
           dict(BLOCK=vol.BLOCK_COMPOSITE), v_opts)
    for need_delta in (True,) if quick else (True, False):
        yield (f"weights bwd delta={need_delta}", vol._weights_bwd_kernel,
               dict(ts_ptr=P, te_ptr=P, sigma_ptr=P, trans_ptr=P, starts_ptr="*i64", gw_ptr=P, gt_ptr=P, ga_ptr=P,
                    gsig_ptr=P, gdelta_ptr=P), dict(NEED_DELTA=need_delta, BLOCK=vol.BLOCK_COMPOSITE), v_opts)
    for has_v, cp in ((True, 4),) if quick else ((True, 4), (True, 8), (False, 1)):
        yield (f"accumulate values={has_v} CP={cp}", vol._accumulate_kernel,
               dict(w_ptr=P, v_ptr=P, starts_ptr="*i64", out_ptr=P, C="i32"),
               dict(HAS_V=has_v, CP=cp, BLOCK=vol.BLOCK_COMPOSITE), v_opts)
    march_sig = dict(o_ptr=P, d_ptr=P, ta_ptr=P, tb_ptr=P, nsteps_ptr="*i64", base_ptr="*i64", count_ptr="*i64",
                     out_idx_ptr="*i64", out_ts_ptr=P, out_te_ptr=P, grid_ptr="*u8", box_ptr=P, R="i32", L="i32",
                     dt="fp32", cap="i32")
    variants = ((True, True),) if quick else ((True, False), (True, True), (False, False))
    for has_grid, multi in variants:
        for write in (False, True):
            yield (f"march grid={has_grid} multilevel={multi} write={write}", vol._march_kernel, march_sig,
                   dict(HAS_GRID=has_grid, MULTI_LEVEL=multi, WRITE=write, BLOCK=vol.BLOCK_MARCH),
                   dict(num_warps=4, enable_fp_fusion=False))
    yield ("rasterize tile", ras._raster_tile_kernel,
           dict(table_ptr=P, fid_ptr="*i32", box_ptr="*i32", pairs_ptr="*i32", tile_start_ptr="*i64", xs_ptr=P,
                ys_ptr=P, out_ptr="*i32", H="i32", W="i32", n_tx="i32", n_ty="i32"),
           dict(TH=ras.TILE_H, TW=ras.TILE_W), dict(num_warps=ras.NUM_WARPS, enable_fp_fusion=False))


def _resources(cubin: bytes) -> str:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        out = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True).stdout
    finally:
        os.unlink(path)
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    return f"regs {m.group(1)}, stack {m.group(2)}, shared {m.group(3)}, local {m.group(4)}" if m else out.strip()


def compile_all(arch: int = 90, quick: bool = False, resources: bool = False) -> int:
    """Compiles every case for ``sm_<arch>``; returns the number compiled (raises on failure)."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    n = 0
    for label, kernel, signature, constexprs, options in _cases(quick):
        sig = dict(signature)
        sig.update({k: "constexpr" for k in constexprs})
        compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constexprs), target=target,
                                  options=options)
        n += 1
        line = f"sm_{arch} ok: {label}"
        if resources:
            line += f"  [{_resources(compiled.asm['cubin'])}]"
        print(line, flush=True)
    return n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (90 = Hopper)")
    parser.add_argument("--quick", action="store_true", help="one specialisation per kernel")
    parser.add_argument("--resources", action="store_true", help="print registers / spills from the cubin")
    args = parser.parse_args(argv)
    n = compile_all(args.arch, args.quick, args.resources)
    print(f"compiled {n} kernel specialisations for sm_{args.arch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
