"""Node resources as the kubelet manages them: the QoS cgroup tree and pod cgroups.

``policy`` decides (pure: QoS class, a pod's cgroup limits, oom_score_adj, cgroup names per
driver, node allocatable); ``fs`` is the cgroup filesystem (v1 and v2); ``manager`` makes a
pod's cgroup before its sandbox and removes it after the pod is gone.
"""
