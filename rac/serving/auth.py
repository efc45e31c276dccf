"""The optional API key: where it comes from, and how a request's key is checked.

The key is read once per replica from a mounted secret file or an environment variable
(never from a config file, so resolved configs and logs can be shared) and is never
logged. A request presents it as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``;
the comparison runs in constant time (:func:`hmac.compare_digest`) on SHA-256 digests, so
neither the key's content nor its length shows in response times.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from pathlib import Path

from rac.config import ConfigError
from rac.serving.config import AuthConfig

logger = logging.getLogger(__name__)


def load_api_key(cfg: AuthConfig) -> str | None:
    """The configured API key, or None when none is configured.

    The secret file wins over the environment variable when both are set.

    Raises
    ------
    ConfigError
        The file is configured but unreadable or empty, or ``cfg.required`` and no key is found.
    """
    key: str | None = None
    if cfg.api_key_file:
        path = Path(cfg.api_key_file)
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"auth.api_key_file {path} cannot be read ({type(e).__name__}); mount the secret "
                              f"there or unset auth.api_key_file") from None
        if not key:
            raise ConfigError(f"auth.api_key_file {path} is empty; put the key in it or unset auth.api_key_file")
        logger.info("API key authentication on (key from file %s)", path)
    elif os.environ.get(cfg.api_key_env, "").strip():
        key = os.environ[cfg.api_key_env].strip()
        logger.info("API key authentication on (key from environment variable %s)", cfg.api_key_env)
    if key is None:
        if cfg.required:
            raise ConfigError(f"auth.required is true but no API key is configured: set the environment variable "
                              f"{cfg.api_key_env} or auth.api_key_file")
        logger.warning("no API key configured (%s unset, no auth.api_key_file): every request is accepted",
                       cfg.api_key_env)
    return key


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class APIKeyChecker:
    """Checks a presented key against the expected one in constant time."""

    def __init__(self, api_key: str | None):
        self._expected = _digest(api_key) if api_key else None

    @property
    def enabled(self) -> bool:
        return self._expected is not None

    def check(self, presented: str | None) -> bool:
        """True when no key is configured, or ``presented`` is the key."""
        if self._expected is None:
            return True
        # Compare digests even for a missing key, so a missing and a wrong key take the same time.
        ok = hmac.compare_digest(_digest(presented or ""), self._expected)
        return ok and bool(presented)


def presented_key(headers: dict[str, str]) -> str | None:
    """The key a request presents: ``Authorization: Bearer <key>``, else ``X-API-Key``.

    ``headers`` has lower-case names.
    """
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key") or None
