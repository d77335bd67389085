"""Settings, declared once as data and read in layers.

Each setting is a field of :class:`Settings` with its type, default and help text.
The layers, later ones winning: defaults → ``digest.toml`` → ``DIGEST_<KEY>``
environment variables → command-line overrides. The result is passed around
explicitly; there is no module-level configuration.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from digest.errors import ConfigError

ENV_PREFIX = "DIGEST_"
DEFAULT_CONFIG_NAME = "digest.toml"
MASK = "********"


def setting(default: Any, help: str, *, secret: bool = False, env: tuple[str, ...] = (),
            choices: tuple[str, ...] = ()) -> Any:
    """Declare one setting: its default, help text, and whether it is a secret."""
    meta = {"help": help, "secret": secret, "env": env, "choices": choices}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """The effective settings of one run of the tool."""

    # Storage
    database_url: str = setting(
        "sqlite:///digest.db",
        "SQLAlchemy URL of the database (sqlite:///file.db or postgresql+psycopg://…).")

    # Identity of the newsletter
    base_url: str = setting(
        "http://localhost:8000",
        "Public URL of `digest serve`; links in emails (unsubscribe, view in browser) start here.")
    from_email: str = setting("digest@example.com", "Sender address of every email.")
    from_name: str = setting("Recap Digest", "Sender name shown in the From header and footer.")
    reply_to: str = setting("", "Reply-To address; empty for none.")
    postal_address: str = setting(
        "Recap Digest · 1 Example Street · Example City",
        "Sender's postal address line, shown in every email's footer (CAN-SPAM), after "
        "from_name unless it names the sender already.")
    secret_key: str = setting(
        "",
        "Key that signs unsubscribe and confirmation tokens. Empty: a random key is made "
        "once and kept in the database.", secret=True)
    old_secret_keys: list[str] = setting(
        [], "Earlier secret keys, still accepted when checking tokens (key rotation).",
        secret=True)

    # Collecting
    fetch_timeout: float = setting(20.0, "Seconds a whole feed fetch may take.")
    fetch_max_bytes: int = setting(10_000_000, "Largest feed body accepted, in bytes.")
    fetch_max_redirects: int = setting(5, "Most redirects followed for one feed.")
    fetch_concurrency: int = setting(10, "Feeds fetched at the same time.")
    fetch_allow_private: list[str] = setting(
        [], "Private networks (CIDR, e.g. 127.0.0.1/32) that URLs chosen by content may "
        "reach: feed images being sized, links being checked, every feed's redirects, "
        "feeds imported from a file. "
        "Empty: loopback, private, link-local, CGNAT, multicast and reserved addresses "
        "are refused (feed URLs added by hand are fetched as given).")
    image_size_timeout: float = setting(
        5.0, "Seconds to learn the size of a feed image whose feed gives none (its first "
        "64 KiB are read once, when collected); 0: never. Emails leave out images of "
        "unknown size.")
    summary_max_chars: int = setting(
        600, "Longest entry summary, in characters of text; longer ones are cut at a word.")
    max_entry_age_days: int = setting(
        90, "Entries dated more than this many days before a collect are not stored (counted "
        "as too old), never fewer than lookback_days or any list's own lookback; 0: every entry "
        "is stored.")

    # Grouping
    keyword_order: list[str] = setting(
        [], "Sections that come first, in this order; an entry goes to its first keyword here.")
    keyword_aliases: dict[str, str] = setting(
        {}, "Keyword → the keyword it stands for (e.g. Türkiye = \"Turkey\").")
    keyword_rules: dict[str, list[str]] = setting(
        {}, "Keyword → words that put an untagged entry under it when found in its title or "
        "summary.")
    untagged_section: str = setting("More recaps", "Title of the last section, for untagged "
                                    "entries.")

    # Issues
    lookback_days: int = setting(
        7, "An issue holds entries dated within this many days that no earlier issue held; "
        "a list's own window (`digest lists edit --list NAME --lookback-days N`) wins.")
    subject_template: str = setting(
        "{list_title}: {top_sections}",
        "Subject of an issue; {list_title}, {date}, {count} and {top_sections} are filled in.")
    html_size_warning: int = setting(
        100_000, "Warn when an issue's HTML passes this many bytes (Gmail clips near 102 KB).")
    cache_dir: str = setting(
        "", "Folder (yours alone) for what runs reuse and can always rebuild: compiled "
        "templates and inlined emails. Empty: $XDG_CACHE_HOME/recap-digest, else "
        "~/.cache/recap-digest; off: no cache.")

    # Delivery
    transport: str = setting("outbox", "How email leaves: outbox, smtp, sendgrid or locmem.",
                             choices=("outbox", "smtp", "sendgrid", "locmem"))
    outbox_dir: str = setting("outbox", "Folder the outbox transport writes .eml files into.")
    batch_size: int = setting(
        0, "Recipients handed to the transport at once (1 to 1000); 0: the transport's own "
        "size (SendGrid 1000, one request each; SMTP 100; outbox and locmem 500).")
    smtp_host: str = setting("localhost", "SMTP server host.")
    smtp_port: int = setting(25, "SMTP server port.")
    smtp_security: str = setting("none", "SMTP connection security: none, starttls or tls.",
                                 choices=("none", "starttls", "tls"))
    smtp_username: str = setting("", "SMTP login name; empty for no login.")
    smtp_password: str = setting("", "SMTP password.", secret=True)
    smtp_rate: float = setting(0.0, "Most SMTP messages per second; 0 for no limit.")
    sendgrid_api_key: str = setting("", "SendGrid API key.", secret=True,
                                    env=("SENDGRID_API_KEY",))
    sendgrid_host: str = setting("https://api.sendgrid.com", "SendGrid API host.")
    sendgrid_timeout: float = setting(30.0, "Seconds one SendGrid request may take.")
    retry_attempts: int = setting(
        5, "Tries of one batch after a 429, a 5xx, a 4xx SMTP reply or a failed connection.")
    retry_max_wait: float = setting(
        60.0, "Longest wait, in seconds, before one retry (backoff or X-RateLimit-Reset).")
    send_lease_seconds: int = setting(
        300, "How long a worker holds the batch it claimed; after that, if it died, another "
        "worker takes the batch over.")

    # Subscribing, the web app and webhooks
    confirm_expiry_hours: int = setting(
        72, "Hours a confirmation link works; unconfirmed subscriptions are deleted after.")
    confirm_resend_minutes: int = setting(
        10, "Least minutes between two confirmation emails to the same address and list.")
    subscribe_per_ip_per_hour: int = setting(
        20, "Most subscribe requests from one IP address in an hour (the form).")
    login_attempts_per_15_minutes: int = setting(
        5, "Most failed sign-ins from one IP address in 15 minutes; then that address waits "
        "out the window. Names are never locked: a stranger cannot lock an editor out.")
    login_delay_seconds: float = setting(
        1.0, "Seconds an IP address waits after a failed sign-in before it may try again, "
        "doubled after each further failure in 15 minutes.")
    session_hours: int = setting(
        12, "Hours an editor stays signed in. Sessions are kept in the database: signing "
        "out, a new password or `digest editors remove` ends every session of that editor.")
    sendgrid_webhook_public_key: str = setting(
        "", "SendGrid's Event Webhook verification key (base64, from Mail Settings → Signed "
        "Event Webhook). Set: unsigned, forged or stale events are refused. Empty: "
        "/webhooks/sendgrid refuses every event (403).")
    forwarded_allow_ips: str = setting(
        "", "Addresses of the reverse proxies in front of `digest serve` (comma-separated, "
        "or *), whose X-Forwarded-For and X-Forwarded-Proto are believed: rate limits and "
        "the audit log then use the real client address. Empty: no proxy is trusted.")
    metrics_token: str = setting(
        "", "Bearer token that GET /metrics asks for. Empty: /metrics answers only requests "
        "made from this machine (loopback, not through a proxy).", secret=True)
    webhook_max_age_seconds: int = setting(
        600, "Oldest signed webhook timestamp accepted, in seconds (replays are refused).")
    web_max_form_bytes: int = setting(
        1_000_000, "Largest request body the web app reads, in bytes (forms, sign-in, the "
        "workbench); a bigger one is answered 413 once it passes this, at once when its "
        "Content-Length says so.")
    web_max_webhook_bytes: int = setting(
        5_000_000, "Largest body /webhooks/sendgrid reads, in bytes; a bigger one is "
        "answered 413 the same way.")

    # Schedules
    schedule_retries: int = setting(
        1, "How many times a scheduled run that failed is tried again.")
    schedule_retry_delay_seconds: int = setting(
        300, "Seconds before a failed scheduled run is tried again.")

    log_level: str = setting("INFO", "Logging level: DEBUG, INFO, WARNING or ERROR.",
                             choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = setting(
        "text", "Log lines as text (rich columns on a terminal; elsewhere one plain line "
        "each: time, level, message) or json (one object per line, for a log collector); "
        "addresses, tokens and keys are never logged.", choices=("text", "json"))

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with some settings changed (values are not re-validated)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class SettingInfo:
    """One declared setting, as documentation and for `digest config`."""

    name: str
    type: Any
    default: Any
    help: str
    secret: bool
    env_names: tuple[str, ...]
    choices: tuple[str, ...]

    @property
    def type_name(self) -> str:
        """The type as a reader would write it."""
        return str(self.type).replace("typing.", "") if not isinstance(self.type, type) \
            else self.type.__name__


def declared() -> list[SettingInfo]:
    """Every declared setting, in declaration order."""
    hints = typing.get_type_hints(Settings)
    infos = []
    for f in dataclasses.fields(Settings):
        default = f.default if f.default_factory is dataclasses.MISSING \
            else f.default_factory()
        infos.append(SettingInfo(
            name=f.name, type=hints[f.name], default=default, help=f.metadata["help"],
            secret=f.metadata["secret"],
            env_names=(ENV_PREFIX + f.name.upper(), *f.metadata["env"]),
            choices=f.metadata["choices"]))
    return infos


@dataclass(frozen=True)
class LoadedSettings:
    """Settings together with where each value came from."""

    settings: Settings
    sources: Mapping[str, str]
    config_path: Path | None


def _to_bool(info: SettingInfo, value: Any, source: str, from_text: bool) -> bool:
    if from_text and isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError
    if not isinstance(value, bool):
        raise ValueError
    return value


def _to_int(info: SettingInfo, value: Any, source: str, from_text: bool) -> int:
    if from_text and isinstance(value, str):
        return int(value.strip().replace("_", ""))
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError
    return value


def _to_float(info: SettingInfo, value: Any, source: str, from_text: bool) -> float:
    if from_text and isinstance(value, str):
        return float(value.strip())
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError
    return float(value)


def _to_str(info: SettingInfo, value: Any, source: str, from_text: bool) -> str:
    if not isinstance(value, str):
        raise ValueError
    if info.choices and value not in info.choices:
        raise ConfigError(f"{value!r} is not one of {', '.join(info.choices)}",
                          key=info.name, source=source)
    return value


def _to_list(info: SettingInfo, value: Any, source: str, from_text: bool) -> list[str]:
    if from_text and isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError
    return list(value)


def _to_table(info: SettingInfo, value: Any, source: str, from_text: bool) -> dict[str, Any]:
    if from_text:
        raise ConfigError("this setting is a table; set it in digest.toml",
                          key=info.name, source=source)
    value_type = typing.get_args(info.type)[1]
    if not isinstance(value, dict):
        raise ValueError
    out: dict[str, Any] = {}
    for k, v in value.items():
        if value_type is str and not isinstance(v, str):
            raise ValueError
        item = [v] if typing.get_origin(value_type) is list and isinstance(v, str) else v
        if typing.get_origin(value_type) is list and (
                not isinstance(item, list) or not all(isinstance(x, str) for x in item)):
            raise ValueError
        out[str(k)] = item
    return out


# How a value of each setting type is checked (and, from text, converted): by the type,
# or for list[…] and dict[…] by its origin.
_COERCERS: dict[Any, Callable[[SettingInfo, Any, str, bool], Any]] = {
    bool: _to_bool, int: _to_int, float: _to_float, str: _to_str, list: _to_list,
    dict: _to_table,
}


def _coerce(info: SettingInfo, value: Any, source: str, *, from_text: bool) -> Any:
    """Check (and, for text from the environment or a flag, convert) one value."""
    coerce = _COERCERS.get(typing.get_origin(info.type) or info.type)
    if coerce is None:  # pragma: no cover
        raise AssertionError(f"unsupported setting type {info.type!r}")
    try:
        return coerce(info, value, source, from_text)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"expected {info.type_name}, got {value!r}", key=info.name,
                          source=source) from e


def find_config_file(explicit: str | Path | None, env: Mapping[str, str],
                     cwd: Path | None = None) -> Path | None:
    """Return the config file to read: --config, then DIGEST_CONFIG, then ./digest.toml."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    from_env = env.get(ENV_PREFIX + "CONFIG")
    if from_env:
        path = Path(from_env)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist", key="DIGEST_CONFIG",
                              source="environment")
        return path
    candidate = (cwd or Path.cwd()) / DEFAULT_CONFIG_NAME
    return candidate if candidate.is_file() else None


