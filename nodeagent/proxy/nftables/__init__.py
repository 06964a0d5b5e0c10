"""The nftables mode of the service proxy, as kube-proxy's ``pkg/proxy/nftables``.

``rules`` builds the objects of our ``ip nodeagent`` table for each service port and the
table's shared part; ``script`` turns them into one sync's ``nft -f`` transaction, full or
partial: both pure. ``sync`` drives a sync and ``runner`` is the only place that executes
``nft``. What the iptables mode shares with this one lives a level up (``ruleconfig``,
``tracked``, ``tracker``, ``state``).
"""
