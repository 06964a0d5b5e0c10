"""The iptables mode of the service proxy, as kube-proxy's ``pkg/proxy/iptables``.

``rules`` builds one service port's chains and its lines in the shared chains (``shared``);
``restore`` turns them into one sync's ``iptables-restore`` input, full or partial: all pure.
``sync`` drives a sync (trackers -> build -> apply -> observe) and ``runner`` is the only
place that executes iptables. What the nftables mode shares with this one lives a level up
(``ruleconfig``, ``tracked``, ``tracker``, ``state``).
"""
