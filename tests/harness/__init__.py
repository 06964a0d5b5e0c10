"""Test harness: private nodes (network namespace + containerd) and waiting on conditions.

``TestNode`` (node.py) gives a test its own network namespace with its own containerd, CNI
configuration and local images, and leaves nothing behind when closed. ``wait_for`` and
``async_wait_for`` (wait.py) are how tests wait: on a condition, with a timeout, never a
fixed sleep.
"""

from tests.harness.node import TestNode, TestNodeError
from tests.harness.wait import WaitTimeout, async_wait_for, wait_for

__all__ = ["TestNode", "TestNodeError", "WaitTimeout", "async_wait_for", "wait_for"]
