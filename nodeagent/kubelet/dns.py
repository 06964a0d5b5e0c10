"""A pod's resolv.conf: its ``dnsPolicy`` and ``dnsConfig`` over the node's DNS (pure).

Follows the upstream doc "DNS for Services and Pods" (Pod's DNS policy, Pod's DNS config) and
the kubelet's ``network/dns`` package:

- ``ClusterFirst`` (the default): the cluster DNS servers (``--cluster-dns``), searches
  ``<namespace>.svc.<domain>``, ``svc.<domain>``, ``<domain>`` then the node's own, option
  ``ndots:5``. A pod on the host network gets ``Default`` instead; so does every pod when no
  cluster DNS is configured (upstream falls back the same way, and warns).
- ``ClusterFirstWithHostNet``: ``ClusterFirst``, host network or not.
- ``Default``: the node's resolv.conf (``None`` here: the runtime copies the node's file).
- ``None``: only the pod's ``dnsConfig``.

``dnsConfig`` is merged over the policy's result: nameservers and searches appended (no
duplicates), options merged by name (the pod's value wins). Limits as upstream: 3
nameservers, 32 search domains.
"""

from __future__ import annotations

from dataclasses import dataclass

from nodeagent.model.pod import DNSPolicy, Pod
from nodeagent.runtime.base import DNSConfig

MAX_NAMESERVERS = 3
MAX_SEARCHES = 32
CLUSTER_NDOTS = "ndots:5"


@dataclass(frozen=True)
class DNSSettings:
    """The node's side: ``--cluster-dns``, ``--cluster-domain`` and its own resolv.conf."""

    cluster_dns: tuple[str, ...] = ()
    cluster_domain: str = "cluster.local"
    host_searches: tuple[str, ...] = ()
    host_servers: tuple[str, ...] = ()
    host_options: tuple[str, ...] = ()


def parse_resolv_conf(text: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(nameservers, searches, options) of a resolv.conf; the last search line wins."""
    servers: list[str] = []
    searches: list[str] = []
    options: list[str] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if fields[0] == "nameserver" and len(fields) > 1:
            servers.append(fields[1])
        elif fields[0] in ("search", "domain"):
            searches = fields[1:]
        elif fields[0] == "options":
            options.extend(fields[1:])
    return tuple(servers), tuple(searches), tuple(options)


def sandbox_dns(pod: Pod, settings: DNSSettings) -> DNSConfig | None:
    """The pod's DNS configuration; None means "the node's resolv.conf"."""
    policy = pod.spec.dns_policy
    cluster = policy is DNSPolicy.CLUSTER_FIRST_WITH_HOST_NET or (
        policy is DNSPolicy.CLUSTER_FIRST and not pod.spec.host_network
    )
    if cluster and settings.cluster_dns:
        domain = settings.cluster_domain
        base = DNSConfig(
            servers=settings.cluster_dns,
            searches=(
                f"{pod.namespace}.svc.{domain}",
                f"svc.{domain}",
                domain,
                *settings.host_searches,
            ),
            options=(CLUSTER_NDOTS,),
        )
    elif policy is DNSPolicy.NONE:
        base = DNSConfig()
    else:
        if pod.spec.dns_config is None:
            return None
        base = DNSConfig(settings.host_servers, settings.host_searches, settings.host_options)
    return _merge(base, pod)


def _merge(base: DNSConfig, pod: Pod) -> DNSConfig:
    extra = pod.spec.dns_config
    if extra is None:
        return _limit(base)
    options = {_option_name(o): o for o in base.options}
    for name, value in extra.options:
        options[name] = name if value is None else f"{name}:{value}"
    return _limit(
        DNSConfig(
            servers=_unique(base.servers + extra.nameservers),
            searches=_unique(base.searches + extra.searches),
            options=tuple(options.values()),
        )
    )


def _limit(config: DNSConfig) -> DNSConfig:
    return DNSConfig(
        servers=config.servers[:MAX_NAMESERVERS],
        searches=_unique(config.searches)[:MAX_SEARCHES],
        options=config.options,
    )


def _unique(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i for i in items if i))


def _option_name(option: str) -> str:
    return option.split(":", 1)[0]
