"""Unit tests of the two-party runtime's pieces that need no peer: compile + hash, shares,
the pipe protocol, the vendor's twopc config section."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import yaml

from secure_infer.hospital._twopc_party import (
    npy_array,
    npy_bytes,
    read_message,
    write_message,
)
from secure_infer.twopc.party import (
    TwoPartyError,
    check_weights,
    compile_program,
    compiled_from_frames,
)
from secure_infer.twopc.program import FixedPoint, Program, TensorSpec
from secure_infer.vendor.config import VendorConfigError, load_vendor_config
from tests.support import twopc_nets


def test_program_hash_is_stable_and_covers_architecture_and_fixed_point() -> None:
    a = compile_program(twopc_nets.tiny_program(), FixedPoint())
    b = compile_program(twopc_nets.tiny_program(), FixedPoint())
    assert a.sha256 == b.sha256 and len(a.sha256) == 64
    assert (
        compile_program(twopc_nets.tiny_program(), FixedPoint(fraction_bits=16)).sha256 != a.sha256
    )
    assert compile_program(twopc_nets.tiny_program(side=10), FixedPoint()).sha256 != a.sha256
    # neither the Python function's name nor its file and lines are part of the hash
    import types

    p = twopc_nets.tiny_program()
    f = twopc_nets.tiny_fn
    other = types.FunctionType(f.__code__, f.__globals__, "another_name")
    q = Program(other, p.input, p.weights, p.outputs, p.description_sha256)
    assert compile_program(q, FixedPoint()).sha256 == a.sha256


def test_compiled_program_round_trips_and_is_rehashed() -> None:
    c = compile_program(twopc_nets.tiny_program(), FixedPoint())
    back = compiled_from_frames(c.to_frames())
    assert back.sha256 == c.sha256
    assert back.output_names == c.output_names and back.n_weights == 4
    frames = c.to_frames()
    tampered = [frames[0], frames[1].replace(b"blindread", b"blindreaX"), frames[2]]
    assert compiled_from_frames(tampered).sha256 != c.sha256


def test_program_whose_outputs_disagree_is_refused() -> None:
    p = twopc_nets.tiny_program()
    wrong = Program(p.fn, p.input, p.weights, (TensorSpec("logits", (1, 3)),), "0" * 64)
    with pytest.raises(TwoPartyError) as err:
        compile_program(wrong, FixedPoint())
    assert err.value.code == "unsupported_program" and "(1, 2)" in str(err.value)


def test_weights_checked_against_the_program() -> None:
    p = twopc_nets.tiny_program()
    w = twopc_nets.tiny_weights()
    assert [a.shape for a in check_weights(p, w)] == [s.shape for s in p.weights]
    with pytest.raises(TwoPartyError, match="4"):
        check_weights(p, w[:3])
    with pytest.raises(TwoPartyError, match="w2"):
        check_weights(p, [w[0], w[1], w[2][:, :5], w[3]])


def test_shares_are_fresh_randomness_and_reconstruct() -> None:
    import spu
    import spu.libspu as libspu

    from secure_infer.twopc.party import runtime_config

    io_ = spu.Io(2, runtime_config(FixedPoint()))
    x = np.zeros((64,), np.float32)
    a = io_.make_shares(x, libspu.Visibility.VIS_SECRET)
    b = io_.make_shares(x, libspu.Visibility.VIS_SECRET)
    # the peer's share of the same value differs each time: it carries no information
    assert a[1].share_chunks != b[1].share_chunks
    raw = np.frombuffer(b"".join(a[1].share_chunks), dtype=np.uint8)
    assert len(set(raw.tolist())) > 100  # looks uniform, not a fixed-point zero
    y = np.linspace(-3, 3, 64).astype(np.float32)
    s = io_.make_shares(y, libspu.Visibility.VIS_SECRET)
    np.testing.assert_allclose(np.asarray(io_.reconstruct(s)), y, atol=1e-4)


def test_pipe_messages_and_arrays_without_pickles() -> None:
    import os

    r, w = os.pipe()
    with os.fdopen(w, "wb") as wf:
        write_message(wf, [b"image", npy_bytes(np.arange(6, dtype=np.float32).reshape(2, 3))])
    with os.fdopen(r, "rb") as rf:
        kind, data = read_message(rf, timeout=5)
        assert kind == b"image"
        np.testing.assert_array_equal(npy_array(data), np.arange(6).reshape(2, 3))
        with pytest.raises(EOFError):
            read_message(rf, timeout=5)
    obj = io.BytesIO()
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        npy_array(obj.getvalue())


def _vendor_yaml(tmp_path: Path, twopc: dict[str, object]) -> Path:
    p = tmp_path / "vendor.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "tls": {"cert": "s.crt", "key": "s.key", "client_ca": "ca.crt"},
                "state_dir": str(tmp_path / "state"),
                "twopc": twopc,
            }
        )
    )
    return p


def test_vendor_config_twopc_section(tmp_path: Path) -> None:
    cfg = load_vendor_config(
        _vendor_yaml(
            tmp_path,
            {
                "models": [
                    {
                        "name": "tiny",
                        "version": "1",
                        "loader": "tests.support.twopc_nets:load_tiny",
                        "source": "tiny.npz",
                        "fixed_point": {"field": "FM64", "fraction_bits": 16},
                    }
                ],
                "recv_timeout_seconds": 9,
            },
        )
    )
    (m,) = cfg.twopc.models
    assert m.source == tmp_path.resolve() / "tiny.npz"  # relative to the config file
    assert cfg.twopc.recv_timeout_seconds == 9 and m.fixed_point is not None
    with pytest.raises(VendorConfigError, match="loader"):
        load_vendor_config(
            _vendor_yaml(
                tmp_path,
                {"models": [{"name": "x", "version": "1", "loader": "no colon", "source": "a"}]},
            )
        )
