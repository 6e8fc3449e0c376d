"""Network policy of the board as an nftables ruleset (pure: settings in, rules text out).

Inbound: only HTTPS and RTSPS (plus the factory port while the device is not locked).
Outbound: default deny with an allow-list from the settings - NTP server, syslog server, update
server and `network.outbound_allow` - so surveillance data cannot go to servers the owner did not
approve (data-sovereignty requirement). Rejections are immediate (ICMP admin-prohibited) so a
blocked client fails fast instead of hanging.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bootverify.boot.errors import FirewallError

TABLE = "camera_fw"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


@dataclass(frozen=True)
class Rule:
    host: str
    proto: str  # "tcp" | "udp" | "any"
    port: int | None
    why: str


@dataclass(frozen=True)
class Policy:
    listen_tcp: tuple[int, ...]
    outbound: tuple[Rule, ...]


def _port(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise FirewallError(f"{name} is not a port")
    return value


def _host(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise FirewallError(f"{name} is not a host")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _HOSTNAME.match(value):
        raise FirewallError(f"{name} is not a host name or address")
    return value.lower()


def policy_from_settings(settings: Mapping[str, Any], *, factory_port: int | None = None) -> Policy:
    net = settings.get("network", {}) if isinstance(settings.get("network", {}), Mapping) else {}
    listen = [_port(net.get("https_port", 443), "https_port"), _port(net.get("rtsps_port", 322), "rtsps_port")]
    if factory_port is not None:
        listen.append(_port(factory_port, "factory_port"))
    rules: list[Rule] = []
    ntp = (settings.get("time") or {}).get("ntp_server")
    if ntp:
        rules.append(Rule(_host(ntp, "time.ntp_server"), "udp", 123, "ntp"))
    syslog = settings.get("syslog") or {}
    if syslog.get("host"):
        rules.append(Rule(_host(syslog["host"], "syslog.host"), "tcp", _port(syslog.get("port", 6514), "syslog.port"),
                          "syslog"))
    url = (settings.get("update") or {}).get("server_url")
    if url:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise FirewallError("update.server_url must be https")
        rules.append(Rule(_host(parts.hostname, "update.server_url"), "tcp", parts.port or 443, "update"))
    allow = net.get("outbound_allow", [])
    if not isinstance(allow, list) or len(allow) > 32:
        raise FirewallError("network.outbound_allow must be a list of at most 32 hosts")
    for i, h in enumerate(allow):
        rules.append(Rule(_host(h, f"network.outbound_allow[{i}]"), "any", None, "outbound_allow"))
    return Policy(tuple(dict.fromkeys(listen)), tuple(rules))


def needs_dns(policy: Policy) -> bool:
    return any(not _is_ip(r.host) for r in policy.outbound)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def render(policy: Policy, resolve: Callable[[str], Sequence[str]], resolvers: Iterable[str] = ()) -> str:
    """nft script replacing the whole table atomically (nft -f applies it as one transaction)."""
    out_lines: list[str] = []
    for rule in policy.outbound:
        addrs = [rule.host] if _is_ip(rule.host) else list(resolve(rule.host))
        if not addrs:
            raise FirewallError(f"{rule.why}: {rule.host} did not resolve")
        for addr in addrs:
            ip = ipaddress.ip_address(addr)
            fam = "ip" if ip.version == 4 else "ip6"
            if rule.proto == "any":
                match = ""
            else:
                match = f" {rule.proto} dport {rule.port}"
            out_lines.append(f"        {fam} daddr {ip}{match} accept comment \"{rule.why}\"")
    if needs_dns(policy):
        for r in resolvers:
            ip = ipaddress.ip_address(r)
            fam = "ip" if ip.version == 4 else "ip6"
            out_lines.append(f"        {fam} daddr {ip} udp dport 53 accept comment \"dns\"")
            out_lines.append(f"        {fam} daddr {ip} tcp dport 53 accept comment \"dns\"")
    ports = ", ".join(str(p) for p in policy.listen_tcp)
    return "\n".join(
        [
            f"table inet {TABLE}",
            f"delete table inet {TABLE}",
            f"table inet {TABLE} {{",
            "    chain input {",
            "        type filter hook input priority filter; policy drop;",
            '        iif "lo" accept',
            "        ct state established,related accept",
            "        ct state invalid drop",
            "        icmp type { echo-request, destination-unreachable, time-exceeded } limit rate 10/second accept",
            "        icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert, echo-request } accept",
            "        udp sport 67 udp dport 68 accept",
            f"        tcp dport {{ {ports} }} accept",
            "    }",
            "    chain forward {",
            "        type filter hook forward priority filter; policy drop;",
            "    }",
            "    chain output {",
            "        type filter hook output priority filter; policy drop;",
            '        oif "lo" accept',
            "        ct state established,related accept",
            "        udp sport 68 udp dport 67 accept comment \"dhcp\"",
            "        icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept",
            *out_lines,
            "        counter reject with icmpx type admin-prohibited",
            "    }",
            "}",
            "",
        ]
    )
