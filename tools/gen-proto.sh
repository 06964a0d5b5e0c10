#!/bin/sh
# Regenerate the CRI Python stubs from nodeagent/runtime/cri/api.proto, the messages of
# containerd's task service from tasks.proto, and the CSI ones.
# The generated files are committed, so a normal install needs no protoc.
# Run from anywhere; needs grpcio-tools (the "dev" extra).
set -eu

cd "$(dirname "$0")/.."
out=nodeagent/runtime/cri

python -m grpc_tools.protoc -I "$out" \
    --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    "$out/api.proto"
python -m grpc_tools.protoc -I "$out" --python_out="$out" --pyi_out="$out" "$out/tasks.proto"

# protoc writes a top-level "import api_pb2", which only works with the package directory on
# sys.path; make it a package import.
sed -i 's/^import api_pb2 as api__pb2$/from nodeagent.runtime.cri import api_pb2 as api__pb2/' \
    "$out/api_pb2_grpc.py"
grep -q '^from nodeagent.runtime.cri import api_pb2 as api__pb2$' "$out/api_pb2_grpc.py" || {
    echo "gen-proto: could not rewrite the api_pb2 import in api_pb2_grpc.py" >&2
    exit 1
}

# The CSI Node service and the kubelet's plugin registration API, the same way.
out=nodeagent/csi
for name in csi registration; do
    python -m grpc_tools.protoc -I "$out" \
        --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
        "$out/$name.proto"
    sed -i "s/^import ${name}_pb2 as ${name}__pb2\$/from nodeagent.csi import ${name}_pb2 as ${name}__pb2/" \
        "$out/${name}_pb2_grpc.py"
    grep -q "^from nodeagent.csi import ${name}_pb2 as ${name}__pb2\$" "$out/${name}_pb2_grpc.py" || {
        echo "gen-proto: could not rewrite the ${name}_pb2 import in ${name}_pb2_grpc.py" >&2
        exit 1
    }
done
