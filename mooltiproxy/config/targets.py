"""The ``targets`` section: each target's replicas, models, fallbacks and routes, resolved and cross-checked."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import registry
from ..errors import GatewayError
from ..plugin import Template
from .model import Cooldown, HealthCheck, ReplicaSpec, Route, Target
from .problems import Problems
from .schema import MappingEntry, ReplicaSection, SystemSection, TargetSection

__all__ = ["OPENAI_MAPPING", "model_index", "resolve_targets"]

#: target keys handed to plug-ins as ``ctx.options``
_OPTIONS = {
    "model",
    "strict",
    "max_stop_sequences",
    "max_top_n_tokens",
    "max_best_of",
    "max_fanout",
    "system_fingerprint",
}
#: what an ``api: openai`` target exposes when it has no ``mapping``: the OpenAI endpoints, passed through
OPENAI_MAPPING: dict[str, Any] = {
    "/chat/completions": {"methods": ["POST"]},
    "/completions": {"methods": ["POST"]},
    "/embeddings": {"methods": ["POST"]},
    "/models": {"methods": ["GET"]},
    "/messages": {  # the Anthropic Messages API, translated to and from the server's chat completions
        "path": "/chat/completions",
        "in": "messagesReqAnthropicToOpenAI",
        "out": "messagesAnsOpenAItoAnthropic",
        "methods": ["POST"],
    },
}


def resolve_targets(
    raw: Any,
    env: Mapping[str, str],
    templates: dict[str, Template],
    problems: Problems,
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
    _check_links(targets, names, problems)
    if not isinstance(default, str) or not default:
        problems.add("targets.default", "required: the name of the target used when a request names none")
        return targets, None
    if default not in names:
        problems.add("targets.default", f"'{default}' is not a target (targets: {', '.join(names) or 'none'})")
        return targets, None
    return targets, default


def _check_links(targets: dict[str, Target], names: list[str], problems: Problems) -> None:
    """Fallbacks name other targets; a model name routes to one target only."""
    owner: dict[str, str] = {}
    for target in targets.values():
        for i, fallback in enumerate(target.fallbacks):
            where = f"targets.{target.name}.fallbacks.{i}"
            if fallback == target.name:
                problems.add(where, "a target cannot be its own fallback")
            elif fallback not in names:
                problems.add(where, f"'{fallback}' is not a target (targets: {', '.join(names)})")
        for model in target.models:
            first = owner.setdefault(model, target.name)
            if first != target.name:
                problems.add(f"targets.{target.name}.models", f"model '{model}' is already routed to target '{first}'")


def model_index(targets: dict[str, Target]) -> dict[str, str]:
    index: dict[str, str] = {}
    for target in targets.values():
        for model in target.models:
            index.setdefault(model, target.name)
    return index


def _models(section: TargetSection, where: str, problems: Problems) -> dict[str, str]:
    """``models:`` as client name -> upstream name: ``[a, {b: c}]`` or ``{a: null, b: c}``."""
    raw = section.models
    out: dict[str, str] = {}
    if raw is None:
        return out
    items: list[tuple[str, str | None]] = []
    if isinstance(raw, dict):
        items = list(raw.items())
    else:
        for item in raw:
            items.extend([(item, None)] if isinstance(item, str) else list(item.items()))
    for name, upstream in items:
        if not name:
            problems.add(f"{where}.models", "a model name cannot be empty")
        elif name in out:
            problems.add(f"{where}.models", f"model '{name}' is listed twice")
        else:
            out[name] = upstream or name
    return out


def _replicas(section: TargetSection, where: str, problems: Problems) -> tuple[ReplicaSpec, ...]:
    if section.url is not None and section.replicas is not None:
        problems.add(where, "give either 'url' or 'replicas', not both")
        return ()
    if section.url is None and not section.replicas:
        problems.add(f"{where}.url", "required (or 'replicas': a list of URLs)")
        return ()
    given: list[tuple[str, ReplicaSection]] = (
        [("url", ReplicaSection(url=section.url))] if section.url is not None else []
    )
    for i, item in enumerate(section.replicas or ()):
        given.append((f"replicas.{i}", ReplicaSection(url=item) if isinstance(item, str) else item))
    out: list[ReplicaSpec] = []
    for key, replica in given:
        url = replica.url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            problems.add(f"{where}.{key}", f"'{replica.url}' must start with http:// or https://")
        out.append(ReplicaSpec(url=url, weight=replica.weight))
    return tuple(out)


def _target(
    name: str,
    spec: Any,
    env: Mapping[str, str],
    templates: dict[str, Template],
    problems: Problems,
    system: SystemSection | None,
) -> Target | None:
    where = f"targets.{name}"
    if not isinstance(spec, dict):
        problems.add(where, "must be a mapping with at least 'url' and 'mapping'")
        return None
    section: TargetSection | None = problems.model(TargetSection, spec, where)
    if section is None:
        return None
    replicas = _replicas(section, where, problems)
    mapping = section.mapping
    if mapping is None:
        if section.api != "openai":
            problems.add(f"{where}.mapping", "required: the paths this target exposes (or 'api: openai')")
        mapping = OPENAI_MAPPING
    if section.health is not None and not section.health.path.startswith("/"):
        problems.add(f"{where}.health.path", f"'{section.health.path}' must start with '/'")
    api_key = section.key
    if api_key is None and section.envkey:
        api_key = env.get(section.envkey)
        if not api_key:
            problems.add(f"{where}.envkey", f"the environment variable '{section.envkey}' is not set")
    if api_key and any(c in api_key for c in "\r\n\x00"):  # it would split the request sent to the target
        key_from = f"{where}.key" if section.key is not None else f"{where}.envkey"
        problems.add(key_from, "the key contains a line break or a NUL")
    routes: dict[str, Route] = {}
    for inbound, entry in mapping.items():
        route = _route(str(inbound), entry, templates, problems, f"{where}.mapping.{inbound}")
        if route is not None:
            routes[route.inbound] = route
    options = section.model_dump(include=_OPTIONS)
    return Target(
        name=name,
        url=replicas[0].url if replicas else "",
        api_key=api_key,
        preserve_method=section.preserveMethod,
        timeout=section.timeout or (system.timeout if system else 30.0),
        options=options,
        routes=routes,
        api=section.api,
        replicas=replicas,
        balance=section.balance,
        models=_models(section, where, problems),
        fallbacks=tuple(section.fallbacks),
        retries=section.retries,
        max_retry_wait=section.max_retry_wait,
        connect_timeout=section.connect_timeout or (system.connect_timeout if system else 3.0),
        cooldown=Cooldown(section.cooldown.failures, section.cooldown.seconds),
        health=HealthCheck(section.health.path, section.health.interval, section.health.timeout)
        if section.health
        else None,
    )


def _route(inbound: str, raw: Any, templates: dict[str, Template], problems: Problems, where: str) -> Route | None:
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
    resolved = entry.model_dump(by_alias=True, exclude_none=True)
    if entry.tool_format is None and template is not None:  # derived once, here, from the template
        from ..mappers.toolcalls import template_tool_format

        resolved["tool_format"] = template_tool_format(template, builtin=entry.template not in templates)
    return Route(
        inbound=inbound,
        upstream_path=upstream,
        methods=frozenset(entry.methods) if entry.methods else None,
        request_mapper=request_mapper,
        answer_mapper=answer_mapper,
        prompter=prompter,
        template=template,
        entry=resolved,
    )
