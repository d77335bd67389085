"""What one run of the tool works with: settings, the database, a renderer, tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from digest.services.storage.db import Database, instance_secret, open_database
from digest.services.storage.tables import load_all_models
from digest.settings import Settings

if TYPE_CHECKING:
    from digest.core.rendering import Renderer
    from digest.core.tokens import Tokens


@dataclass
class Context:
    """Settings plus the long-lived objects made from them, built once per process."""

    settings: Settings
    db: Database = field(repr=False)

    @classmethod
    def open(cls, settings: Settings) -> Context:
        """Open the database (migrating it) for these settings."""
        load_all_models()
        return cls(settings, open_database(settings.database_url))

    @cached_property
    def renderer(self) -> Renderer:
        """The one renderer (and premailer instance) of this process, with the user's
        cache of compiled templates and inlined emails."""
        from digest.core.rendering import Renderer
        from digest.services.storage.cache import cache_folder, inline_cache, template_cache
        folder = cache_folder(self.settings.cache_dir)
        return Renderer(size_warning=self.settings.html_size_warning,
                        bytecode_cache=template_cache(folder),
                        inline_cache=inline_cache(folder))

    @cached_property
    def tokens(self) -> Tokens:
        """Token signer; the configured key first, else the instance's generated one."""
        from digest.core.tokens import Tokens
        current = self.settings.secret_key or instance_secret(self.db)
        return Tokens([current, *self.settings.old_secret_keys])

    def url(self, path: str) -> str:
        """An absolute public URL for a path of the web app."""
        return self.settings.base_url.rstrip("/") + "/" + path.lstrip("/")

    def close(self) -> None:
        """Release the database connections."""
        self.db.dispose()
