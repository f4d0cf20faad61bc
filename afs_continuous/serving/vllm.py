"""vLLM's runtime LoRA API on a list of replicas (``"serving": {"engine": "vllm", ...}``).

Each replica is one OpenAI-compatible vLLM server started with
``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``. An adapter is
loaded with ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` under the
version's registry name, unloaded with ``POST /v1/unload_lora_adapter``, and
``GET /v1/models`` lists the base model and the loaded adapters. After a load,
one short completion (``serving.check_max_tokens`` tokens) through the adapter
must succeed on every replica before the version may be routed to.

``lora_path`` is the version's ``path`` as the daemon sees it: the replicas must
see the adapter folder at the same path (a shared volume), see docs/serving.md.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .base import Engine, EngineError, is_adapter

if TYPE_CHECKING:
    from ..config import ServingConfig
    from ..registry import ModelVersion

__all__ = ["VLLMEngine"]

log = logging.getLogger("afs_continuous.serving")

_ALREADY = ("already been loaded", "already loaded")
_NOT_FOUND = ("not found", "cannot be found", "does not exist", "not been loaded")


class VLLMEngine(Engine):
    """vLLM replicas sharing one base model; versions are runtime LoRA adapters named after the version.

    Args:
        config: The ``serving`` section (``base_urls``, ``api_key``, ``base_model_name``, ``timeout_s``,
            ``check_max_tokens``, ``check_prompt``).

    Raises:
        ConfigError: ``httpx`` is not installed.
    """

    kind = "vllm"

    def __init__(self, config: "ServingConfig") -> None:
        try:
            import httpx
        except ImportError:  # pragma: no cover - httpx is in the serving and dev extras
            raise ConfigError("serving.engine 'vllm' needs httpx: pip install 'afs-continuous[serving]'") from None
        self.config = config
        self.base_urls = [u.rstrip("/") for u in config.base_urls]
        headers = {}
        if config.api_key is not None:
            headers["Authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        self._httpx = httpx
        self._client = httpx.Client(timeout=config.timeout_s, headers=headers)
        self._base_name: str | None = config.base_model_name
        self._lock = threading.Lock()

    # ---- names -----------------------------------------------------------------------------

    def served_model_name(self, version: "ModelVersion") -> str:
        """The version's name for an adapter version; the base model's served name otherwise."""
        return version.name if is_adapter(version) else self.base_model_name()

    def base_model_name(self) -> str:
        """``serving.base_model_name``, else the base model the first replica lists (asked once).

        Raises:
            EngineError: It is not configured and the replica cannot be asked.
        """
        if self._base_name is None:
            replica = self.base_urls[0]
            models = self._models(replica)
            bases = [m["id"] for m in models if not m.get("parent")]
            if not bases:
                raise EngineError(f"vLLM replica {replica} lists no base model (GET /v1/models); set serving.base_model_name",
                                  replica=replica, engine_message="no base model listed")
            self._base_name = bases[0]
        return self._base_name

    # ---- operations ------------------------------------------------------------------------

    def load(self, version: "ModelVersion") -> None:
        """Load the adapter on every replica (idempotent), then check one completion through it on each.

        A replica that fails leaves nothing behind: the adapter is unloaded again
        from the replicas this call loaded it on.

        Raises:
            EngineError: Naming the replica and the engine's message.
        """
        name = self.served_model_name(version)
        loaded_here: list[str] = []
        try:
            for replica in self.base_urls:
                if is_adapter(version) and self._load_on(replica, version):
                    loaded_here.append(replica)
                self._check_generation(replica, name, version.name)
        except EngineError:
            for replica in loaded_here:
                try:
                    self._unload_on(replica, name)
                except EngineError as exc:
                    log.warning("could not unload %s from %s after a failed load: %s", name, replica, exc)
            raise

    def unload(self, version: "ModelVersion") -> None:
        """Unload the adapter from every replica; a base-model version or an adapter not loaded is no error.

        Raises:
            EngineError: A replica refused or cannot be reached (the others are still unloaded).
        """
        if not is_adapter(version):
            return
        errors: list[EngineError] = []
        for replica in self.base_urls:
            try:
                self._unload_on(replica, version.name)
            except EngineError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def served_models(self) -> dict[str, list[str]]:
        """``{replica: [model ids]}`` from ``GET /v1/models`` of every replica.

        Raises:
            EngineError: A replica cannot be reached or answers an error.
        """
        return {replica: [m["id"] for m in self._models(replica)] for replica in self.base_urls}

    def ensure_loaded(self, version: "ModelVersion") -> bool:
        """Load the adapter (and check it) on each replica that does not list it.

        Returns:
            True when it was loaded on at least one replica.

        Raises:
            EngineError: A replica refused or cannot be reached.
        """
        if not is_adapter(version):
            return False
        reloaded = False
        for replica in self.base_urls:
            if version.name in {m["id"] for m in self._models(replica)}:
                continue
            self._load_on(replica, version)
            self._check_generation(replica, version.name, version.name)
            reloaded = True
        return reloaded

    def close(self) -> None:
        """Close the HTTP connections. Idempotent."""
        self._client.close()

    def describe(self) -> dict[str, object]:
        """``{"engine": "vllm", "base_urls": [...], "base_model_name": ...}`` (no API key)."""
        return {"engine": self.kind, "base_urls": list(self.base_urls), "base_model_name": self.config.base_model_name}

    # ---- HTTP ------------------------------------------------------------------------------

    def _request(self, replica: str, method: str, path: str, version: str | None, **kwargs: Any) -> Any:
        """One request; returns the response (any status). Connection failures raise EngineError."""
        try:
            return self._client.request(method, replica + path, **kwargs)
        except self._httpx.HTTPError as exc:
            what = f"{method} {path}"
            raise EngineError(
                f"vLLM replica {replica} cannot be reached ({what}): {type(exc).__name__}: {exc}; check that the "
                "server runs and serving.base_urls is right", replica=replica,
                engine_message=f"{type(exc).__name__}: {exc}", version=version) from None

    def _models(self, replica: str) -> list[dict[str, Any]]:
        resp = self._request(replica, "GET", "/v1/models", None)
        if resp.status_code != 200:
            msg = _message(resp)
            raise EngineError(f"vLLM replica {replica} answered GET /v1/models with HTTP {resp.status_code}: {msg}",
                              replica=replica, engine_message=msg)
        return list(resp.json().get("data", []))

    def _load_on(self, replica: str, version: "ModelVersion") -> bool:
        """Load on one replica; True when this call loaded it, False when it was loaded already."""
        body = {"lora_name": version.name, "lora_path": str(version.path)}
        resp = self._request(replica, "POST", "/v1/load_lora_adapter", version.name, json=body)
        if resp.status_code == 200:
            log.info("loaded adapter %s on %s", version.name, replica)
            return True
        msg = _message(resp)
        if any(s in msg.lower() for s in _ALREADY):
            if version.name in {m["id"] for m in self._models(replica)}:
                return False
        hint = ""
        if resp.status_code == 404 and msg == "Not Found":  # no such route
            hint = " (is the server started with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True?)"
        raise EngineError(f"vLLM replica {replica} refused to load adapter {version.name!r} from {version.path}: "
                          f"HTTP {resp.status_code}: {msg}{hint}", replica=replica, engine_message=msg,
                          version=version.name)

    def _unload_on(self, replica: str, name: str) -> None:
        resp = self._request(replica, "POST", "/v1/unload_lora_adapter", name, json={"lora_name": name})
        if resp.status_code == 200:
            log.info("unloaded adapter %s from %s", name, replica)
            return
        msg = _message(resp)
        if resp.status_code in (400, 404) and any(s in msg.lower() for s in _NOT_FOUND):
            return  # not loaded: unloading is idempotent
        raise EngineError(f"vLLM replica {replica} refused to unload adapter {name!r}: HTTP {resp.status_code}: {msg}",
                          replica=replica, engine_message=msg, version=name)

    def _check_generation(self, replica: str, model: str, version: str) -> None:
        body = {"model": model, "prompt": self.config.check_prompt, "max_tokens": self.config.check_max_tokens,
                "temperature": 0.0}
        resp = self._request(replica, "POST", "/v1/completions", version, json=body)
        if resp.status_code != 200:
            msg = _message(resp)
            raise EngineError(f"vLLM replica {replica} failed the check generation through {model!r}: "
                              f"HTTP {resp.status_code}: {msg}", replica=replica, engine_message=msg, version=version)
        served = resp.json().get("model")
        if served != model:
            msg = f"the response names model {served!r}"
            raise EngineError(f"vLLM replica {replica} answered the check generation for {model!r} with another "
                              f"model: {msg}", replica=replica, engine_message=msg, version=version)


_WORKER_ERROR = re.compile(r"Worker failed with error '(.*)', please check", re.S)


def _message(resp: Any) -> str:
    """The error message of a vLLM/OpenAI error response, the worker's own error when vLLM wraps one."""
    text = _raw_message(resp)
    inner = _WORKER_ERROR.search(text)
    return inner.group(1) if inner else text


def _raw_message(resp: Any) -> str:
    """The message of ``{"error": {"message"}}``, ``{"message"}`` or ``{"detail"}``, else the body."""
    try:
        data = resp.json()
    except ValueError:
        return (resp.text or "").strip()[:500] or f"HTTP {resp.status_code}"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:2000]
        if isinstance(err, str):
            return err[:2000]
        if data.get("message"):
            return str(data["message"])[:2000]
        if data.get("detail"):
            return str(data["detail"])[:2000]
    return str(data)[:500]
