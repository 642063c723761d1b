"""Our AVX2 W4A4 kernel (quant/cpu_kernel.py): exact against a float64 product of the same
codes, at the shapes where its tiling, padding and int16 widening have edges; picked by
`auto` on AVX2 CPUs, VNNI or not; a failed build falls back (int_mm or fbgemm) with its reason."""
from __future__ import annotations

import subprocess

import pytest
import torch

from omega_qvla_ros.quant import cpu_kernel, int_gemm

needs_kernel = pytest.mark.skipif(not cpu_kernel.available(), reason=str(cpu_kernel.unavailable_reason()))


def reference(z, w_codes, w_scale, s):
    codes = torch.clamp(torch.round(z / s), -8, 7)
    return (codes.double() @ w_codes.double().t()) * w_scale.double() * torch.as_tensor(s).double()


# the tiles: k-pairs (AVX2, everywhere: 0) and k-quads (the VNNI tiles, where the CPU has them)
TILES = [0] + [pytest.param(t, marks=pytest.mark.skipif(t not in cpu_kernel.vnni_tiles(), reason="no such VNNI"))
               for t in cpu_kernel.VNNI_TILES]


@needs_kernel
@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("nibbles", [False, True])  # int8 weights; int4 unpacked per tile
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 33, 17), (50, 128, 128), (13, 190, 49), (9, 6, 40),
                                   (5, 600, 70), (144, 192, 768), (3, 2048, 20), (6, 131, 35)])
