"""The manifest's ``engine`` field (#12): ckks by default, cheetah or auto when asked."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from secure_infer.manifest import ManifestError, load_manifest

DEMO = Path(__file__).resolve().parents[2] / "secure_infer" / "models" / "demo-lesion"


def _write(tmp_path: Path, **extra: object) -> Path:
    data = yaml.safe_load((DEMO / "manifest.yaml").read_text(encoding="utf-8"))
    data.pop("engine", None)
    data.update(extra)
    p = tmp_path / "manifest.yaml"
    p.write_text(yaml.safe_dump(data), encoding="utf-8")
    return p


def test_engine_defaults_to_ckks_for_existing_manifests(tmp_path: Path) -> None:
    assert load_manifest(_write(tmp_path)).engine == "ckks"
    assert load_manifest(DEMO / "manifest.yaml").engine == "ckks"


@pytest.mark.parametrize("engine", ["ckks", "cheetah", "auto"])
def test_engine_is_read(tmp_path: Path, engine: str) -> None:
    m = load_manifest(_write(tmp_path, engine=engine))
    assert m.engine == engine
    assert m.public().engine == engine  # public: the hospital must know which engine runs


def test_unknown_engine_is_refused_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(_write(tmp_path, engine="cryptflow2"))
    assert any(p.startswith("engine:") for p in info.value.problems)
