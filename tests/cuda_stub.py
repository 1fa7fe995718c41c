"""A stand-in for the CUDA API surface the project uses, so that its CUDA-only branches run
on a machine without a GPU.

`FakeCuda(monkeypatch, count)` makes `torch.cuda` report `count` devices and answers
every call the project makes (device queries, `set_device`, streams and events, memory
statistics, RNG state, synchronisation). Tensors cannot live on a GPU here: moving one to a
CUDA device (`Tensor.to`, `Module.to`, factory functions with `device=`) leaves it on the
CPU, and the stub records the move (`copies`: target, non_blocking, from pinned memory).
`torch.autocast` and `torch.amp.GradScaler` are replaced by recorders (`autocasts`,
`scalers`), so that which one the code selects is visible. `set_device` rejects a device
without an index, as the real one does.
"""

from __future__ import annotations

import contextlib
import functools

import torch

FACTORIES = ("zeros", "ones", "empty", "full", "tensor", "arange", "linspace", "randn", "rand",
             "as_tensor", "zeros_like", "ones_like", "randint", "randperm")


def _is_cuda(device) -> bool:
    if device is None:
        return False
    if isinstance(device, int):
        return True
    return torch.device(device).type == "cuda"


class FakeStream:
    def __init__(self, device=None, **_):
        self.device = device
        self.waited = 0

    def wait_event(self, event) -> None:
        assert event.recorded, "waiting for an event that was never recorded"
        self.waited += 1

    def synchronize(self) -> None:
        pass


class FakeEvent:
    def __init__(self, *_, **__):
        self.recorded = False

    def record(self, stream=None) -> None:
        self.recorded = True

    def synchronize(self) -> None:
        pass


class FakeScaler:
    """Records its use; scales by 1, so the arithmetic is the unscaled one."""

    def __init__(self, device="cuda", **_):
        self.device = device
        self.calls: list[str] = []

    def scale(self, loss):
        self.calls.append("scale")
        return loss

    def unscale_(self, optimizer) -> None:
        self.calls.append("unscale_")

    def step(self, optimizer):
        self.calls.append("step")
        return optimizer.step()

    def update(self) -> None:
        self.calls.append("update")


class FakeCuda:
    def __init__(self, monkeypatch, count: int = 1, name: str = "NVIDIA H100 80GB HBM3"):
        self.count = count
        self.name = name
        self.current = 0
        self.set_devices: list[int] = []  # every set_device, by thread
        self.copies: list[tuple[str, bool, bool]] = []  # (target, non_blocking, pinned)
        self.autocasts: list[tuple[str, torch.dtype, bool]] = []
        self.scalers: list[FakeScaler] = []
        self.streams: list[FakeStream] = []
        self._pinned: set[int] = set()
        cuda = torch.cuda
        patch = functools.partial(monkeypatch.setattr, cuda)
        patch("is_available", lambda: True)
        patch("device_count", lambda: self.count)
        patch("current_device", lambda: self.current)
        patch("set_device", self.set_device)
        patch("Stream", self._stream)
        patch("stream", lambda s=None: contextlib.nullcontext())
        patch("current_stream", lambda device=None: self._stream(device))
        patch("Event", FakeEvent)
        patch("synchronize", lambda device=None: None)
        patch("empty_cache", lambda: None)
        patch("reset_peak_memory_stats", lambda device=None: None)
        patch("max_memory_allocated", lambda device=None: 3 * 2**20)
        patch("memory_allocated", lambda device=None: 2**20)
        patch("memory_reserved", lambda device=None: 2 * 2**20)
        patch("mem_get_info", lambda device=None: (2**34, 2**35))
        patch("get_device_name", lambda device=None: self.name)
        patch("get_rng_state", lambda device=None: torch.get_rng_state())
        patch("set_rng_state", lambda state, device=None: None)
        # the optimisers ask the accelerator whether a CUDA graph is being captured
        monkeypatch.setattr(torch.accelerator, "current_accelerator",
                            lambda check_available=False: None)
        monkeypatch.setattr(torch, "autocast", self._autocast)
        monkeypatch.setattr(torch.amp, "GradScaler", self._scaler)
        monkeypatch.setattr(torch.Tensor, "to", self._wrap_to(torch.Tensor.to))
        monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t, *a, **k: self._pin(t))
        monkeypatch.setattr(torch.Tensor, "record_stream", lambda t, stream: None)
        for name in FACTORIES:
            monkeypatch.setattr(torch, name, self._wrap_factory(getattr(torch, name)))

    def set_device(self, device) -> None:
        if isinstance(device, torch.device):
            if device.type != "cuda" or device.index is None:
                raise ValueError("Expected a torch.device with a specified index or an integer")
            device = device.index
        if not 0 <= int(device) < self.count:
            raise RuntimeError(f"invalid device ordinal {device}")
        self.current = int(device)
        self.set_devices.append(int(device))

    def _stream(self, device=None, **_):
        stream = FakeStream(device)
        self.streams.append(stream)
        return stream

    def _autocast(self, device_type, dtype=None, enabled=True, **_):
        self.autocasts.append((device_type, dtype, enabled))
        return contextlib.nullcontext()

    def _scaler(self, device="cuda", **kwargs):
        scaler = FakeScaler(device, **kwargs)
        self.scalers.append(scaler)
        return scaler

    def _pin(self, tensor):
        pinned = tensor.clone()
        self._pinned.add(id(pinned))
        pinned._stub_pinned = True
        return pinned

    def _wrap_to(self, real):
        stub = self

        def to(tensor, *args, **kwargs):
            target = kwargs.get("device", args[0] if args else None)
            if isinstance(target, str | torch.device | int) and _is_cuda(target):
                pinned = getattr(tensor, "_stub_pinned", False)
                stub.copies.append((str(target), bool(kwargs.get("non_blocking")), pinned))
                args = ("cpu", *args[1:]) if args else args
                if "device" in kwargs:
                    kwargs["device"] = "cpu"
            return real(tensor, *args, **kwargs)

        return to

    def _wrap_factory(self, real):
        def factory(*args, **kwargs):
            if _is_cuda(kwargs.get("device")):
                kwargs["device"] = "cpu"
            return real(*args, **kwargs)

        return factory
