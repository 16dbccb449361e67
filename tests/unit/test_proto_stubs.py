"""The committed gRPC stubs are what scripts/gen_proto.sh makes from proto/ now."""

import filecmp
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GEN = ROOT / "service" / "api" / "grpc" / "gen"


def test_generated_stubs_are_current(tmp_path):
    subprocess.run([str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)], check=True, cwd=ROOT)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    committed = sorted(p.relative_to(GEN) for p in GEN.rglob("*.py*") if "__pycache__" not in p.parts)
    assert fresh == committed
    stale = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, GEN / p, shallow=False)]
    assert stale == [], "run scripts/gen_proto.sh and commit the result"
