"""The committed gRPC stubs match the .proto: regenerate into a temp dir and compare."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "remoting" / "tf_remoting" / "_proto"


def _generator():
    spec = importlib.util.spec_from_file_location("generate_proto", ROOT / "remoting" / "tools" / "generate_proto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_stubs_match_proto(tmp_path):
    _generator().generate(tmp_path)
    fresh = {p.relative_to(tmp_path / "tf_remoting" / "_proto"): p.read_bytes()
             for p in (tmp_path / "tf_remoting" / "_proto").rglob("*") if p.is_file()}
    committed = {p.relative_to(GENERATED): p.read_bytes() for p in GENERATED.rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts}
    assert sorted(fresh) == sorted(committed)
    stale = [str(name) for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stubs out of date, run: python remoting/tools/generate_proto.py ({stale})"


def test_v1_field_numbers_never_change():
    """Versioning rule: v1 fields are never renumbered. Pin a few that peers depend on."""
    from tf_remoting.proto import pb

    assert pb.Frame.DESCRIPTOR.fields_by_name["seq"].number == 2
    assert pb.Frame.DESCRIPTOR.fields_by_name["parts"].number == 3
    assert pb.AllocateRequest.DESCRIPTOR.fields_by_name["slice"].number == 1
    assert pb.ChannelsRequest.DESCRIPTOR.fields_by_name["open"].number == 1
    assert pb.Lease.DESCRIPTOR.fields_by_name["id"].number == 1
