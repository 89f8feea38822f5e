"""Read a config file, check all of it, and resolve it into ``Settings``.

Every problem is collected with its YAML path (``targets.tgi.mapping./chat/completions.in: unknown mapper 'x'``)
and reported together in one ``ConfigError``; a gateway with a broken config does not start. The environment is
read here and nowhere else: ``MOOLTIPROXY_KEY`` (the master key) and each target's ``envkey``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .. import registry
from ..errors import ConfigError, GatewayError
from ..plugin import Template
from .model import IPNetwork, Route, Settings, Target
from .schema import CerbereSection, MappingEntry, SystemSection, TargetSection

__all__ = ["build_settings", "load_config", "read_config_file"]

KEY_ENV = "MOOLTIPROXY_KEY"
_SECTIONS = ("system", "cerbere", "targets", "templates")


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


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}" if where else message)

    def model(self, cls: type[BaseModel], data: Any, where: str) -> Any:
        """Validate ``data`` as ``cls``; record every error with its path and return None on failure."""
        try:
            return cls.model_validate(data if data is not None else {})
        except ValidationError as exc:
            for err in exc.errors():
                loc = ".".join([where, *(str(p) for p in err["loc"])]) if err["loc"] else where
                message = err["msg"]
                if err["type"] == "extra_forbidden":
                    message = "unknown key"
                self.add(loc, message)
            return None


def build_settings(raw: Mapping[str, Any], env: Mapping[str, str], *, base_dir: Path, source: str) -> Settings:
    problems = _Problems()
    for key in raw:
        if key not in _SECTIONS:
            problems.add(str(key), f"unknown section (expected one of: {', '.join(_SECTIONS)})")
    system: SystemSection | None = problems.model(SystemSection, raw.get("system"), "system")
    cerbere: CerbereSection | None = problems.model(CerbereSection, raw.get("cerbere"), "cerbere")
    templates = _templates(raw.get("templates"), base_dir, problems)
    targets, default = _targets(raw.get("targets"), env, templates, problems, system)

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
        ssl_certfile=str(base_dir / system.certfile) if system.ssl else None,
        ssl_keyfile=str(base_dir / system.keyfile) if system.ssl else None,
        trusted_proxies=trusted,
        cors_origins=tuple(system.cors),
        max_body_size=system.max_body_size,
        max_redirects=system.max_redirects,
        pool_size=system.pool_size,
        max_tries=cerbere.max_tries,
        whitelist=whitelist,
        blacklist=blacklist,
        key_from_file=key_from_file,
        source=source,
        warnings=tuple(warnings),
    )


def _raw_list(raw: Mapping[str, Any], section: str, key: str) -> list[Any]:
    """A list from the raw config (the schema reports a value of the wrong type)."""
    part = raw.get(section)
    value = part.get(key) if isinstance(part, dict) else None
    return value if isinstance(value, list) else []


def _networks(values: list[Any], where: str, problems: _Problems) -> tuple[IPNetwork, ...]:
    out: list[IPNetwork] = []
    for i, value in enumerate(values):
        try:
            out.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError:
            problems.add(f"{where}.{i}", f"'{value}' is not an IP address or CIDR range")
    return tuple(out)


def _templates(raw: Any, base_dir: Path, problems: _Problems) -> dict[str, Template]:
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


def _targets(
    raw: Any,
    env: Mapping[str, str],
    templates: dict[str, Template],
    problems: _Problems,
    system: SystemSection | None,
) -> tuple[dict[str, Target], str | None]:
    if not isinstance(raw, dict) or not raw:
        problems.add("targets", "must be a mapping with a 'default' name and at least one target")
        return {}, None
    default = raw.get("default")
    targets: dict[str, Target] = {}
    for name, spec in raw.items():
        if name == "default":
            continue
        target = _target(str(name), spec, env, templates, problems, system)
        if target is not None:
            targets[str(name)] = target
    names = [str(n) for n in raw if n != "default"]
    if not isinstance(default, str) or not default:
        problems.add("targets.default", "required: the name of the target used when a request names none")
        return targets, None
    if default not in names:
        problems.add("targets.default", f"'{default}' is not a target (targets: {', '.join(names) or 'none'})")
        return targets, None
    return targets, default


def _target(
    name: str,
    spec: Any,
    env: Mapping[str, str],
    templates: dict[str, Template],
    problems: _Problems,
    system: SystemSection | None,
) -> Target | None:
    where = f"targets.{name}"
    if not isinstance(spec, dict):
        problems.add(where, "must be a mapping with at least 'url' and 'mapping'")
        return None
    section: TargetSection | None = problems.model(TargetSection, spec, where)
    if section is None:
        return None
    url = section.url.rstrip("/")
    if not (url.startswith(("http://", "https://"))):
        problems.add(f"{where}.url", f"'{section.url}' must start with http:// or https://")
    api_key = section.key
    if api_key is None and section.envkey:
        api_key = env.get(section.envkey)
        if not api_key:
            problems.add(f"{where}.envkey", f"the environment variable '{section.envkey}' is not set")
    routes: dict[str, Route] = {}
    for inbound, entry in section.mapping.items():
        route = _route(str(inbound), entry, templates, problems, f"{where}.mapping.{inbound}")
        if route is not None:
            routes[route.inbound] = route
    options = section.model_dump(exclude={"url", "key", "envkey", "mapping", "preserveMethod", "timeout"})
    return Target(
        name=name,
        url=url,
        api_key=api_key,
        preserve_method=section.preserveMethod,
        timeout=section.timeout or (system.timeout if system else 30.0),
        options=options,
        routes=routes,
    )


def _route(inbound: str, raw: Any, templates: dict[str, Template], problems: _Problems, where: str) -> Route | None:
    if not inbound.startswith("/"):
        problems.add(where, "a mapped path must start with '/'")
        return None
    if raw is None:
        entry = MappingEntry()
    elif isinstance(raw, str):
        entry = MappingEntry(path=raw)
    elif isinstance(raw, dict):
        parsed: MappingEntry | None = problems.model(MappingEntry, raw, where)
        if parsed is None:
            return None
        entry = parsed
    else:
        problems.add(where, "must be empty, a path, or a mapping (path, in, out, prompter, template, methods)")
        return None
    upstream = entry.path if entry.path is not None else inbound
    if not upstream.startswith("/"):
        problems.add(f"{where}.path", f"'{upstream}' must start with '/'")

    def plugin(kind: str, key: str, value: str | None, table: dict[str, str]) -> Any:
        if value is None:
            return None
        try:
            return registry.resolve(value, table, kind)
        except registry.ImportFromStringError as exc:
            problems.add(f"{where}.{key}", str(exc))
            return None

    request_mapper = plugin("mapper", "in", entry.in_, registry.MAPPERS)
    answer_mapper = plugin("mapper", "out", entry.out, registry.MAPPERS)
    prompter_name = entry.prompter
    if prompter_name is None and entry.template is not None:
        prompter_name = "fromTemplate"
    prompter = plugin("prompter", "prompter", prompter_name, registry.PROMPTERS)
    template = None
    if entry.template is not None:
        template = templates.get(entry.template)
        if template is None:
            from ..prompters import builtin_template

            template = builtin_template(entry.template)
        if template is None:
            known = ", ".join(sorted(templates)) or "none defined"
            problems.add(f"{where}.template", f"unknown template '{entry.template}' (templates: {known})")
        elif entry.default_system is not None:
            from ..prompters import with_default_system

            template = with_default_system(template, entry.default_system)
            try:  # tried now, so a template that refuses a system prompt stops the boot, not a request
                template.render([{"role": "user", "content": "Hello"}])
            except GatewayError as exc:
                problems.add(f"{where}.default_system", f"template '{entry.template}' refuses it: {exc.message}")
    elif prompter_name == "fromTemplate":
        problems.add(f"{where}.template", "the fromTemplate prompter needs a template")
    return Route(
        inbound=inbound,
        upstream_path=upstream,
        methods=frozenset(entry.methods) if entry.methods else None,
        request_mapper=request_mapper,
        answer_mapper=answer_mapper,
        prompter=prompter,
        template=template,
        entry=entry.model_dump(by_alias=True, exclude_none=True),
    )
