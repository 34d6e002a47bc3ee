"""``blindread config check`` catches what a new admin got wrong (issue #14): an empty file,
missing certificate files, a state directory that cannot exist, booleans for numbers, bad CIDRs
once each with the reason, an unknown destination without pydantic's tuple message, and a
vendor peer's config checked as one."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.cli import main
from node.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def _check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    p = tmp_path / "node.yaml"
    p.write_text(text)
    code = main(["config", "check", str(p)])
    out = capsys.readouterr().out.splitlines()
    return code, [ln.strip() for ln in out[1:]]


def _state(tmp_path: Path) -> str:
    return f"node: {{state_dir: {tmp_path / 'state'}}}\n"


def test_empty_file_is_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = _check(tmp_path, "", capsys)
    assert code == 2
    assert lines == [
        "<top level>: the file is empty: nothing is configured (see config/node.example.yaml)"
    ]
    assert _check(tmp_path, "# only a comment\n", capsys)[0] == 2


def test_missing_certificate_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ca.crt").write_text("x")
    (tmp_path / "c.key").write_text("x")
    text = _state(tmp_path) + (
        f"vendors:\n  acme:\n    url: https://v:1\n    client_cert: {tmp_path}/nope.crt\n"
        f"    client_key: {tmp_path}/c.key\n    ca: {tmp_path}/ca.crt\n"
    )
    code, lines = _check(tmp_path, text, capsys)
    assert code == 2
    assert lines == [f"vendors.acme.client_cert: {tmp_path}/nope.crt: no such file"]
    (tmp_path / "nope.crt").write_text("x")
    assert _check(tmp_path, text, capsys)[0] == 0


def test_state_dir_that_cannot_be_made(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = _check(tmp_path, "node: {state_dir: /proc/nope}\n", capsys)
    assert code == 2
    assert any(ln.startswith("node.state_dir: /proc/nope cannot be created") for ln in lines)
    (tmp_path / "file").write_text("x")
    code, lines = _check(tmp_path, f"node: {{state_dir: {tmp_path}/file/sub}}\n", capsys)
    assert code == 2 and "is not a directory" in lines[0]
    assert not (tmp_path / "state").exists()  # checking creates nothing
    assert _check(tmp_path, _state(tmp_path), capsys)[0] == 0
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("sender: {max_attempts: yes}\n", "sender.max_attempts: must be a number, not a boolean"),
        ("scp: {port: on}\n", "scp.port: must be a number, not a boolean"),
        ("completion: {quiet_seconds: true}\n", "completion.quiet_seconds: must be a number"),
        ("scp: {fsync: 1}\n", "scp.fsync: must be true or false, got 1"),
        ("scp: {fsync: 'yes'}\n", "scp.fsync: must be true or false, got 'yes'"),
    ],
)
def test_strict_numbers_and_booleans(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, line: str
) -> None:
    code, lines = _check(tmp_path, _state(tmp_path) + text, capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(line)


def test_floats_still_take_integers(tmp_path: Path) -> None:
    p = tmp_path / "n.yaml"
    p.write_text("completion: {quiet_seconds: 5}\nscp: {fsync: false}\n")
    cfg = load_config(p)
    assert cfg.completion.quiet_seconds == 5.0 and cfg.scp.fsync is False


def test_bad_cidr_once_with_host_bits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = _check(
        tmp_path, _state(tmp_path) + "scp: {allowed_networks: [10.20.0.1/16, bad, '::1/128']}\n",
        capsys,
    )
    assert code == 2
    assert lines == [
        "scp.allowed_networks[0]: '10.20.0.1/16' has host bits set: write the network "
        "10.20.0.0/16 (or /32 for one address)",
        "scp.allowed_networks[1]: 'bad' is not an IPv4 or IPv6 network in CIDR notation "
        "(e.g. 10.20.0.0/16)",
    ]


def test_unknown_destination_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for f in ("c", "k", "a"):
        (tmp_path / f).write_text("x")
    vendor = (
        f"vendors:\n  v: {{url: 'https://x:1', client_cert: {tmp_path}/c,"
        f" client_key: {tmp_path}/k, ca: {tmp_path}/a, models: [m]}}\n"
    )
    route = (
        "routes:\n  - {{name: r, match: {{all: []}},"
        " action: {{infer: {{vendor: v, model: m, destinations: {d}}}}}}}\n"
    )
    code, lines = _check(tmp_path, _state(tmp_path) + vendor + route.format(d="[nope]"), capsys)
    assert code == 2
    assert lines == [
        "routes[0].action.infer.destinations[0]: unknown destination 'nope'; "
        "known: (none configured)"
    ]
    code, lines = _check(tmp_path, _state(tmp_path) + vendor + route.format(d="[]"), capsys)
    assert lines == [
        "routes[0].action.infer.destinations: must name at least one destination, got []"
    ]


def test_vendor_example_is_checked_as_a_vendor_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["config", "check", str(ROOT / "config" / "vendor.example.yaml")])
    out = capsys.readouterr().out
    assert "a vendor peer config; checking it as one" in out
    assert "unknown key" not in out
    assert code == 2  # its /etc certificates do not exist here
    assert "tls.cert: /etc/blindread-vendor/tls/server.crt: no such file" in out
    # the same file with files that exist: OK
    for name in ("server.crt", "server.key", "ca.crt", "manifest.yaml"):
        (tmp_path / name).write_text("x")
    vendor = tmp_path / "vendor.yaml"
    vendor.write_text(
        "tls: {cert: server.crt, key: server.key, client_ca: ca.crt}\nmodels: [manifest.yaml]\n"
        "listen: {port: 8443}\n"
    )
    assert main(["config", "check", str(vendor)]) == 0
    assert "OK (vendor peer config, 1 model(s))" in capsys.readouterr().out
    vendor.write_text("tls: {cert: server.crt, key: server.key, client_ca: ca.crt}\n"
                      "models: [manifest.yaml]\nlimits: {workers: yes}\n")
    assert main(["config", "check", str(vendor)]) == 2
    assert "limits.workers: must be a number, not a boolean" in capsys.readouterr().out


def test_node_start_still_loads_what_config_check_accepts(tmp_path: Path) -> None:
    p = tmp_path / "n.yaml"
    p.write_text("scp: {allowed_networks: [10.20.0.0/16, '::1/128']}\n")
    nets = load_config(p).scp.allowed_networks
    assert [str(n) for n in nets] == ["10.20.0.0/16", "::1/128"]
    p.write_text("scp: {allowed_networks: [10.20.0.1/16]}\n")
    with pytest.raises(ConfigError):
        load_config(p)


def test_atna_tls_files_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = _state(tmp_path) + (
        "audit:\n  atna:\n    destinations:\n"
        f"      - {{transport: tls, host: 127.0.0.1, port: 6514, ca: {tmp_path}/atna-ca.crt}}\n"
    )
    code, lines = _check(tmp_path, text, capsys)
    assert code == 2
    assert lines == [f"audit.atna.destinations[0].ca: {tmp_path}/atna-ca.crt: no such file"]