def load_settings(config: str | Path | None = None, *, env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None,
                  cwd: Path | None = None) -> LoadedSettings:
    """Read the settings in layers: defaults, config file, environment, overrides."""
    env = os.environ if env is None else env
    infos = {info.name: info for info in declared()}
    values: dict[str, Any] = {name: info.default for name, info in infos.items()}
    sources = {name: "default" for name in infos}

    path = find_config_file(config, env, cwd)
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"not valid TOML: {e}", source=str(path)) from e
        except UnicodeDecodeError as e:
            raise ConfigError("not UTF-8 text", source=str(path)) from e
        for key, value in data.items():
            info = infos.get(key)
            if info is None:
                close = [n for n in infos if n.startswith(key[:4])]
                raise ConfigError(
                    "unknown setting", key=key, source=str(path),
                    hint=f"did you mean {close[0]!r}?" if close else
                    "`digest config --help-settings` lists every setting")
            values[key] = _coerce(info, value, str(path), from_text=False)
            sources[key] = str(path)

    for info in infos.values():
        for env_name in info.env_names:
            if env_name in env:
                values[info.name] = _coerce(info, env[env_name], f"environment {env_name}",
                                            from_text=True)
                sources[info.name] = f"env {env_name}"
                break

    for key, value in (overrides or {}).items():
        info = infos.get(key)
        if info is None:
            raise ConfigError("unknown setting", key=key, source="command line")
        values[key] = _coerce(info, value, "command line", from_text=isinstance(value, str))
        sources[key] = "command line"

    if not 0 <= values["batch_size"] <= 1000:
        raise ConfigError("must be between 1 and 1000, or 0 for the transport's own size",
                          key="batch_size",
                          source=sources["batch_size"])
    return LoadedSettings(Settings(**values), sources, path)


