"""CSI node plugins, as the kubelet drives them.

- ``registry.py``: the plugin watcher. A plugin (or its node-driver-registrar) puts a socket
  in the plugins registry dir (``--csi-plugins-dir``); we ask it ``GetInfo``
  (``pluginregistration``), then the driver's ``NodeGetInfo`` and ``NodeGetCapabilities``,
  and answer ``NotifyRegistrationStatus``. Drivers are known by name from then on.
- ``client.py``: the CSI ``Node`` service over the driver's unix socket (grpc.aio); gRPC
  errors become ``CSIError`` naming the driver and the call.
- ``layout.py`` (pure): where volumes go under the state dir (the kubelet's layout), the
  record each mounted volume leaves there, inline volume handles, VolumeAttachment names.
- ``mounter.py``: publish (and stage) a pod's CSI volume, unpublish (and unstage) all of a
  pod's volumes from the records alone, so that a restarted agent can clean up what an
  earlier one mounted.
"""
