#!/usr/bin/env bash
# Generates Python modules (messages and gRPC stubs) for migd's public contracts in proto/ with
# Debian's tools: protoc 3.21 (protobuf-compiler) and grpc_python_plugin (protobuf-compiler-grpc).
# The result imports as `from migd.v1 import coordinator_pb2, coordinator_pb2_grpc` with OUT_DIR
# on sys.path, and runs on python3-grpcio 1.51 + python3-protobuf 3.21. Debian's
# python3-grpc-tools is not used: its bundled protoc is too old for proto3 `optional`.
#
#   clients/python/generate.sh OUT_DIR
#
# google/protobuf/timestamp.proto comes from /usr/include (libprotobuf-dev) when present;
# otherwise its descriptor is taken from the installed python3-protobuf, so nothing else is needed.
# Overrides: PROTOC, GRPC_PYTHON_PLUGIN, MIGD_PYTHON (default /usr/bin/python3).
set -euo pipefail
out=${1:?usage: clients/python/generate.sh OUT_DIR}
root=$(cd "$(dirname "$0")/../.." && pwd)
protoc=${PROTOC:-protoc}
plugin=${GRPC_PYTHON_PLUGIN:-/usr/bin/grpc_python_plugin}
python=${MIGD_PYTHON:-/usr/bin/python3}

for tool in "$protoc" "$plugin"; do
  command -v "$tool" >/dev/null || { echo "generate.sh: $tool not found (apt-get install protobuf-compiler protobuf-compiler-grpc)" >&2; exit 1; }
done
mkdir -p "$out"
out=$(cd "$out" && pwd)

wkt=()
if [ -f /usr/include/google/protobuf/timestamp.proto ]; then
  wkt=(-I/usr/include)
else
  set_file=$(mktemp "${TMPDIR:-/tmp}/migd-wkt-XXXXXX.binpb")
  trap 'rm -f "$set_file"' EXIT
  "$python" - "$set_file" <<'PY'
import sys
from google.protobuf import descriptor_pb2, timestamp_pb2
files = descriptor_pb2.FileDescriptorSet()
timestamp_pb2.DESCRIPTOR.CopyToProto(files.file.add())
with open(sys.argv[1], "wb") as f:
    f.write(files.SerializeToString())
PY
  wkt=(--descriptor_set_in="$set_file")
fi

cd "$root/proto"
"$protoc" -I. "${wkt[@]}" --python_out="$out" --grpc_out="$out" --plugin=protoc-gen-grpc="$plugin" migd/v1/*.proto
