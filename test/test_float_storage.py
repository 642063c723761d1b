"""quant/float_storage.py's per-call upcast on the CPU: the same values as `.to()`, written
into one buffer per thread that later calls reuse, and a fresh tensor where autograd runs."""
from __future__ import annotations

import threading

import torch
from torch import nn

from omega_qvla_ros.quant import float_storage
from omega_qvla_ros.quant.float_storage import keep_half, upcast


def test_upcast_reuses_one_buffer_per_thread():
    g = torch.Generator().manual_seed(0)
    big, small = torch.randn(64, 48, generator=g).half(), torch.randn(16, 8, generator=g).half()
    with torch.inference_mode():
        a = upcast(big, torch.float32)
        assert a.dtype == torch.float32 and torch.equal(a, big.float())
        ptr = a.data_ptr()
        b = upcast(small, torch.float32)  # a view at the start of the same buffer
        assert torch.equal(b, small.float()) and b.data_ptr() == ptr
    with torch.no_grad():  # the buffer is no inference tensor: writable outside inference mode too
        c = upcast(big, torch.float32)
        assert torch.equal(c, big.float()) and c.data_ptr() == ptr
    seen = []

    def other_thread() -> None:
        with torch.no_grad():
            seen.append(upcast(big, torch.float32).data_ptr())
    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert seen and seen[0] != ptr  # each thread its own buffer: concurrent inferences never share one
    d = upcast(big, torch.float32)  # autograd on: a fresh tensor, as .to() gives
    assert torch.equal(d, big.float()) and d.data_ptr() != ptr
    assert upcast(a, torch.float32) is a  # already in the dtype: no copy


def test_half_stored_linear_matches_its_float32_upcast(monkeypatch):
    monkeypatch.setattr(float_storage, "MIN_PARAMS", 1000)
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(48, 40)
    want_w = lin.weight.detach().half().float()
    want_b = lin.bias.detach().half().float()
    assert keep_half(lin) == [""] and lin.weight.dtype == torch.float16
    x = torch.randn(5, 48, generator=g)
    with torch.inference_mode():
        assert torch.equal(lin(x), torch.nn.functional.linear(x, want_w, want_b))
        lin2 = nn.Linear(8, 8)  # another module's upcast in between
        keep_half(lin2, modules={"": lin2})
        lin2(torch.randn(1, 8, generator=g))
        assert torch.equal(lin(x), torch.nn.functional.linear(x, want_w, want_b))
