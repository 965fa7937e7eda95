"""The gateway's services, built once per app and stored on it (``app.extensions``)."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from faas_llm.actions_store import ActionStore
from faas_llm.activations import ActivationStore
from faas_llm.auth import AuthStore
from faas_llm.keys import Keys
from faas_llm.limits import ADMIT_SCRIPT, Limiter, NamespaceLimits
from faas_llm.settings import Settings
from faas_llm.thread_redis import ThreadRedis
from gateway.credentials import CredentialCache
from gateway.metrics import GatewayMetrics
from gateway.services.actions import ActionService
from gateway.services.invoke import InvokeService
from gateway.services.openai import OpenAIService

EXTENSION = "faas_llm_gateway"


@dataclass(frozen=True)
class Gateway:
    settings: Settings
    redis: redis.Redis
    auth: AuthStore
    actions: ActionService
    activations: ActivationStore
    limiter: Limiter
    invoker: InvokeService
    openai: OpenAIService
    metrics: GatewayMetrics
    #: API keys this worker verified (see gateway.http_auth)
    credentials: CredentialCache

    @classmethod
    def build(cls, settings: Settings) -> Gateway:
        client = redis.Redis.from_url(settings.redis_url, decode_responses=True, health_check_interval=30)
        keys = Keys(settings.key_prefix)
        actions = ActionService(ActionStore(client, keys), settings)
        activations = ActivationStore(client, keys, settings.activation_retention_s)
        direct = ThreadRedis(client)
        limiter = Limiter(client, keys, NamespaceLimits(settings.invocations_per_minute,
                                                        settings.concurrent_invocations),
                          direct.script(ADMIT_SCRIPT))
        invoker = InvokeService(actions, activations, limiter, settings, direct)
        return cls(
            settings=settings, redis=client, auth=AuthStore(client, keys), actions=actions,
            activations=activations, limiter=limiter, invoker=invoker,
            openai=OpenAIService(actions, invoker, activations, settings.blocking_wait_max_ms),
            metrics=GatewayMetrics(settings.gateway_metrics_dir), credentials=CredentialCache(),
        )

