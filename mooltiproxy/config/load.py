"""Read a config file, check all of it, and resolve it into ``Settings``.

Every problem is collected with its YAML path (``targets.tgi.mapping./chat/completions.in: unknown mapper 'x'``)
and reported together in one ``ConfigError``; a gateway with a broken config does not start. The environment is
read here and nowhere else: ``MOOLTIPROXY_KEY`` (the master key) and each target's ``envkey``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..plugin import Template
from .model import IPNetwork, Settings
from .problems import Problems
from .schema import CerbereSection, SystemSection
from .targets import model_index, resolve_targets

__all__ = ["build_settings", "load_config", "read_config_file"]

KEY_ENV = "MOOLTIPROXY_KEY"
#: the PID file's name when ``system.pid_file`` is unset, next to the config file
PID_FILE = "mooltiproxy.pid"
_SECTIONS = ("system", "cerbere", "targets", "templates")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror or exc}"], source=str(path)) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # Only the problem and its place: YAML's excerpt of the file could show a key.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError([f"not valid YAML{where}: {problem}"], source=str(path)) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["the top level must be a mapping with system, cerbere, targets, templates"], str(path))
    return data


def load_config(path: Path, env: Mapping[str, str]) -> Settings:
    raw = read_config_file(path)
    return build_settings(raw, env, base_dir=path.parent, source=str(path))


def build_settings(raw: Mapping[str, Any], env: Mapping[str, str], *, base_dir: Path, source: str) -> Settings:
    problems = Problems()
    for key in raw:
        if key not in _SECTIONS:
            problems.add(str(key), f"unknown section (expected one of: {', '.join(_SECTIONS)})")
    system: SystemSection | None = problems.model(SystemSection, raw.get("system"), "system")
    cerbere: CerbereSection | None = problems.model(CerbereSection, raw.get("cerbere"), "cerbere")
    templates = _templates(raw.get("templates"), base_dir, problems)
    targets, default = resolve_targets(raw.get("targets"), env, templates, problems, system)

    warnings: list[str] = []
    master_key = env.get(KEY_ENV) or None
    key_from_file = False
    if master_key is None and system is not None and system.masterkey:
        master_key, key_from_file = system.masterkey, True
        warnings.append(
            f"the master key is read from {source} (system.masterkey): set the {KEY_ENV} environment variable"
            " instead and remove it from the file"
        )
    if master_key is None:
        problems.add("system.masterkey", f"no master key: set the {KEY_ENV} environment variable")
    elif len(master_key) < 8:
        problems.add("system.masterkey" if key_from_file else KEY_ENV, "the master key must be 8 characters or more")

    # Read from the raw sections, so these are checked even when another key of the section is wrong.
    trusted = _networks(_raw_list(raw, "system", "trusted_proxies"), "system.trusted_proxies", problems)
    whitelist = _networks(_raw_list(raw, "cerbere", "whitelist"), "cerbere.whitelist", problems)
    blacklist = _networks(_raw_list(raw, "cerbere", "blacklist"), "cerbere.blacklist", problems)
    if system is not None and system.ssl:
        for key in ("certfile", "keyfile"):
            file = base_dir / getattr(system, key)
            if not file.is_file():
                problems.add(f"system.{key}", f"system.ssl is true but '{file}' does not exist")
    if system is not None and system.redis is not None and not system.redis.startswith(_REDIS_SCHEMES):
        problems.add("system.redis", f"expected a URL such as redis://127.0.0.1:6379/0, not '{system.redis}'")
    metrics_host = _host_port(system.metrics_host, "system.metrics_host", problems) if system is not None else None
    workers = raw["system"].get("workers") if isinstance(raw.get("system"), dict) else None
    if isinstance(workers, int) and not isinstance(workers, bool) and workers < 1:  # checked even if system is not
        problems.add("system.workers", f"expected a number of processes (1 or more) or 'auto', not {workers}")

    if problems.items or system is None or cerbere is None or master_key is None or default is None:
        raise ConfigError(problems.items or ["invalid config"], source=source)
    return Settings(
        host=system.host,
        port=system.port,
        master_key=master_key,
        targets=targets,
        default_target=default,
        timeout=system.timeout,
        debug=system.debug,
        log_format=system.log_format,
        metrics_host=metrics_host,
        ssl_certfile=str(base_dir / system.certfile) if system.ssl else None,
        ssl_keyfile=str(base_dir / system.keyfile) if system.ssl else None,
        trusted_proxies=trusted,
        cors_origins=tuple(system.cors),
        max_body_size=system.max_body_size,
        header_timeout=system.header_timeout,
        body_timeout=system.body_timeout,
        max_connections=system.max_connections,
        max_redirects=system.max_redirects,
        pool_size=system.pool_size,
        max_tries=cerbere.max_tries,
        whitelist=whitelist,
        blacklist=blacklist,
        ban_seconds=cerbere.ban_seconds,
        ban_ipv6_prefix=cerbere.ban_ipv6_prefix,
        keys_db=str(base_dir / system.keys_db) if system.keys_db else None,
        redis=system.redis,
        redis_limits_on_failure=system.redis_limits_on_failure,
        workers=(os.cpu_count() or 1) if system.workers == "auto" else system.workers,
        grace_seconds=system.grace_seconds,
        pid_file=str(base_dir / (system.pid_file or PID_FILE)),
        key_from_file=key_from_file,
        source=source,
        warnings=tuple(warnings),
        model_index=model_index(targets),
    )


def _host_port(value: str | None, where: str, problems: Problems) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[::1]:9100`` for IPv6) as a pair; None when unset or wrong (then reported)."""
    if value is None:
        return None
    host, _, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or int(port) > 65535:
        problems.add(where, f"expected HOST:PORT such as 127.0.0.1:9100, not '{value}'")
        return None
    return host, int(port)


def _raw_list(raw: Mapping[str, Any], section: str, key: str) -> list[Any]:
    """A list from the raw config (the schema reports a value of the wrong type)."""
    part = raw.get(section)
    value = part.get(key) if isinstance(part, dict) else None
    return value if isinstance(value, list) else []


def _networks(values: list[Any], where: str, problems: Problems) -> tuple[IPNetwork, ...]:
    out: list[IPNetwork] = []
    for i, value in enumerate(values):
        try:
            out.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError:
            problems.add(f"{where}.{i}", f"'{value}' is not an IP address or CIDR range")
    return tuple(out)


def _templates(raw: Any, base_dir: Path, problems: Problems) -> dict[str, Template]:
    from ..prompters import TemplateSpecError, build_template

    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.add("templates", "must be a mapping of template names to templates")
        return {}
    out: dict[str, Template] = {}
    for name, spec in raw.items():
        where = f"templates.{name}"
        if not isinstance(spec, dict):
            problems.add(where, "must be a mapping")
            continue
        try:
            out[str(name)] = build_template(str(name), spec, base_dir)
        except TemplateSpecError as exc:
            for sub, message in exc.problems:
                problems.add(f"{where}.{sub}" if sub else where, message)
    return out
