"""Derive tests/reference/css-allowlist.json from caniemail's data.

Source: caniemail.com's feature data as published in the npm package ``caniemail``
(https://github.com/shellscape/caniemail, MIT; data from https://www.caniemail.com/),
file ``data/caniemail.json``. `make test` installs it into .cache/node; run

    .venv/bin/python scripts/css_allowlist.py .cache/node/node_modules/caniemail/data/caniemail.json

and review the diff of the JSON file. The rule, for each CSS property the email uses:

- **inline** (in style attributes, what carries the layout everywhere): the latest test
  in caniemail says "y" or "a" (partial) for Gmail (desktop webmail, iOS, Android),
  Outlook.com and Apple Mail (macOS, iOS); Outlook for Windows too, unless FALLBACKS
  names the table-based fallback the template gives it.
- **enhancement** (inside @media blocks and the Outlook dark-mode block, which clients
  that do not understand them skip): supported by at least one of those clients.

Properties caniemail does not track are allowed only with a reason in UNTRACKED.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "reference" / "css-allowlist.json"
CLIENTS = {
    "gmail-webmail": ("gmail", "desktop-webmail"),
    "gmail-ios": ("gmail", "ios"),
    "gmail-android": ("gmail", "android"),
    "outlook-com": ("outlook", "outlook-com"),
    "outlook-windows": ("outlook", "windows"),
    "apple-mail-macos": ("apple-mail", "macos"),
    "apple-mail-ios": ("apple-mail", "ios"),
}
# What the templates use, by where it is used.
INLINE = ["mso-hide", "background", "border", "border-bottom", "color", "display", "font",
          "font-size", "height", "letter-spacing", "line-height", "margin", "max-height",
          "max-width", "opacity", "overflow", "padding", "text-align", "text-decoration",
          "text-transform", "width", "list-style", "padding-left"]
ENHANCEMENT = ["background", "border-bottom-color", "color", "display", "font-size",
               "height", "line-height", "padding", "padding-left", "padding-right", "width"]
AT_RULES = {"@media": "css-at-media",
            "@media (prefers-color-scheme)": "css-at-media-prefers-color-scheme"}
# Outlook for Windows ignores these; what the template does instead.
FALLBACKS = {
    "max-width": "the container is also a table with width=\"600\", inside an MSO-only "
                 "600 px ghost table (<!--[if mso]>)",
    "max-height": "used only by the hidden preheader, which mso-hide: all hides there",
    "opacity": "used only by the hidden preheader, which mso-hide: all hides there",
    "overflow": "used only by the hidden preheader, which mso-hide: all hides there",
    "display": "display: block on images and none on the preheader; Outlook shows images "
               "as blocks in their own table cell anyway, and mso-hide hides the preheader",
    "height": "images also carry the height attribute, which Outlook uses",
    "width": "tables and images also carry the width attribute, which Outlook uses",
}
UNTRACKED = {
    "mso-hide": "Outlook for Windows' own property (hides the preheader there); others "
                "ignore it",
    "color": "text colour: caniemail has no entry because every client supports it (HTML "
             "email has set colours since the font tag)",
}


def latest(stats: dict[str, dict[str, str]], family: str, platform: str) -> str:
    versions = stats.get(family, {}).get(platform, {})
    if not versions:
        return "u"
    return versions[sorted(versions)[-1]].split()[0]  # "a #1" → "a"


def slug_for(prop: str, slugs: set[str]) -> str | None:
    parts = prop.split("-")
    for end in range(len(parts), 0, -1):
        candidate = "css-" + "-".join(parts[:end])
        if candidate in slugs:
            return candidate
    return None


def main(source: Path) -> None:
    data = json.loads(source.read_text(encoding="utf-8"))
    features = {f["slug"]: f for f in data["data"] if f["category"] == "css"}
    slugs = set(features)
    entries: dict[str, dict[str, object]] = {}
    for use, props in (("inline", INLINE), ("enhancement", ENHANCEMENT)):
        for prop in props:
            if prop in UNTRACKED:
                continue
            slug = slug_for(prop, slugs)
            if slug is None:
                raise SystemExit(f"{prop}: not in caniemail; add it to UNTRACKED with a reason")
            support = {name: latest(features[slug]["stats"], *where)
                       for name, where in CLIENTS.items()}
            ok = [name for name, s in support.items() if s in ("y", "a")]
            main_clients = [c for c in CLIENTS if c != "outlook-windows"]
            if use == "inline":
                allowed = all(c in ok for c in main_clients) and (
                    "outlook-windows" in ok or prop in FALLBACKS)
            else:
                allowed = bool(ok)
            if not allowed:
                raise SystemExit(f"{prop} ({use}): not supported enough: {support}")
            entry = entries.setdefault(prop, {"caniemail": features[slug]["url"],
                                              "support": support, "uses": []})
            entry["uses"].append(use)  # type: ignore[union-attr]
            if prop in FALLBACKS and "outlook-windows" not in ok:
                entry["outlook_windows_fallback"] = FALLBACKS[prop]
    at_rules = {}
    for rule, slug in AT_RULES.items():
        support = {name: latest(features[slug]["stats"], *where)
                   for name, where in CLIENTS.items()}
        at_rules[rule] = {"caniemail": features[slug]["url"], "support": support,
                          "note": "a progressive enhancement: clients without it skip the "
                                  "block and keep the inlined styles"}
    OUT.write_text(json.dumps({
        "source": "caniemail.com data via the npm package caniemail "
                  "(https://github.com/shellscape/caniemail), data/caniemail.json",
        "data_updated": data["last_update_date"],
        "derived_by": "scripts/css_allowlist.py (rules in its docstring)",
        "clients": {k: "/".join(v) for k, v in CLIENTS.items()},
        "properties": dict(sorted(entries.items())),
        "untracked": UNTRACKED,
        "at_rules": at_rules,
    }, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({len(entries)} properties)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else
              ".cache/node/node_modules/caniemail/data/caniemail.json"))
