#!/usr/bin/env bash
# Generate the Python gRPC stubs from proto/ into service/api/grpc/gen (committed; a test checks
# they are current). Usage: scripts/gen_proto.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-service/api/grpc/gen}
mkdir -p "$OUT"
.venv/bin/python -m grpc_tools.protoc -I proto --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" \
    proto/lethe/v1/deletion.proto proto/lethe/v1/ledger.proto proto/lethe/v1/kb.proto
touch "$OUT/__init__.py" "$OUT/lethe/__init__.py" "$OUT/lethe/v1/__init__.py"
# protoc writes absolute imports ("from lethe.v1 import ..."); make them package-relative.
sed -i 's/^from lethe\.v1 import /from . import /' "$OUT"/lethe/v1/*_pb2_grpc.py "$OUT"/lethe/v1/*_pb2.py