def describe(loaded: LoadedSettings) -> list[tuple[str, str, str]]:
    """Return (name, value, source) rows with secrets masked, for `digest config`."""
    rows = []
    for info in declared():
        value = getattr(loaded.settings, info.name)
        if info.secret and value:
            shown = MASK
        elif isinstance(value, list | dict):
            shown = repr(value)
        else:
            shown = str(value)
        rows.append((info.name, shown, loaded.sources[info.name]))
    return rows


def markdown_table() -> str:
    """Every setting as a Markdown table, for docs/settings.md."""
    lines = ["| setting | type | default | environment | help |", "|---|---|---|---|---|"]
    for info in declared():
        default = MASK if info.secret and info.default else repr(info.default)
        env = ", ".join(f"`{e}`" for e in info.env_names) if info.type in (str, int, float,
                                                                           bool) \
            or typing.get_origin(info.type) is list else "file only"
        help_text = info.help.replace("|", "\\|")
        if info.choices:
            help_text += f" One of: {', '.join(info.choices)}."
        lines.append(f"| `{info.name}` | {info.type_name} | `{default}` | {env} | {help_text} |")
    return "\n".join(lines) + "\n"


def _toml_string(text: str) -> str:
    # JSON's string escapes are TOML's basic-string escapes; TOML also wants DEL escaped.
    import json
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_key(name: str) -> str:
    bare = name and all(c.isascii() and (c.isalnum() or c in "-_") for c in name)
    return name if bare else _toml_string(name)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def settings_toml(values: Mapping[str, Any], *, comment: str = "") -> str:
    """Write settings as the text of a ``digest.toml`` that :func:`load_settings` reads
    back as the same values; tables (``keyword_aliases``…) come after the plain keys."""
    infos = {info.name for info in declared()}
    unknown = sorted(set(values) - infos)
    if unknown:
        raise ConfigError("unknown setting", key=unknown[0])
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    plain = {k: v for k, v in values.items() if not isinstance(v, Mapping)}
    tables = {k: v for k, v in values.items() if isinstance(v, Mapping)}
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in plain.items()]
    for name, table in tables.items():
        lines += ["", f"[{_toml_key(name)}]"]
        lines += [f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of the SQLite file at ``path``, made absolute; a "?" or "%" in
    the path is quoted, so the URL names that file and no other."""
    return "sqlite:///" + quote(str(path.expanduser().absolute()), safe="/")
