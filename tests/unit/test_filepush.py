"""File push logic against a pretend device: chunking, retries on a noisy line, the final
hash, and that nothing appears under the destination unless it is right."""

from __future__ import annotations

import os
import random

import pytest
from fakedevice import FakeDevice

from appsdk.deliver.console import Shell
from appsdk.deliver.filepush import PushFailed, push_bytes


def noisy(rate: float, seed: int):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)

    def mangle(data: bytes) -> bytes:
        out = bytearray()
        for b in data:
            r = rng.random()
            if r < rate / 2:
                continue  # dropped
            out.append(b ^ (1 << rng.randrange(8)) if r < rate else b)
        return bytes(out)

    return mangle


def test_clean_line_pushes_in_growing_chunks() -> None:
    dev = FakeDevice()
    data = os.urandom(200_000)
    result = push_bytes(Shell(dev, patience=0.05), data, "/var/lib/x/blob", line_rate=1e9)
    assert dev.files["/var/lib/x/blob"] == data
    assert "/var/lib/x/blob.appsdk-part" not in dev.files
    assert result.retries == 0 and result.chunks == 5  # 16K, 32K, 64K, 64K, rest


def test_noisy_line_retries_until_the_bytes_are_right() -> None:
    dev = FakeDevice(to_device=noisy(3e-5, 1), to_host=noisy(3e-5, 2))
    data = os.urandom(300_000)
    result = push_bytes(Shell(dev, patience=0.05), data, "/var/lib/x/blob", line_rate=1e9)
    assert result.retries > 0
    assert dev.files["/var/lib/x/blob"] == data


def test_hopeless_line_gives_up_and_leaves_nothing() -> None:
    dev = FakeDevice(to_device=noisy(0.02, 3))
    with pytest.raises(PushFailed, match=r"gave up after 3 failed chunks|stopped answering"):
        push_bytes(Shell(dev, patience=0.05), os.urandom(100_000), "/var/lib/x/blob", line_rate=1e9,
                   max_failures=3)
    assert "/var/lib/x/blob" not in dev.files


def test_binary_bytes_pass_unchanged() -> None:
    dev = FakeDevice()
    data = bytes(range(256)) * 64  # every byte value: ^C, ^S/^Q, CR, LF, ESC, 0xff
    push_bytes(Shell(dev, patience=0.05), data, "/x", line_rate=1e9)
    assert dev.files["/x"] == data