def test_kernel_is_exact(m, k, n, nibbles, tile):
    g = torch.Generator().manual_seed(m * 1000 + k + n)
    w_codes = torch.randint(-8, 8, (n, k), generator=g)
    w_scale = torch.rand(n, generator=g) + 0.1
    z = torch.randn(m, k, generator=g) * 4
    w = cpu_kernel.pack_weights(w_codes, w_scale, nibbles=nibbles, quads=tile != 0)
    assert w.quads == (tile != 0)
    assert w.packed.numel() <= (-(-n // 16) * 16) * (k + 3) // (2 if nibbles else 1) + 64
    for s, rows in ((0.7, None), (1.0, None), (1.0, torch.rand(m, 1, generator=g) + 0.2)):
        y = cpu_kernel.linear(z, w, s, rows, tile=tile or None)
        ref = reference(z, w_codes, w_scale, rows if rows is not None else s)
        assert y.shape == (m, n) and y.dtype == torch.float32
        assert float((y.double() - ref).abs().max() / ref.abs().max()) < 1e-6


@needs_kernel
def test_kernel_extreme_codes_do_not_saturate():
    """Every product at its largest (activation code 7 or -8 against weight -8), over
    more k than one int16 stretch: the int16 pair sums must widen in time."""
    k = 1000
    w_codes = torch.full((20, k), -8)
    for nibbles in (False, True):
        for tile in [0] + cpu_kernel.vnni_tiles():
            w = cpu_kernel.pack_weights(w_codes, torch.ones(20), nibbles=nibbles, quads=tile != 0)
            for code in (7.0, -8.0):
                y = cpu_kernel.linear(torch.full((5, k), code), w, tile=tile or None)
                assert torch.equal(y, torch.full((5, 20), code * -8 * k))


@needs_kernel
def test_vnni_layout_only_where_its_tile_runs(monkeypatch):
    """pack_weights takes the VNNI tiles' layout by default where one runs (TILE None: the
    best), k-pairs with TILE 0, and a plan refuses weights in that layout where no VNNI
    tile runs (they would be read as k-pairs: wrong sums, no error); the kernel refuses them
    too where its build lacks the tile asked for."""
    codes = torch.randint(-8, 8, (16, 64), generator=torch.Generator().manual_seed(0))
    assert cpu_kernel.pack_weights(codes, torch.ones(16)).quads == cpu_kernel.vnni()
    monkeypatch.setattr(cpu_kernel, "TILE", 0)
    assert not cpu_kernel.pack_weights(codes, torch.ones(16)).quads
    monkeypatch.setattr(cpu_kernel, "TILE", 3)
    with pytest.raises(ValueError, match="VNNI tile 3"):
        cpu_kernel.pack_weights(codes, torch.ones(16))
    monkeypatch.setattr(cpu_kernel, "TILE", None)
    w = cpu_kernel.pack_weights(codes, torch.ones(16), quads=True)
    with pytest.raises(ValueError, match="VNNI tile 3"):
        cpu_kernel.Plan(w, tile=3)
    # the kernel itself computes nothing on k-quad weights for a tile its build lacks
    monkeypatch.setattr(cpu_kernel, "vnni_tiles", lambda: [3])
    with pytest.raises(ValueError, match="tile this kernel build lacks"):
        cpu_kernel.Plan(w, tile=3)(torch.randn(4, 64))
    monkeypatch.setattr(cpu_kernel, "vnni_tiles", lambda: [])
    with pytest.raises(ValueError, match="VNNI"):
        cpu_kernel.Plan(w)


@needs_kernel
def test_kernel_rounds_half_to_even_as_torch():
    z = torch.tensor([[0.5, 1.5, 2.5, -0.5, -1.5, 6.5, 7.5, -8.5, 100.0, -100.0] * 2])
    w_codes = torch.eye(20, dtype=torch.int64)
    y = cpu_kernel.linear(z, cpu_kernel.pack_weights(w_codes, torch.ones(20)))
    assert torch.equal(y, torch.clamp(torch.round(z), -8, 7))


@needs_kernel
def test_kernel_rejects_a_wrong_width_or_device():
    w = cpu_kernel.pack_weights(torch.zeros(4, 8, dtype=torch.int64), torch.ones(4))
    with pytest.raises(ValueError, match="8"):
        cpu_kernel.linear(torch.zeros(2, 9), w)
    with pytest.raises(ValueError, match="CPU"):
        cpu_kernel.linear(torch.zeros(2, 8, device="meta"), w)
    with pytest.raises(ValueError, match="CPU"):
        int_gemm.pick_backend(torch.device("meta"), "avx2")


def test_auto_picks_the_kernel_wherever_it_builds():
    """With or without VNNI (int_gemm.py: it ran whole chunks faster than torch._int_mm on
    an AVX-512 VNNI CPU too); int_mm with VNNI, fbgemm without, where it cannot build."""
    cpu = torch.device("cpu")
    if cpu_kernel.available():
        assert int_gemm.pick_backend(cpu) == "avx2"
    elif int_gemm.cpu_has_vnni():
        assert int_gemm.pick_backend(cpu) == "int_mm"
    else:
        assert int_gemm.pick_backend(cpu) in ("fbgemm", "exact")


def test_a_failed_build_falls_back_with_its_reason(tmp_path, monkeypatch):
    """No compiler that works: `available()` is False with the compiler's reason, `auto`
    takes int_mm with VNNI and fbgemm without, and asking for "avx2" by name is a clear error."""
    if cpu_kernel._cpu_ok() is not None:
        pytest.skip(cpu_kernel._cpu_ok())
    monkeypatch.setenv("OMEGA_QVLA_KERNEL_CACHE", str(tmp_path))  # nothing built there yet
    monkeypatch.setenv("CC", "false")
    cpu_kernel._lib.cache_clear()
    try:
        fallback = "int_mm" if int_gemm.cpu_has_vnni() else "fbgemm"
        with pytest.warns(RuntimeWarning, match=f"integer layers use (torch._)?{fallback}"):
            assert not cpu_kernel.available()
        assert "did not build" in cpu_kernel.unavailable_reason()
        assert int_gemm.pick_backend(torch.device("cpu")) in ((fallback,) if fallback == "int_mm"
                                                              else ("fbgemm", "exact"))
        with pytest.raises(ValueError, match="not available"):
            int_gemm.pick_backend(torch.device("cpu"), "avx2")
    finally:
        monkeypatch.undo()
        cpu_kernel._lib.cache_clear()
    assert not list(tmp_path.glob("*.so"))


def test_kernel_builds_with_the_flags_it_names(tmp_path):
    """The C source compiles without warnings with the module's flags (the build the
    runtime does on first use)."""
    cc = subprocess.run(["sh", "-c", "command -v cc || command -v gcc"], capture_output=True, text=True)
    if cc.returncode != 0 or cpu_kernel._cpu_ok() is not None:
        pytest.skip("no C compiler or not an AVX2 x86 CPU")
    run = subprocess.run([cc.stdout.strip(), *cpu_kernel.FLAGS, "-Wall", "-Wextra", str(cpu_kernel.SOURCE),
                          "-o", str(tmp_path / "k.so")], capture_output=True, text=True)
    assert run.returncode == 0 and not run.stderr, run.stderr


@needs_kernel
@pytest.mark.parametrize("k", [40, 128, 200, 512])  # tail only; blocks; blocks and a tail
def test_fused_rotation_equals_rotating_first(k):
    """The kernel's own rotation (x R before quantizing) against rotation.py's, on a real
    Ω-QVLA rotation: the same outputs up to codes that sit on a rounding edge."""
    from omega_qvla_ros.quant.rotation import build_input_rotation

    g = torch.Generator().manual_seed(k)
    n, m = 70, 37
    w_float = torch.randn(n, k, generator=g)
    rot = build_input_rotation(w_float, "omega").to(dtype=torch.float32)
    w_codes = torch.randint(-8, 8, (n, k), generator=g)
    w = cpu_kernel.pack_weights(w_codes, torch.rand(n, generator=g) + 0.1)
    x = torch.randn(m, k, generator=g) * 3
    y = cpu_kernel.linear(x, w, 0.6, rotation=cpu_kernel.pack_rotation(rot))
    want = cpu_kernel.linear(rot.apply(x), w, 0.6)
    assert float((y - want).abs().max() / want.abs().max()) < 1e-5
    with pytest.raises(ValueError, match="cover"):
        cpu_kernel.linear(x[:, :-1], cpu_kernel.pack_weights(w_codes[:, :-1], torch.ones(n)), 1.0,
                          rotation=cpu_kernel.pack_rotation(rot))


@needs_kernel
def test_a_plan_reused_across_row_counts_and_layers():
    """Plans called again and again, on many rows and on few (each thread's scratch grown,
    then reused by a narrower and by a wider layer, one of them on int4 weights; chunks of
    64 rows and of 12 rotated rows with remainders), split into parts or not: every call
    as a fresh rotate-then-multiply. A wrong split or width is refused when the plan is
    made or called."""
    from omega_qvla_ros.quant.rotation import build_input_rotation

    g = torch.Generator().manual_seed(11)
    plans = []
    for k, n in ((600, 70), (130, 300), (1100, 33)):
        rot = build_input_rotation(torch.randn(n, k, generator=g), "omega").to(dtype=torch.float32)
        w_codes = torch.randint(-8, 8, (n, k), generator=g)
        w = cpu_kernel.pack_weights(w_codes, torch.rand(n, generator=g) + 0.1, nibbles=k == 130)
        split = (n - 20, 20)
        plans.append((rot, w, cpu_kernel.Plan(w, cpu_kernel.pack_rotation(rot)),
                      cpu_kernel.Plan(w, cpu_kernel.pack_rotation(rot), split), split))
    for m in (301, 5, 130, 1, 77):
        for rot, w, plan, split_plan, split in plans:
            x = torch.randn(m, w.k, generator=g) * 3
            want = cpu_kernel.linear(rot.apply(x), w, 0.5)
            y = plan(x, 0.5)
            assert y.shape == (m, w.n) and float((y - want).abs().max() / want.abs().max()) < 1e-5
            parts = split_plan(x, 0.5)
            assert [p.shape[1] for p in parts] == list(split) and all(p.is_contiguous() for p in parts)
            assert torch.equal(torch.cat(parts, dim=1), y)
    rot, w = plans[0][0], plans[0][1]
    with pytest.raises(ValueError, match="add up"):
        cpu_kernel.Plan(w, split=(w.n, 1))
    with pytest.raises(ValueError, match="features"):
        plans[0][2](torch.zeros(3, w.k + 1))


@needs_kernel
@pytest.mark.parametrize("nibbles", [False, True])
@pytest.mark.parametrize("tile", TILES)
def test_threads_sharing_rows_or_columns_give_the_same_outputs(nibbles, tile):
    """The two ways a call's threads share its work (by rows: each thread its rows through
    every step; by columns: the rows' codes made together, then each thread its weight
    blocks) give bit-equal outputs, with a rotation and per-row scales, at row counts
    either side of where `auto` changes over, on 1 to 3 threads (rows and column groups
    that do not divide evenly; a thread with no weight block)."""
    from omega_qvla_ros.quant.rotation import build_input_rotation

    g = torch.Generator().manual_seed(5)
    threads = torch.get_num_threads()
    try:
        for k, n in ((200, 70), (1100, 1030), (64, 16)):  # (1100, 1030): auto takes columns below 65 rows
            rot = cpu_kernel.pack_rotation(build_input_rotation(torch.randn(n, k, generator=g), "omega")
                                           .to(dtype=torch.float32))
            w = cpu_kernel.pack_weights(torch.randint(-8, 8, (n, k), generator=g), torch.rand(n, generator=g) + 0.1,
                                        nibbles=nibbles, quads=tile != 0)
            plans = {s: cpu_kernel.Plan(w, rot, split=(n - 10, 10), tile=tile or None, share=s)
                     for s in cpu_kernel.SHARES}
            for t in (1, 2, 3):
                torch.set_num_threads(t)
                for m in (1, 5, 17, 50, 67, 130):
                    x = torch.randn(m, k, generator=g) * 3
                    rows = torch.rand(m, generator=g) + 0.2
                    want = plans["rows"](x, 0.5, rows)
                    for s in ("columns", "auto"):
                        got = plans[s](x, 0.5, rows)
                        assert all(torch.equal(a, b) for a, b in zip(got, want)), (k, n, t, m, s)
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="share"):
        cpu_kernel.Plan(w, share="diagonal")
