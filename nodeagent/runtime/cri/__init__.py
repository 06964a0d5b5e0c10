"""The CRI backend: containerd (or any CRI runtime) over CRI ``runtime.v1`` gRPC.

``api.proto`` is our subset of upstream's schema; ``api_pb2*`` are generated from it by
``tools/gen-proto.sh`` and committed. ``client.CRIRuntime`` implements ``runtime.base.Runtime``.
"""

from nodeagent.runtime.cri.client import CRIRuntime

__all__ = ["CRIRuntime"]
