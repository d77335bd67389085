"""The web app: editor pages, public pages and webhooks (Starlette, served by uvicorn)."""
